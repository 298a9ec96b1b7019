using System.Collections.Concurrent;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Errors;
using Moat.Core.Networking;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Moat.Server.Api;

namespace Moat.Server.Observability;

/// <summary>One reading of a sandbox's resources (cumulative network bytes).</summary>
public readonly record struct ResourceSample(DateTimeOffset Time, double CpuPercent, long MemoryBytes, long DiskBytes, long RxBytes, long TxBytes);

/// <summary>
/// Per-sandbox resource series: every <see cref="MetricsOptions.SampleSeconds"/> each running
/// sandbox's usage is read (cgroup for containers and gVisor, the VMM process plus the guest's
/// agent for microVMs) and kept in memory, a bounded ring per sandbox, for the sandbox's life and
/// <see cref="MetricsOptions.RetentionMinutes"/> after it ends. Network bytes are what the egress
/// proxy relayed for the sandbox, counted as each connection ends.
/// </summary>
public sealed partial class SandboxMetricsSampler(IServiceProvider services, IOptions<MetricsOptions> options, TimeProvider time, ILogger<SandboxMetricsSampler> logger) : BackgroundService, ISandboxHook
{
    private sealed class Series(int capacity)
    {
        public readonly Queue<ResourceSample> Samples = new();
        public readonly int Capacity = capacity;
        public double? LastCpuSeconds;
        public DateTimeOffset LastAt;
        public long Rx;
        public long Tx;
        public DateTimeOffset? EndedAt;
    }

    private readonly ConcurrentDictionary<string, Series> _series = new();

    /// <summary>Seconds between samples.</summary>
    public int IntervalSeconds => Math.Max(1, options.Value.SampleSeconds);

    private Series SeriesOf(string id) => _series.GetOrAdd(id, _ => new Series(Math.Max(2, options.Value.MaxSamplesPerSandbox)));

    /// <summary>The samples of a sandbox taken at or after <paramref name="since"/>, oldest first.</summary>
    public IReadOnlyList<ResourceSample> Read(string sandboxId, DateTimeOffset? since)
    {
        if (!_series.TryGetValue(sandboxId, out var s))
            return [];
        lock (s)
            return s.Samples.Where(x => since is null || x.Time >= since).ToList();
    }

    /// <inheritdoc />
    public void OnLifecycle(SandboxRecord record, string kind, HostUsage? usage)
    {
        if (kind != SandboxEvents.Ended || !_series.TryGetValue(record.Id, out var s))
            return;
        lock (s)
        {
            if (usage is not null)
                Add(s, usage, time.GetUtcNow());
            s.EndedAt = time.GetUtcNow();
        }
    }

    /// <inheritdoc />
    public void OnEgress(SandboxRecord record, EgressEvent attempt)
    {
        if (attempt.BytesIn == 0 && attempt.BytesOut == 0)
            return;
        var s = SeriesOf(record.Id);
        lock (s)
        {
            s.Rx += attempt.BytesIn;
            s.Tx += attempt.BytesOut;
        }
    }

    private static void Add(Series s, HostUsage usage, DateTimeOffset now)
    {
        double cpu = usage.CpuTime.TotalSeconds;
        double percent = 0;
        if (s.LastCpuSeconds is { } before && now > s.LastAt)
            percent = Math.Max(0, (cpu - before) / (now - s.LastAt).TotalSeconds * 100);
        else if (s.LastCpuSeconds is not null)
            return; // two readings at one instant say nothing about a rate
        // The first reading only sets the baseline of the rate: it is kept with 0 % CPU.
        s.LastCpuSeconds = cpu;
        s.LastAt = now;
        while (s.Samples.Count >= s.Capacity)
            s.Samples.Dequeue();
        s.Samples.Enqueue(new ResourceSample(now, Math.Round(percent, 2), usage.MemoryBytes, usage.DiskUsedBytes, s.Rx, s.Tx));
    }

    /// <summary>Samples every running sandbox once now.</summary>
    public async Task SampleAsync(CancellationToken cancellationToken)
    {
        if (services.GetService(typeof(SandboxManager)) is not SandboxManager manager)
            return;
        var running = await manager.ListAsync(new SandboxQuery { States = [SandboxState.Running], Limit = 1_000_000 }, cancellationToken).ConfigureAwait(false);
        await Parallel.ForEachAsync(running.Where(r => r.TenantId != SandboxManager.PoolTenant), new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = cancellationToken }, async (record, ct) =>
        {
            HostUsage? usage;
            try
            {
                usage = await manager.GetUsageAsync(record.Id, record.TenantId, ct).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is MoatException or IOException or InvalidOperationException or FormatException or UnauthorizedAccessException)
            {
                return; // it ended meanwhile, or its cgroup is going away
            }
            if (usage is null)
                return;
            var s = SeriesOf(record.Id);
            lock (s)
                Add(s, usage, time.GetUtcNow());
        }).ConfigureAwait(false);
    }

    /// <summary>Drops the series of sandboxes that ended longer ago than the retention window.</summary>
    private void Expire()
    {
        var cutoff = time.GetUtcNow() - TimeSpan.FromMinutes(Math.Max(0, options.Value.RetentionMinutes));
        foreach (var (id, s) in _series)
        {
            if (s.EndedAt is { } ended && ended < cutoff)
                _series.TryRemove(id, out _);
        }
    }

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(IntervalSeconds), time);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
            {
                try
                {
                    await SampleAsync(stoppingToken).ConfigureAwait(false);
                    Expire();
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogSampleFailed(logger, ex);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Sampling sandbox resources failed")]
    private static partial void LogSampleFailed(ILogger logger, Exception exception);
}
