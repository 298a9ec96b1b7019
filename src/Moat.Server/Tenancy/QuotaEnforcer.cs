using System.Collections.Concurrent;
using Moat.Core.Errors;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Core.State;

namespace Moat.Server.Tenancy;

/// <summary>
/// Per-tenant quotas, checked before every sandbox is created (native API, E2B, one-shot runs
/// alike, since all go through the manager): concurrent sandboxes, vCPUs, memory and disk in use,
/// lifetime, tiers. A request over a quota is refused with 422 and the quota's name; nothing is
/// ever clamped. Creations in flight hold a reservation so that parallel requests cannot together
/// pass a quota each of them alone would respect.
/// </summary>
public sealed class QuotaEnforcer(TenantService tenants, ISandboxStore store) : ISandboxHook
{
    private readonly ConcurrentDictionary<string, TenantLedger> _ledgers = new();

    private sealed class TenantLedger
    {
        /// <summary>Held while a creation is admitted and while a reservation is released; guards <see cref="InFlight"/>.</summary>
        public readonly SemaphoreSlim Lock = new(1, 1);
        public readonly List<ResourceLimits> InFlight = [];
    }

    private sealed class Reservation(TenantLedger ledger, ResourceLimits resources) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0)
                return;
            // Under the admission lock: an admission that has read the store (where this sandbox may
            // still be "creating", not counted) must also see its reservation, or it is counted nowhere.
            ledger.Lock.Wait();
            try
            {
                ledger.InFlight.Remove(resources);
            }
            finally
            {
                ledger.Lock.Release();
            }
        }
    }

    /// <inheritdoc />
    public async ValueTask<IDisposable?> AdmitAsync(SandboxSpec spec, string tenantId, CancellationToken cancellationToken)
    {
        var q = (await tenants.SettingsAsync(tenantId, cancellationToken).ConfigureAwait(false)).Quotas;
        if (q.AllowedTiers is { } tiers && !tiers.Contains(spec.Tier.Name(), StringComparer.OrdinalIgnoreCase))
            throw Over("tier_not_allowed", $"tier '{spec.Tier.Name()}' is not allowed for this tenant; allowed: {string.Join(", ", tiers)}");
        if (q.MaxLifetimeSeconds is { } life && spec.Timeout.TotalSeconds > life)
            throw Over("quota_lifetime", $"timeoutSeconds {spec.Timeout.TotalSeconds:0} exceeds this tenant's maximum lifetime of {life} s");
        if (q.MaxSandboxes is null && q.MaxVcpus is null && q.MaxMemoryMiB is null && q.MaxDiskMiB is null)
            return null;

        var ledger = _ledgers.GetOrAdd(tenantId, _ => new TenantLedger());
        await ledger.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var live = await store.ListAsync(new SandboxQuery { TenantId = tenantId, States = SandboxStates.Alive, Limit = 100_000 }, cancellationToken).ConfigureAwait(false);
            // A creation in flight is in the store as "creating" once it has started: count those
            // through the reservations only, so nothing is counted twice.
            var used = live.Where(r => r.State != SandboxState.Creating).Select(r => r.Spec.Resources).ToList();
            used.AddRange(ledger.InFlight);
            int count = used.Count;
            double cpus = used.Sum(r => r.Cpus);
            long memory = used.Sum(r => (long)r.MemoryMiB);
            long disk = used.Sum(r => (long)r.DiskMiB);
            var ask = spec.Resources;
            if (q.MaxSandboxes is { } maxCount && count + 1 > maxCount)
                throw Over("quota_sandboxes", $"this tenant already has {count} live sandboxes; its quota is {maxCount}");
            if (q.MaxVcpus is { } maxCpus && cpus + ask.Cpus > maxCpus + 1e-9)
                throw Over("quota_vcpus", $"{ask.Cpus} vCPUs requested, {cpus} in use; this tenant's quota is {maxCpus} vCPUs");
            if (q.MaxMemoryMiB is { } maxMemory && memory + ask.MemoryMiB > maxMemory)
                throw Over("quota_memory", $"{ask.MemoryMiB} MiB of memory requested, {memory} MiB in use; this tenant's quota is {maxMemory} MiB");
            if (q.MaxDiskMiB is { } maxDisk && disk + ask.DiskMiB > maxDisk)
                throw Over("quota_disk", $"{ask.DiskMiB} MiB of disk requested, {disk} MiB in use; this tenant's quota is {maxDisk} MiB");
            ledger.InFlight.Add(ask);
            return new Reservation(ledger, ask);
        }
        finally
        {
            ledger.Lock.Release();
        }
    }

    /// <inheritdoc />
    public void AdmitTimeout(SandboxRecord record, DateTimeOffset expiresAt)
    {
        // The lifetime quota counts from the start: an extension cannot go past it.
        if (tenants.CachedSettings(record.TenantId)?.Quotas.MaxLifetimeSeconds is { } life)
        {
            var start = record.StartedAt ?? record.CreatedAt;
            if ((expiresAt - start).TotalSeconds > life + 1)
                throw Over("quota_lifetime", $"sandbox {record.Id} would live {(expiresAt - start).TotalSeconds:0} s; this tenant's maximum lifetime is {life} s");
        }
    }

    private static MoatException Over(string code, string message) => new(ErrorKind.QuotaExceeded, code, message);
}
