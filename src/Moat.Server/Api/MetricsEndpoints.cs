using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Options;
using Moat.Core.Errors;
using Moat.Server.Auth;
using Moat.Server.Metrics;

namespace Moat.Server.Api;

/// <summary>Options of /metrics (section <c>Moat:Metrics</c>).</summary>
public sealed class MetricsOptions
{
    /// <summary>Whether a scrape needs an operator key (default: anonymous, as Prometheus scrapes usually are; the metrics carry no tenant ids).</summary>
    public bool RequireOperatorKey { get; set; }
    /// <summary>Seconds between samples of each sandbox's resources (<c>GET /v1/sandboxes/{id}/metrics</c>).</summary>
    public int SampleSeconds { get; set; } = 5;
    /// <summary>Samples kept per sandbox (the oldest go first); the default holds 4 hours at 5 s.</summary>
    public int MaxSamplesPerSandbox { get; set; } = 2880;
    /// <summary>How long a sandbox's series is kept after it ends, minutes.</summary>
    public int RetentionMinutes { get; set; } = 60;
}

/// <summary>Prometheus text exposition at <c>/metrics</c>.</summary>
internal static class MetricsEndpoints
{
    public static void Map(IEndpointRouteBuilder app) =>
        app.MapGet("/metrics", ScrapeAsync).AllowAnonymous().WithName("Metrics").WithTags("metrics").ExcludeFromDescription();

    private static async Task ScrapeAsync(HttpContext context, MoatMetrics metrics, IOptions<MetricsOptions> options)
    {
        if (options.Value.RequireOperatorKey)
        {
            if (context.Items[typeof(Caller)] is not Caller caller)
                throw new MoatException(ErrorKind.Unauthenticated, "unauthenticated", "an operator key is required to scrape /metrics");
            if (caller.Role != Roles.Operator)
                throw new MoatException(ErrorKind.PermissionDenied, "operator_required", "scraping /metrics needs an operator key");
        }
        context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await metrics.Registry.CollectAndExportAsTextAsync(context.Response.Body, context.RequestAborted).ConfigureAwait(false);
    }
}
