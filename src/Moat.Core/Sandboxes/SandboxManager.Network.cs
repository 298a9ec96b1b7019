using System.Text;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;

namespace Moat.Core.Sandboxes;

public sealed partial class SandboxManager
{
    /// <summary>The network controller of this node, if it has one.</summary>
    public Networking.INetworkController? Network => _network;

    /// <summary>
    /// Switches a running (or paused) sandbox to another network policy. Connections the new
    /// policy does not allow are closed at once. A container-tier sandbox created without a network
    /// gets one now; other tiers can only change the policy of the network they were created with.
    /// </summary>
    public async Task<SandboxRecord> SetNetworkAsync(string id, string tenantId, NetworkPolicy policy, CancellationToken cancellationToken)
    {
        SandboxLimits.ValidateNetwork(policy);
        RequireNetworkMode(policy.Mode);
        var live = await LiveOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        await live.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (live.Record.State is not (SandboxState.Running or SandboxState.Paused) || live.Record.Instance is not { } instance)
                throw NotRunning(live.Record);
            if (live.Runtime is { } runtime)
                RequireTierNetwork(runtime, policy.Mode);
            var network = _network!;
            if (policy.Mode != NetworkMode.None && !network.IsAttached(id))
            {
                if (live.Record.Spec.Tier != IsolationTier.Container || instance.Pid is not { } pid || live.Record.State != SandboxState.Running)
                    throw new MoatException(ErrorKind.Conflict, "network_change_unsupported",
                        $"sandbox {id} was created with network mode none; on the {live.Record.Spec.Tier.Name()} tier it cannot get a network later. Create it with mode allow or open (a later change to none, allow or open is then possible)");
                // The container shares the host's kernel: its namespace can take a link while it runs.
                var attachment = await network.AttachRunningAsync(id, pid, policy, cancellationToken).ConfigureAwait(false);
                if (live.Agent is { } agent)
                {
                    using var resolv = new MemoryStream(Encoding.ASCII.GetBytes(attachment.ResolvConf));
                    await agent.WriteFileAsync("/etc/resolv.conf", resolv, new Agent.FileWriteOptions { User = "root", Mode = 0x1A4 /* 0644 */, CreateParents = true, MaxBytes = 4096 }, cancellationToken).ConfigureAwait(false);
                }
            }
            else
            {
                await network.SetPolicyAsync(id, policy, cancellationToken).ConfigureAwait(false);
            }
            live.Record = live.Record with { Spec = live.Record.Spec with { Network = policy } };
            await _store.UpdateAsync(live.Record, CancellationToken.None).ConfigureAwait(false);
            LogNetworkChanged(_logger, id, policy.Mode.ToString().ToLowerInvariant());
            return live.Record;
        }
        finally
        {
            live.Gate.Release();
        }
    }

    private void RequireNetworkMode(NetworkMode mode)
    {
        if (mode == NetworkMode.None)
            return;
        if (_network is null || !_network.Modes.Contains(mode))
            throw new MoatException(ErrorKind.Unavailable, "network_unavailable",
                $"network mode '{mode.ToString().ToLowerInvariant()}' is not available on this server: {_network?.Problem ?? "it has no network controller"}");
    }

    /// <summary>
    /// Where the inbound proxy reaches a running sandbox's ports. With <paramref name="tenantId"/>
    /// the sandbox must be that tenant's; without (the caller holds the sandbox's own access token,
    /// already checked) any live sandbox. Not running, or another tenant's: not found.
    /// </summary>
    public InboundTargetInfo InboundTargetOf(string id, string? tenantId)
    {
        if (!_live.TryGetValue(id, out var live) || (tenantId is not null && live.Record.TenantId != tenantId))
            throw MoatException.SandboxNotFound(id);
        if (live.Record.State != SandboxState.Running || live.Record.Instance is not { } instance)
            throw NotRunning(live.Record);
        return new InboundTargetInfo(new Networking.InboundTarget(id, live.Record.Spec.Tier == IsolationTier.Container, instance.Pid), live.Record.TenantId);
    }

    /// <summary>A policy the tier cannot honour is refused, never silently ignored.</summary>
    private static void RequireTierNetwork(Runtimes.ISandboxRuntime runtime, NetworkMode mode)
    {
        if (mode != NetworkMode.None && runtime.NetworkProblem is { } problem)
            throw new MoatException(ErrorKind.InvalidArgument, "network_unsupported_tier",
                $"network mode '{mode.ToString().ToLowerInvariant()}' cannot be enforced on the {runtime.Tier.Name()} tier: {problem}");
    }

    private async Task RestoreNetworkAsync(SandboxRecord record, CancellationToken cancellationToken)
    {
        if (_network is not null)
            await _network.RestoreAsync(record.Id, record.Spec.Network, cancellationToken).ConfigureAwait(false);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} network policy changed to {Mode}")]
    private static partial void LogNetworkChanged(ILogger logger, string sandboxId, string mode);
}

/// <summary>Where an inbound connection goes, and whose sandbox it is.</summary>
/// <param name="Target">For <see cref="Networking.INetworkController.ConnectInboundAsync"/>.</param>
/// <param name="TenantId">The sandbox's tenant.</param>
public sealed record InboundTargetInfo(Networking.InboundTarget Target, string TenantId);
