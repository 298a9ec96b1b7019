using System.Globalization;
using Moat.Client.Http;
using Moat.Contracts;

namespace Moat.Client;

public sealed partial class MoatClient
{
    /// <summary>A sandbox's resource series (CPU %, memory, disk, network), optionally only samples at or after <paramref name="since"/>.</summary>
    public Task<SandboxMetricsResponse> GetSandboxMetricsAsync(string sandboxId, DateTimeOffset? since = null, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Get, $"v1/sandboxes/{QueryString.Segment(sandboxId)}/metrics" + (since is { } s ? "?since=" + Uri.EscapeDataString(s.ToUniversalTime().ToString("O", CultureInfo.InvariantCulture)) : ""), null, MoatJson.Default.SandboxMetricsResponse, bounded: true, cancellationToken);

    /// <summary>A sandbox's command output history after sequence number <paramref name="after"/>; pass the answer's <c>Next</c> as <paramref name="after"/> to read on.</summary>
    public Task<SandboxLogsResponse> GetSandboxLogsAsync(string sandboxId, long after = 0, int? limit = null, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Get, $"v1/sandboxes/{QueryString.Segment(sandboxId)}/logs?after={after.ToString(CultureInfo.InvariantCulture)}" + (limit is { } l ? "&limit=" + l.ToString(CultureInfo.InvariantCulture) : ""), null, MoatJson.Default.SandboxLogsResponse, bounded: true, cancellationToken);
}
