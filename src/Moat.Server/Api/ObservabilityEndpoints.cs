using System.Globalization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.Auth;
using Moat.Server.Observability;

namespace Moat.Server.Api;

/// <summary>A sandbox's resource series and its command output history (read-only keys may read both).</summary>
internal static class ObservabilityEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        var sandboxes = app.MapGroup("/v1/sandboxes").WithTags("observability");
        sandboxes.MapGet("/{id}/metrics", MetricsAsync).WithName("GetSandboxMetrics");
        sandboxes.MapGet("/{id}/logs", LogsAsync).WithName("GetSandboxLogs");
    }

    private static async Task<IResult> MetricsAsync(HttpContext context, SandboxManager manager, SandboxMetricsSampler sampler, string id, string? since)
    {
        var caller = context.Caller();
        await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        DateTimeOffset? from = null;
        if (since is not null)
        {
            if (!DateTimeOffset.TryParse(since, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var t))
                throw MoatException.Invalid("invalid_since", $"since must be an ISO 8601 time, got '{since}'");
            from = t;
        }
        var samples = sampler.Read(id, from).Select(s => new MetricSampleDto
        {
            Time = s.Time,
            CpuPercent = s.CpuPercent,
            MemoryBytes = s.MemoryBytes,
            DiskBytes = s.DiskBytes,
            RxBytes = s.RxBytes,
            TxBytes = s.TxBytes,
        }).ToList();
        return Results.Json(new SandboxMetricsResponse { SandboxId = id, IntervalSeconds = sampler.IntervalSeconds, Samples = samples }, MoatJson.Default.SandboxMetricsResponse);
    }

    private static async Task<IResult> LogsAsync(HttpContext context, SandboxManager manager, CommandHistory history, string id, long? after, int? limit)
    {
        var caller = context.Caller();
        await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        if (after is < 0)
            throw MoatException.Invalid("invalid_after", "after must be 0 or more");
        if (limit is < 1 or > 10_000)
            throw MoatException.Invalid("invalid_limit", "limit must be 1-10000");
        var (entries, next) = history.Read(id, after ?? 0, limit ?? 1000);
        var dto = entries.Select(e => new LogEntryDto { Seq = e.Seq, Time = e.Time, Pid = e.Pid, Command = e.Command, Stream = e.Stream, Data = e.Data }).ToList();
        return Results.Json(new SandboxLogsResponse { Entries = dto, Next = next }, MoatJson.Default.SandboxLogsResponse);
    }
}
