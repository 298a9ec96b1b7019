using System.Reflection;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Moat.Core.Sandboxes;
using Moat.Node;
using Moat.Server.Api;
using Moat.Server.Auth;
using Moat.Server.E2b;
using Moat.Server.Errors;
using Moat.Server.Observability;
using Moat.Server.Tenancy;

namespace Moat.Server;

/// <summary>Options of the HTTP server (section <c>Moat:Server</c>).</summary>
public sealed class ServerOptions
{
    /// <summary>Addresses to listen on.</summary>
    public string Urls { get; set; } = "http://127.0.0.1:8080";
    /// <summary>Destroy every sandbox on a clean shutdown (otherwise they are re-adopted at the next start).</summary>
    public bool DestroySandboxesOnShutdown { get; set; }
}

/// <summary>Builds the <c>moat serve</c> web application.</summary>
public sealed class MoatServer
{
    /// <summary>The server's version.</summary>
    public static readonly string Version = typeof(MoatServer).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    /// <summary>Creates the application; <paramref name="configure"/> may adjust the builder (tests use it).</summary>
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateSlimBuilder(args);
        MoatConfiguration.AddSources(builder.Configuration);
        var serverOptions = builder.Configuration.GetSection("Moat:Server").Get<ServerOptions>() ?? new ServerOptions();
        builder.WebHost.UseUrls(builder.Configuration["urls"] ?? serverOptions.Urls);
        builder.WebHost.ConfigureKestrel(k =>
        {
            var limits = k.Limits;
            limits.MaxRequestBodySize = Json.MaxJsonBody;
            limits.MaxRequestHeaderCount = 64;
            limits.MaxRequestHeadersTotalSize = 32 * 1024;
            limits.MaxRequestLineSize = 16 * 1024;
            limits.RequestHeadersTimeout = TimeSpan.FromSeconds(15);
            limits.KeepAliveTimeout = TimeSpan.FromMinutes(2);
            limits.MinRequestBodyDataRate = new MinDataRate(bytesPerSecond: 1024, gracePeriod: TimeSpan.FromSeconds(10));
            limits.MaxConcurrentUpgradedConnections = 10_000;
            k.AddServerHeader = false;
        });
        ServerLogging.Configure(builder.Logging, builder.Configuration);
        builder.Services.AddMoatNode(builder.Configuration);
        builder.Services.Configure<ServerOptions>(builder.Configuration.GetSection("Moat:Server"));
        builder.Services.AddSingleton<ApiKeyService>();
        builder.Services.AddHostedService<AdminKeyBootstrap>();
        builder.Services.AddHostedService<GracefulShutdown>();
        builder.Services.AddE2bCompatibility(builder.Configuration);
        builder.Services.AddMoatTenancy(builder.Configuration);
        builder.Services.AddAuthentication(ApiKeyAuthenticationHandler.SchemeName)
            .AddScheme<AuthenticationSchemeOptions, ApiKeyAuthenticationHandler>(ApiKeyAuthenticationHandler.SchemeName, null);
        builder.Services.AddAuthorizationBuilder().SetFallbackPolicy(new AuthorizationPolicyBuilder().RequireAuthenticatedUser().Build());
        builder.Services.ConfigureHttpJsonOptions(o => o.SerializerOptions.TypeInfoResolverChain.Insert(0, Contracts.MoatJson.Default));
        builder.Services.ConfigureHttpJsonOptions(o => o.SerializerOptions.TypeInfoResolverChain.Add(Contracts.TenancyJson.Default));
        builder.Services.AddOpenApi("v1", o => o.AddDocumentTransformer((doc, _, _) =>
        {
            doc.Info.Title = "Moat API";
            doc.Info.Version = Version;
            doc.Info.Description = "Self-hosted sandboxes for untrusted code. Authenticate with Authorization: Bearer <api key>.";
            return Task.CompletedTask;
        }));
        configure?.Invoke(builder);

        var app = builder.Build();
        app.UseMoatObservation();
        app.Use((context, next) => ErrorWriter.HandleAsync(context, next));
        app.UseWebSockets();
        app.UseAuthentication();
        app.UseMoatLogScopes();
        app.UseMoatRateLimits();
        app.UseInboundHosts();
        app.UseE2bSandboxTraffic();
        app.UseAuthorization();
        app.MapGet("/healthz", () => Results.Text("ok\n")).AllowAnonymous().WithTags("health");
        app.MapGet("/readyz", () => Results.Text("ready\n")).AllowAnonymous().WithTags("health");
        app.MapOpenApi("/openapi/{documentName}.json").AllowAnonymous();
        SandboxEndpoints.Map(app);
        ExecEndpoints.Map(app);
        ProcessEndpoints.Map(app);
        FileEndpoints.Map(app);
        RunEndpoints.Map(app);
        KeyEndpoints.Map(app);
        CodeEndpoints.Map(app);
        TerminalEndpoints.Map(app);
        app.MapE2bApi();
        TemplateEndpoints.Map(app);
        SnapshotEndpoints.Map(app);
        app.MapMoatTenancy();
        NetworkEndpoints.Map(app);
        Dashboard.DashboardEndpoints.Map(app);
        app.MapFallback((HttpContext context) => ErrorWriter.WriteAsync(context, StatusCodes.Status404NotFound, "not_found", $"no route for {context.Request.Method} {context.Request.Path}")).AllowAnonymous();
        return app;
    }
}

/// <summary>Creates the first admin key and prints it once.</summary>
internal sealed partial class AdminKeyBootstrap(ApiKeyService keys, ILogger<AdminKeyBootstrap> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var key = await keys.BootstrapAsync(Environment.GetEnvironmentVariable("MOAT_ADMIN_KEY"), cancellationToken).ConfigureAwait(false);
        if (key is null)
            return;
        // Printed once, on stdout, and never stored: only its hash is kept.
        Console.Out.WriteLine($"Admin API key (shown once, store it now): {key}");
        Console.Out.Flush();
        LogMinted(logger);
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    [LoggerMessage(Level = LogLevel.Warning, Message = "Created the first admin API key; it was printed on stdout and is not stored")]
    private static partial void LogMinted(ILogger logger);
}

/// <summary>On a clean stop: let go of sandboxes (re-adopted at next start) or destroy them, as configured.</summary>
internal sealed class GracefulShutdown(SandboxManager manager, Microsoft.Extensions.Options.IOptions<ServerOptions> options) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => manager.ShutdownAsync(options.Value.DestroySandboxesOnShutdown, cancellationToken);
}
