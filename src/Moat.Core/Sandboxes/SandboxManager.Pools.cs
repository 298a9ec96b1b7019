using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Moat.Core.Sandboxes;

/// <summary>A warm pool: sandboxes of one shape kept booted and handed out on create.</summary>
public sealed class PoolOptions
{
    /// <summary>Template of the pooled sandboxes.</summary>
    public string Template { get; set; } = "base";
    /// <summary>Isolation tier (container, gvisor, microvm).</summary>
    public string Tier { get; set; } = "";
    /// <summary>How many ready sandboxes to keep.</summary>
    public int Size { get; set; } = 2;
    /// <summary>CPUs of each.</summary>
    public double Cpus { get; set; } = 1;
    /// <summary>Memory of each, MiB.</summary>
    public int MemoryMiB { get; set; } = 512;
    /// <summary>Disk of each, MiB.</summary>
    public int DiskMiB { get; set; } = 1024;
    /// <summary>Pids of each.</summary>
    public int Pids { get; set; } = 512;
    /// <summary>Open files of each.</summary>
    public int OpenFiles { get; set; } = 4096;

    internal PoolKey Key(IsolationTier tier) => new(Template, tier, new ResourceLimits { Cpus = Cpus, MemoryMiB = MemoryMiB, DiskMiB = DiskMiB, Pids = Pids, OpenFiles = OpenFiles });
}

/// <summary>The shape a request must have to be served from a pool.</summary>
internal readonly record struct PoolKey(string Template, IsolationTier Tier, ResourceLimits Resources);

/// <summary>What a pool has done, for metrics.</summary>
/// <param name="Template">Template.</param>
/// <param name="Tier">Tier.</param>
/// <param name="Target">Configured size.</param>
/// <param name="Ready">Ready now.</param>
/// <param name="Hits">Creates served from it.</param>
/// <param name="Misses">Creates of its shape that found it empty.</param>
public sealed record PoolStatus(string Template, string Tier, int Target, int Ready, long Hits, long Misses);

public sealed partial class SandboxManager
{
    /// <summary>The tenant that owns pooled sandboxes until one is claimed; no API key can act for it.</summary>
    public const string PoolTenant = "__pool__";

    private readonly ConcurrentDictionary<PoolKey, Pool> _pools = new();

    private sealed class Pool(PoolOptions options, PoolKey key)
    {
        public PoolOptions Options { get; } = options;
        public PoolKey Key { get; } = key;
        public ConcurrentQueue<string> Ready { get; } = new();
        public int Filling;
        public long Hits;
        public long Misses;
    }

    /// <summary>Pools configured on this node and their state.</summary>
    public IReadOnlyList<PoolStatus> PoolStatuses() => _pools.Values
        .Select(p => new PoolStatus(p.Key.Template, p.Key.Tier.Name(), p.Options.Size, p.Ready.Count, Interlocked.Read(ref p.Hits), Interlocked.Read(ref p.Misses)))
        .ToList();

    /// <summary>
    /// Tops every pool up to its size. Called by the pool refiller in the background; a sandbox
    /// made here belongs to <see cref="PoolTenant"/> until a create claims it.
    /// </summary>
    public async Task RefillPoolsAsync(CancellationToken cancellationToken)
    {
        foreach (var options in _options.Pools)
        {
            if (IsolationTiers.TryParse(options.Tier) is not { } tier)
                continue;
            var key = options.Key(tier);
            var pool = _pools.GetOrAdd(key, k => new Pool(options, k));
            while (pool.Ready.Count + Volatile.Read(ref pool.Filling) < options.Size && !cancellationToken.IsCancellationRequested)
            {
                Interlocked.Increment(ref pool.Filling);
                try
                {
                    var runtime = await _runtimes.ResolveAsync(tier, cancellationToken).ConfigureAwait(false);
                    var template = await _templates.ResolveAsync(options.Template, PoolTenant, cancellationToken).ConfigureAwait(false);
                    if (template is null)
                        break;
                    var spec = new SandboxSpec { Template = options.Template, Tier = tier, Resources = key.Resources, Timeout = TimeSpan.FromDays(3650) };
                    await _createGate.WaitAsync(cancellationToken).ConfigureAwait(false);
                    SandboxRecord record;
                    try
                    {
                        record = await CreateCoreAsync(spec, PoolTenant, runtime, template, cancellationToken).ConfigureAwait(false);
                    }
                    finally
                    {
                        _createGate.Release();
                    }
                    pool.Ready.Enqueue(record.Id);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogPoolFillFailed(_logger, options.Template, options.Tier, ex);
                    break;
                }
                finally
                {
                    Interlocked.Decrement(ref pool.Filling);
                }
            }
        }
    }

    /// <summary>Hands out a ready pooled sandbox of the spec's shape, re-owned by the tenant; null when none is ready.</summary>
    private async Task<SandboxRecord?> TryClaimAsync(SandboxSpec spec, Templates.TemplateImage template, string tenantId, CancellationToken cancellationToken)
    {
        if (spec.Network.Mode != NetworkMode.None || !_pools.TryGetValue(new PoolKey(spec.Template, spec.Tier, spec.Resources), out var pool))
            return null;
        while (pool.Ready.TryDequeue(out var id))
        {
            if (!_live.TryGetValue(id, out var live))
                continue;
            await live.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                // The tenant's own template of the same name is not the pool's.
                if (live.Ended || live.Record.State != SandboxState.Running || live.Record.TenantId != PoolTenant || live.Template?.Id != template.Id)
                    continue;
                var now = _time.GetUtcNow();
                // Never reused: once claimed it is the tenant's, and it ends like any other sandbox.
                live.Record = live.Record with { TenantId = tenantId, Spec = spec, CreatedAt = now, StartedAt = now, ExpiresAt = now + spec.Timeout };
                await _store.UpdateAsync(live.Record, cancellationToken).ConfigureAwait(false);
                Interlocked.Increment(ref pool.Hits);
                LogPoolClaim(_logger, id, spec.Template, spec.Tier.Name());
                return live.Record;
            }
            finally
            {
                live.Gate.Release();
            }
        }
        Interlocked.Increment(ref pool.Misses);
        return null;
    }

    /// <summary>After a restart: pooled sandboxes that were re-adopted go back into their pools.</summary>
    private void RebuildPools()
    {
        foreach (var live in _live.Values.Where(l => l.Record.TenantId == PoolTenant && l.Record.State == SandboxState.Running))
        {
            foreach (var options in _options.Pools)
            {
                if (IsolationTiers.TryParse(options.Tier) is { } tier && options.Key(tier) == new PoolKey(live.Record.Spec.Template, live.Record.Spec.Tier, live.Record.Spec.Resources))
                {
                    _pools.GetOrAdd(options.Key(tier), k => new Pool(options, k)).Ready.Enqueue(live.Record.Id);
                    break;
                }
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Claimed pooled sandbox {SandboxId} ({Template}, {Tier})")]
    private static partial void LogPoolClaim(ILogger logger, string sandboxId, string template, string tier);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not fill the pool of {Template} on {Tier}")]
    private static partial void LogPoolFillFailed(ILogger logger, string template, string tier, Exception exception);
}
