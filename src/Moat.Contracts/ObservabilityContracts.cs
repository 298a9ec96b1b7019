namespace Moat.Contracts;

/// <summary>GET /v1/sandboxes/{id}/metrics: the sandbox's resource series, oldest sample first.</summary>
public sealed record SandboxMetricsResponse
{
    /// <summary>The sandbox.</summary>
    public required string SandboxId { get; init; }
    /// <summary>Seconds between samples.</summary>
    public required int IntervalSeconds { get; init; }
    /// <summary>Samples, oldest first.</summary>
    public required IReadOnlyList<MetricSampleDto> Samples { get; init; }
}

/// <summary>One reading of a sandbox's resources.</summary>
public sealed record MetricSampleDto
{
    /// <summary>When it was taken.</summary>
    public required DateTimeOffset Time { get; init; }
    /// <summary>CPU used since the sample before, in percent of one vCPU (two busy vCPUs = 200).</summary>
    public required double CpuPercent { get; init; }
    /// <summary>Memory in use, bytes.</summary>
    public required long MemoryBytes { get; init; }
    /// <summary>Bytes used on the writable layer.</summary>
    public required long DiskBytes { get; init; }
    /// <summary>Bytes received from outside through the egress proxy since the sandbox started (cumulative).</summary>
    public required long RxBytes { get; init; }
    /// <summary>Bytes sent out through the egress proxy since the sandbox started (cumulative).</summary>
    public required long TxBytes { get; init; }
}

/// <summary>GET /v1/sandboxes/{id}/logs: command output history, oldest first.</summary>
public sealed record SandboxLogsResponse
{
    /// <summary>Entries after the requested sequence number.</summary>
    public required IReadOnlyList<LogEntryDto> Entries { get; init; }
    /// <summary>Pass as <c>after</c> to read on.</summary>
    public required long Next { get; init; }
}

/// <summary>A chunk of a command's output, or its exit.</summary>
public sealed record LogEntryDto
{
    /// <summary>Sequence number within the sandbox's history, from 1.</summary>
    public required long Seq { get; init; }
    /// <summary>When the host saw it.</summary>
    public required DateTimeOffset Time { get; init; }
    /// <summary>Process id inside the sandbox.</summary>
    public required int Pid { get; init; }
    /// <summary>The command line (empty when the host only attached to the process).</summary>
    public required string Command { get; init; }
    /// <summary>stdout, stderr or exit.</summary>
    public required string Stream { get; init; }
    /// <summary>The text (for exit: the exit code).</summary>
    public required string Data { get; init; }
}
