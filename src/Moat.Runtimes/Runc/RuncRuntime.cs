using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Host;
using Moat.Core.Sandboxes;
using Moat.Runtimes.Agent;
using Moat.Runtimes.Oci;
using Moat.Storage.Rootfs;

namespace Moat.Runtimes.Runc;

/// <summary>Configuration of the container tier (section <c>Moat:Runc</c>).</summary>
public sealed class RuncOptions : OciRuntimeOptions
{
    /// <inheritdoc />
    public override string Binary { get; set; } = "runc";
    /// <inheritdoc />
    public override string Root { get; set; } = "/run/moat/runc";
}

/// <summary>
/// The container tier: runc running Moat's hardened bundle — namespaces, Moat's seccomp profile,
/// cgroups, no capabilities for user code. It shares the host kernel.
/// </summary>
public sealed partial class RuncRuntime(ProcessRunner runner, OverlayRootfs rootfs, AgentLayer agentLayer, IOptions<RuncOptions> options, ILogger<RuncRuntime> logger)
    : OciBundleRuntime(runner, rootfs, agentLayer, options.Value, logger)
{
    /// <inheritdoc />
    public override IsolationTier Tier => IsolationTier.Container;

    /// <inheritdoc />
    protected override IReadOnlyList<string> GlobalFlags { get; } = ["--root", options.Value.Root];

    /// <inheritdoc />
    protected override bool AgentIsInit => true;

    /// <inheritdoc />
    protected override Task<(string? Problem, string Note)> ProbeTierAsync(Dictionary<string, string> details, CancellationToken cancellationToken) =>
        Task.FromResult<(string?, string)>((null, "shares the host kernel: namespaces, seccomp, cgroups, no capabilities"));
}
