using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Errors;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Core.State;

namespace Moat.Server.Tenancy;

/// <summary>Metering and the price table (section <c>Moat:Usage</c>).</summary>
public sealed class UsageOptions
{
    /// <summary>How often running sandboxes are sampled.</summary>
    public int SampleSeconds { get; set; } = 30;
    /// <summary>Price of one vCPU-second.</summary>
    public double PricePerVcpuSecond { get; set; }
    /// <summary>Price of one GiB-second of memory.</summary>
    public double PricePerMemoryGiBSecond { get; set; }
    /// <summary>Price of one GiB-hour of disk.</summary>
    public double PricePerDiskGiBHour { get; set; }
    /// <summary>Currency the prices are in.</summary>
    public string Currency { get; set; } = "USD";
}

/// <summary>
/// Usage metering in the units platforms bill by. CPU is what the sandbox's cgroup says it used
/// (vCPU-seconds); memory and disk are what the sandbox reserved (its limit) for as long as it
/// was alive (GiB-seconds, GiB-hours). Running sandboxes are sampled periodically and once more
/// when they end, and each interval is booked on the UTC day(s) it falls in.
/// </summary>
public sealed partial class UsageMeter(IUsageStore store, IServiceProvider services, IOptions<UsageOptions> options, TimeProvider time, ILogger<UsageMeter> logger) : BackgroundService, ISandboxHook
{
    private sealed record Tracked(string TenantId, double CpuSeconds, DateTimeOffset At, double MemoryGiB, double DiskGiB);

    private readonly Dictionary<string, Tracked> _tracked = new();
    private readonly Channel<object> _accruals = Channel.CreateUnbounded<object>(new UnboundedChannelOptions { SingleReader = true });

    /// <summary>The options in force (prices).</summary>
    public UsageOptions Options => options.Value;

    /// <inheritdoc />
    public void OnLifecycle(SandboxRecord record, string kind, HostUsage? usage)
    {
        if (kind == SandboxEvents.Created)
        {
            lock (_tracked)
                _tracked[record.Id] = Start(record, 0);
        }
        else if (kind == SandboxEvents.Ended)
        {
            Tracked? last;
            lock (_tracked)
            {
                if (_tracked.Remove(record.Id, out last) && usage is not null)
                    _accruals.Writer.TryWrite(Accrue(last, usage.CpuTime.TotalSeconds, record.EndedAt ?? time.GetUtcNow()).Next);
                else if (last is not null)
                    _accruals.Writer.TryWrite(Accrue(last, last.CpuSeconds, record.EndedAt ?? time.GetUtcNow()).Next);
            }
        }
    }

    private static Tracked Start(SandboxRecord record, double cpuSeconds) =>
        new(record.TenantId, cpuSeconds, record.StartedAt ?? record.CreatedAt, record.Spec.Resources.MemoryMiB / 1024.0, record.Spec.Resources.DiskMiB / 1024.0);

    private sealed record Accrual(string TenantId, DateTimeOffset From, DateTimeOffset To, double CpuSeconds, double MemoryGiB, double DiskGiB);

    /// <summary>What happened between the last reading and this one (split at UTC midnights when stored).</summary>
    private static (Tracked Tracked, Accrual Next) Accrue(Tracked last, double cpuSeconds, DateTimeOffset at)
    {
        var to = at > last.At ? at : last.At;
        var accrual = new Accrual(last.TenantId, last.At, to, Math.Max(0, cpuSeconds - last.CpuSeconds), last.MemoryGiB, last.DiskGiB);
        return (last with { CpuSeconds = Math.Max(cpuSeconds, last.CpuSeconds), At = to }, accrual);
    }

    /// <summary>Samples every running sandbox now and waits until all usage so far is stored.</summary>
    public async Task FlushAsync(CancellationToken cancellationToken)
    {
        await SampleAsync(cancellationToken).ConfigureAwait(false);
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _accruals.Writer.TryWrite(done);
        await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task SampleAsync(CancellationToken cancellationToken)
    {
        var manager = (SandboxManager?)services.GetService(typeof(SandboxManager));
        if (manager is null)
            return;
        var running = await manager.ListAsync(new SandboxQuery { States = [SandboxState.Running], Limit = 1_000_000 }, cancellationToken).ConfigureAwait(false);
        foreach (var record in running)
        {
            HostUsage? usage;
            try
            {
                usage = await manager.GetUsageAsync(record.Id, record.TenantId, cancellationToken).ConfigureAwait(false);
            }
            catch (MoatException)
            {
                continue; // it ended meanwhile; its end was metered
            }
            if (usage is null)
                continue;
            var now = time.GetUtcNow();
            lock (_tracked)
            {
                // A sandbox adopted after a restart is metered from now on.
                if (!_tracked.TryGetValue(record.Id, out var last))
                {
                    _tracked[record.Id] = Start(record, usage.CpuTime.TotalSeconds) with { At = now };
                    continue;
                }
                var (next, accrual) = Accrue(last, usage.CpuTime.TotalSeconds, now);
                _tracked[record.Id] = next;
                _accruals.Writer.TryWrite(accrual);
            }
        }
    }

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var writer = WriteLoopAsync(stoppingToken);
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(Math.Max(1, options.Value.SampleSeconds)), time);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
            {
                try
                {
                    await SampleAsync(stoppingToken).ConfigureAwait(false);
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
        _accruals.Writer.TryComplete();
        await writer.ConfigureAwait(false);
    }

    private async Task WriteLoopAsync(CancellationToken stoppingToken)
    {
        await foreach (var item in _accruals.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            if (item is TaskCompletionSource done)
            {
                done.TrySetResult();
                continue;
            }
            var a = (Accrual)item;
            try
            {
                foreach (var (day, from, to) in SplitByDay(a.From, a.To))
                {
                    double total = (a.To - a.From).TotalSeconds;
                    double seconds = (to - from).TotalSeconds;
                    double share = total > 0 ? seconds / total : 1;
                    await store.AddAsync(a.TenantId, day, new UsageAmounts(a.CpuSeconds * share, a.MemoryGiB * seconds, a.DiskGiB * seconds / 3600, seconds), CancellationToken.None).ConfigureAwait(false);
                }
            }
            catch (Exception ex)
            {
                LogWriteFailed(logger, a.TenantId, ex);
            }
        }
        _ = stoppingToken;
    }

    private static IEnumerable<(DateOnly Day, DateTimeOffset From, DateTimeOffset To)> SplitByDay(DateTimeOffset from, DateTimeOffset to)
    {
        from = from.ToUniversalTime();
        to = to.ToUniversalTime();
        if (to <= from)
        {
            yield return (DateOnly.FromDateTime(to.UtcDateTime), to, to);
            yield break;
        }
        var cursor = from;
        while (cursor < to)
        {
            var midnight = new DateTimeOffset(cursor.UtcDateTime.Date.AddDays(1), TimeSpan.Zero);
            var end = midnight < to ? midnight : to;
            yield return (DateOnly.FromDateTime(cursor.UtcDateTime), cursor, end);
            cursor = end;
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Usage sampling failed")]
    private static partial void LogSampleFailed(ILogger logger, Exception exception);

    [LoggerMessage(Level = LogLevel.Error, Message = "Could not store usage of tenant {TenantId}")]
    private static partial void LogWriteFailed(ILogger logger, string tenantId, Exception exception);
}
