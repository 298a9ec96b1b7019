using System.Collections.Concurrent;
using Moat.Core.Sandboxes;

namespace Moat.Server.E2b;

/// <summary>
/// A sandbox's resource use now, as E2B reports it (control plane <c>GET /sandboxes/{id}/metrics</c>
/// and envd's <c>GET /metrics</c>), computed from the runtime's readings. CPU is the share of the
/// sandbox's CPUs used since the previous reading of the same sandbox (or since it started).
/// </summary>
internal static class E2bMetrics
{
    private static readonly ConcurrentDictionary<string, (TimeSpan Cpu, long At)> CpuSamples = new();

    /// <summary>One reading.</summary>
    internal sealed record Reading(DateTimeOffset At, int CpuCount, double CpuUsedPct, long MemUsed, long MemTotal, long DiskUsed, long DiskTotal);

    /// <summary>Reads the sandbox's use now; null when it is not running or the runtime has no readings.</summary>
    public static async Task<Reading?> ReadAsync(SandboxManager manager, SandboxRecord record, CancellationToken cancellationToken)
    {
        if (record.State != SandboxState.Running)
            return null;
        var usage = await manager.GetUsageAsync(record.Id, record.TenantId, cancellationToken).ConfigureAwait(false);
        if (usage is null)
            return null;
        var now = DateTimeOffset.UtcNow;
        long nowTicks = Environment.TickCount64;
        double cpus = Math.Max(0.01, record.Spec.Resources.Cpus);
        double pct;
        if (CpuSamples.TryGetValue(record.Id, out var last) && nowTicks > last.At)
        {
            pct = (usage.CpuTime - last.Cpu).TotalMilliseconds / (nowTicks - last.At) / cpus * 100;
        }
        else
        {
            var since = now - (record.StartedAt ?? record.CreatedAt);
            pct = since > TimeSpan.Zero ? usage.CpuTime / since / cpus * 100 : 0;
        }
        CpuSamples[record.Id] = (usage.CpuTime, nowTicks);
        return new Reading(
            now,
            Math.Max(1, (int)Math.Ceiling(record.Spec.Resources.Cpus)),
            Math.Round(Math.Clamp(pct, 0, 100 * Math.Ceiling(cpus)), 2),
            usage.MemoryBytes,
            usage.MemoryLimitBytes,
            usage.DiskUsedBytes,
            usage.DiskLimitBytes);
    }

    /// <summary>Forgets an ended sandbox's last CPU reading.</summary>
    public static void Forget(string sandboxId) => CpuSamples.TryRemove(sandboxId, out _);
}
