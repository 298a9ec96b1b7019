using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Moat.Core.CodeInterpreter;
using Moat.Server.E2b.ControlPlane;
using Moat.Server.E2b.Envd;
using Moat.Server.E2b.Interpreter;

namespace Moat.Server.E2b;

/// <summary>Wires E2B compatibility into <c>moat serve</c>: E2B's control plane under a prefix, and its sandbox data plane.</summary>
public static class E2bServiceCollectionExtensions
{
    /// <summary>Adds the services (section <c>Moat:E2b</c>; the code interpreter comes with them).</summary>
    public static IServiceCollection AddE2bCompatibility(this IServiceCollection services, IConfiguration configuration)
    {
        services.Configure<E2bOptions>(configuration.GetSection("Moat:E2b"));
        services.AddCodeInterpreter();
        services.AddSingleton<E2bAccessTokens>();
        services.AddSingleton<EnvdProcesses>();
        services.AddSingleton<ProcessService>();
        services.AddSingleton<FilesystemService>();
        services.AddSingleton<EnvdRest>();
        services.AddSingleton<InterpreterPort>();
        services.AddSingleton<SandboxTraffic>();
        return services;
    }

    /// <summary>Answers requests addressed to a sandbox (E2B's envd and code interpreter). Goes after authentication.</summary>
    public static WebApplication UseE2bSandboxTraffic(this WebApplication app)
    {
        var traffic = app.Services.GetRequiredService<SandboxTraffic>();
        app.Use((context, next) => traffic.InvokeAsync(context, () => next(context)));
        return app;
    }

    /// <summary>Maps E2B's control plane under <see cref="E2bOptions.Prefix"/>.</summary>
    public static WebApplication MapE2bApi(this WebApplication app)
    {
        var prefix = "/" + app.Services.GetRequiredService<IOptions<E2bOptions>>().Value.Prefix.Trim('/');
        E2bSandboxEndpoints.Map(app, prefix);
        return app;
    }
}
