using Microsoft.Extensions.Options;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Core.Runtimes;

/// <summary>
/// The tiers this node has, what each can do here (probed once, then on demand), and the choice
/// of a tier for a request.
/// </summary>
public sealed class RuntimeRegistry(IEnumerable<ISandboxRuntime> runtimes, IOptions<SandboxManagerOptions> options)
{
    private readonly IReadOnlyList<ISandboxRuntime> _runtimes = runtimes.ToList();
    private readonly SandboxManagerOptions _options = options.Value;
    private readonly SemaphoreSlim _probeLock = new(1, 1);
    private IReadOnlyDictionary<IsolationTier, TierStatus>? _status;

    /// <summary>Every registered runtime.</summary>
    public IReadOnlyList<ISandboxRuntime> All => _runtimes;

    /// <summary>The runtime of a tier, usable or not; null if none is registered.</summary>
    public ISandboxRuntime? Find(IsolationTier tier) => _runtimes.FirstOrDefault(r => r.Tier == tier);

    /// <summary>The status of every tier (registered or not), probing if not done yet.</summary>
    public async Task<IReadOnlyList<TierStatus>> StatusAsync(CancellationToken cancellationToken, bool refresh = false)
    {
        var status = await ProbeAsync(cancellationToken, refresh).ConfigureAwait(false);
        return IsolationTiers.All.Select(t => status[t]).ToList();
    }

    /// <summary>The tier used when a request names none: the configured one, else the strongest usable.</summary>
    public async Task<IsolationTier> DefaultTierAsync(CancellationToken cancellationToken)
    {
        if (IsolationTiers.TryParse(_options.DefaultTier) is { } configured)
            return configured;
        var status = await ProbeAsync(cancellationToken).ConfigureAwait(false);
        // A microVM without KVM is emulated (TCG): real, but too slow to be anyone's default.
        if (status[IsolationTier.Microvm] is { Usable: true } vm && !vm.Details.TryGetValue("accelerator", out var accel) | accel == "kvm")
            return IsolationTier.Microvm;
        if (status[IsolationTier.Gvisor].Usable)
            return IsolationTier.Gvisor;
        if (status[IsolationTier.Container].Usable)
            return IsolationTier.Container;
        if (status[IsolationTier.Microvm].Usable)
            return IsolationTier.Microvm;
        throw new MoatException(ErrorKind.Unavailable, "no_tier_available", "no isolation tier can run on this host: run `moat doctor` to see why");
    }

    /// <summary>The runtime for a tier, or an error that says why the tier cannot be used.</summary>
    public async Task<ISandboxRuntime> ResolveAsync(IsolationTier tier, CancellationToken cancellationToken)
    {
        var status = (await ProbeAsync(cancellationToken).ConfigureAwait(false))[tier];
        if (!status.Usable)
            throw new MoatException(ErrorKind.Unavailable, "tier_unavailable", $"isolation tier '{tier.Name()}' is not available on this host: {status.Reason}");
        return Find(tier)!;
    }

    private async Task<IReadOnlyDictionary<IsolationTier, TierStatus>> ProbeAsync(CancellationToken cancellationToken, bool refresh = false)
    {
        if (_status is { } cached && !refresh)
            return cached;
        await _probeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_status is { } again && !refresh)
                return again;
            var result = new Dictionary<IsolationTier, TierStatus>();
            foreach (var tier in IsolationTiers.All)
            {
                var runtime = Find(tier);
                TierStatus status;
                if (runtime is null)
                    status = new TierStatus(tier, false, "not built into this server", new Dictionary<string, string>());
                else
                {
                    try
                    {
                        status = await runtime.ProbeAsync(cancellationToken).ConfigureAwait(false);
                    }
                    catch (Exception ex) when (ex is not OperationCanceledException)
                    {
                        status = new TierStatus(tier, false, $"probe failed: {ex.Message}", new Dictionary<string, string>());
                    }
                }
                if (tier == IsolationTier.Container && status.Usable && !_options.AllowContainer)
                    status = status with { Usable = false, Reason = "disabled by the operator (Moat:AllowContainer=false)" };
                result[tier] = status;
            }
            _status = result;
            return result;
        }
        finally
        {
            _probeLock.Release();
        }
    }
}
