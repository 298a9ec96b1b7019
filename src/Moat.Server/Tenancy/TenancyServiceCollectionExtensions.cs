using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Moat.Server.Api;
using Moat.Server.Audit;
using Moat.Server.Auth;
using Moat.Server.Metrics;
using Moat.Server.Observability;
using Moat.Storage.Sqlite;

namespace Moat.Server.Tenancy;

/// <summary>Wires tenants, quotas, rate limits, the audit trail, metrics and usage metering into <c>moat serve</c>.</summary>
public static class TenancyServiceCollectionExtensions
{
    /// <summary>Adds the services (the sandbox manager sees quotas, audit, metrics and metering as <see cref="ISandboxHook"/>s).</summary>
    public static IServiceCollection AddMoatTenancy(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddSingleton<ITenantStore, SqliteTenantStore>();
        services.AddSingleton<IAuditStore, SqliteAuditStore>();
        services.AddSingleton<IUsageStore, SqliteUsageStore>();
        services.AddSingleton<TenantService>();
        services.AddOptions<UsageOptions>().Bind(configuration.GetSection("Moat:Usage"));
        services.AddOptions<MetricsOptions>().Bind(configuration.GetSection("Moat:Metrics"));
        services.AddSingleton<QuotaEnforcer>();
        services.AddSingleton<AuditLog>();
        services.AddSingleton<AuditHook>();
        services.AddSingleton<MoatMetrics>();
        services.AddSingleton<UsageMeter>();
        services.AddOptions<CommandHistoryOptions>().Bind(configuration.GetSection("Moat:Logs"));
        services.AddSingleton<SandboxMetricsSampler>();
        services.AddSingleton<CommandHistory>();
        services.AddSingleton<ISandboxHook>(sp => sp.GetRequiredService<SandboxMetricsSampler>());
        services.AddSingleton<ISandboxHook>(sp => sp.GetRequiredService<CommandHistory>());
        services.AddHostedService(sp => sp.GetRequiredService<SandboxMetricsSampler>());
        services.AddSingleton<ISandboxHook>(sp => sp.GetRequiredService<QuotaEnforcer>());
        services.AddSingleton<ISandboxHook>(sp => sp.GetRequiredService<AuditHook>());
        services.AddSingleton<ISandboxHook>(sp => sp.GetRequiredService<MoatMetrics>());
        services.AddSingleton<ISandboxHook>(sp => sp.GetRequiredService<UsageMeter>());
        services.AddHostedService(sp => sp.GetRequiredService<AuditLog>());
        services.AddHostedService(sp => sp.GetRequiredService<UsageMeter>());
        services.AddHostedService<OperatorKeyBootstrap>();
        services.AddRateLimiter(TenantRateLimits.Configure);
        return services;
    }

    /// <summary>The outermost middleware: every answered request is audited and counted.</summary>
    public static void UseMoatObservation(this IApplicationBuilder app) => app.Use((context, next) => ApiObservation.InvokeAsync(context, () => next(context)));

    /// <summary>After authentication: the tenant's settings loaded, then its rate limits applied.</summary>
    public static void UseMoatRateLimits(this IApplicationBuilder app)
    {
        app.Use(async (context, next) =>
        {
            if (context.Items[typeof(Caller)] is Caller caller)
            {
                if (AuditScope.Current is { } scope)
                    scope.Caller = caller;
                await context.RequestServices.GetRequiredService<TenantService>().SettingsAsync(caller.TenantId, context.RequestAborted).ConfigureAwait(false);
            }
            await next(context).ConfigureAwait(false);
        });
        app.UseRateLimiter();
    }

    /// <summary>Maps /v1/tenants, /v1/audit, /v1/usage and /metrics.</summary>
    public static void MapMoatTenancy(this IEndpointRouteBuilder app)
    {
        TenantEndpoints.Map(app);
        AuditEndpoints.Map(app);
        UsageEndpoints.Map(app);
        MetricsEndpoints.Map(app);
        ObservabilityEndpoints.Map(app);
    }
}
