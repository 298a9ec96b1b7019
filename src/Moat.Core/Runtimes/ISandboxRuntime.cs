using Moat.Core.Sandboxes;
using Moat.Core.Templates;

namespace Moat.Core.Runtimes;

/// <summary>
/// One isolation tier on this host. The manager reaches every tier through this interface only:
/// it hands over a launch description and gets back an instance it can persist, inspect and destroy.
/// </summary>
public interface ISandboxRuntime
{
    /// <summary>The tier this runtime provides.</summary>
    IsolationTier Tier { get; }

    /// <summary>
    /// Why this tier cannot give a sandbox a network interface (so network modes other than
    /// <c>none</c> must be refused for it), or null when it can.
    /// </summary>
    string? NetworkProblem => null;

    /// <summary>
    /// Whether the sandbox's network reaches it through a tap device (a VM's NIC) rather than the
    /// namespace's own interface: the manager then has the network controller make one and passes it
    /// in <see cref="SandboxLaunch.Tap"/>.
    /// </summary>
    bool NeedsTapDevice => false;

    /// <summary>Checks whether this host can run the tier, and says why not.</summary>
    Task<TierStatus> ProbeAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Creates and starts a sandbox whose agent will listen at <see cref="RuntimeInstance.AgentSocket"/>.
    /// On failure everything half-made is removed before the exception propagates.
    /// </summary>
    Task<RuntimeInstance> StartAsync(SandboxLaunch launch, CancellationToken cancellationToken);

    /// <summary>Whether the sandbox's processes still exist (used to tell a dead agent from a broken channel, and on re-adoption).</summary>
    Task<InstanceStatus> InspectAsync(RuntimeInstance instance, CancellationToken cancellationToken);

    /// <summary>
    /// Waits until this tier may start one more sandbox, for tiers whose starts are expensive
    /// enough (a microVM's boot) to be admitted a few at a time. The manager calls it before a
    /// create's deadline starts running and disposes the result once the sandbox answers or failed.
    /// Default: no wait.
    /// </summary>
    Task<IDisposable?> AdmitStartAsync(CancellationToken cancellationToken) => Task.FromResult<IDisposable?>(null);

    /// <summary>Kills the sandbox and removes every trace of it: processes, mounts, cgroups, files. Idempotent.</summary>
    Task DestroyAsync(RuntimeInstance instance, CancellationToken cancellationToken);

    /// <summary>Resource use read from the host side (cgroups), which the sandbox cannot forge.</summary>
    Task<HostUsage?> ReadUsageAsync(RuntimeInstance instance, CancellationToken cancellationToken);

    /// <summary>
    /// Whether the host's readings miss what happens inside: a sandbox with a kernel of its own (a
    /// microVM) confines its commands in the guest, and the host's cgroup holds only the VMM. The
    /// manager then asks the agent and lets <see cref="CombineUsage"/> merge the two.
    /// </summary>
    bool UsageNeedsGuest => false;

    /// <summary>The sandbox's usage from the host's readings and what its agent reported (only called when <see cref="UsageNeedsGuest"/>).</summary>
    HostUsage CombineUsage(RuntimeInstance instance, HostUsage host, Protocol.Messages.Usage guest) => host;

    /// <summary>Freezes every process of the sandbox: no CPU, memory and files kept.</summary>
    Task PauseAsync(RuntimeInstance instance, CancellationToken cancellationToken) =>
        throw new Errors.MoatException(Errors.ErrorKind.Conflict, "pause_unsupported", $"the {Tier.Name()} tier cannot pause sandboxes on this host");

    /// <summary>
    /// Snapshot kinds this tier can take here: <c>filesystem</c> (files only) and, where the
    /// runtime can save a running sandbox, <c>memory</c> (processes, memory and files).
    /// </summary>
    IReadOnlyList<string> SnapshotKinds => [SnapshotKindNames.Filesystem];

    /// <summary>Why this tier cannot take memory snapshots here (shown in capabilities and errors), or null when it can.</summary>
    string? MemorySnapshotProblem => $"the {Tier.Name()} tier cannot save a running sandbox's memory";

    /// <summary>
    /// Saves the processes and memory of a running sandbox into <paramref name="imageDirectory"/>
    /// (plus what the tier's restore needs beside the rootfs, e.g. its scratch /tmp) and lets it
    /// run on. The agent channel is closed meanwhile: the caller reconnects once this returns.
    /// <paramref name="whileFrozen"/> runs while the sandbox is frozen for the save (the caller
    /// captures its writable layer there, so files and memory are of one instant). A sandbox
    /// started with <see cref="SandboxLaunch.RestoreFrom"/> = that directory resumes from then.
    /// </summary>
    Task CheckpointAsync(RuntimeInstance instance, string imageDirectory, Func<CancellationToken, Task>? whileFrozen, CancellationToken cancellationToken) =>
        throw new Errors.MoatException(Errors.ErrorKind.Conflict, "snapshot_kind_unsupported", MemorySnapshotProblem ?? $"the {Tier.Name()} tier cannot take memory snapshots");

    /// <summary>Thaws a paused sandbox exactly where it stopped.</summary>
    Task ResumeAsync(RuntimeInstance instance, CancellationToken cancellationToken) =>
        throw new Errors.MoatException(Errors.ErrorKind.Conflict, "pause_unsupported", $"the {Tier.Name()} tier cannot resume sandboxes on this host");
}

/// <summary>Whether a tier can run here.</summary>
/// <param name="Tier">The tier.</param>
/// <param name="Usable">It can run sandboxes now.</param>
/// <param name="Reason">Why not, or a note on how it runs (e.g. "TCG: slow").</param>
/// <param name="Details">Versions, platform, accelerator.</param>
public sealed record TierStatus(IsolationTier Tier, bool Usable, string Reason, IReadOnlyDictionary<string, string> Details);

/// <summary>What a runtime needs to start a sandbox.</summary>
public sealed record SandboxLaunch
{
    /// <summary>Sandbox id; also the container id.</summary>
    public required string Id { get; init; }
    /// <summary>The sandbox's private host directory (created by the manager, removed by the runtime's destroy).</summary>
    public required string Directory { get; init; }
    /// <summary>The template to run.</summary>
    public required TemplateImage Template { get; init; }
    /// <summary>Limits to apply.</summary>
    public required ResourceLimits Resources { get; init; }
    /// <summary>Hostname inside the sandbox.</summary>
    public string Hostname { get; init; } = "sandbox";
    /// <summary>The sandbox's network namespace and link, or null for loopback only (network mode none).</summary>
    public Networking.NetworkAttachment? Network { get; init; }
    /// <summary>The tap device for a VM's NIC in <see cref="Network"/>'s namespace (only for runtimes that <see cref="ISandboxRuntime.NeedsTapDevice"/>).</summary>
    public Networking.TapDevice? Tap { get; init; }
    /// <summary>A memory checkpoint (see <see cref="ISandboxRuntime.CheckpointAsync"/>) to resume instead of booting fresh, or null.</summary>
    public string? RestoreFrom { get; init; }
}

/// <summary>The snapshot kinds, as the API names them.</summary>
public static class SnapshotKindNames
{
    /// <summary>Files only: a template of the sandbox's filesystem.</summary>
    public const string Filesystem = "filesystem";
    /// <summary>Processes, memory and files: restored sandboxes resume where the source was.</summary>
    public const string Memory = "memory";
}

/// <summary>What identifies a started sandbox to its runtime; persisted so a restarted server finds it again.</summary>
public sealed record RuntimeInstance
{
    /// <summary>Tier that started it.</summary>
    public required IsolationTier Tier { get; init; }
    /// <summary>Id the runtime knows it by.</summary>
    public required string ContainerId { get; init; }
    /// <summary>The sandbox's host directory.</summary>
    public required string Directory { get; init; }
    /// <summary>Unix socket the host connects to for the agent.</summary>
    public required string AgentSocket { get; init; }
    /// <summary>Host pid of the sandbox's init (or VMM), if known.</summary>
    public int? Pid { get; init; }
    /// <summary>
    /// Host pid that must hold the agent's listening socket, when the runtime can tell (runc: the
    /// container's init). The host checks it with SO_PEERCRED, so root code in the sandbox that
    /// replaces the socket with its own listener is refused instead of being taken for the agent.
    /// </summary>
    public int? AgentPid { get; init; }
    /// <summary>Runtime-specific values (mount points, cgroup paths, ...).</summary>
    public IReadOnlyDictionary<string, string> Properties { get; init; } = new Dictionary<string, string>();
}

/// <summary>What the runtime sees of a sandbox's processes.</summary>
public enum InstanceStatus
{
    /// <summary>Running.</summary>
    Running,
    /// <summary>Frozen.</summary>
    Paused,
    /// <summary>Its processes have exited, but traces remain.</summary>
    Stopped,
    /// <summary>The runtime does not know it.</summary>
    Missing,
}

/// <summary>Resource use measured by the host.</summary>
public sealed record HostUsage
{
    /// <summary>CPU time used, all processes together.</summary>
    public TimeSpan CpuTime { get; init; }
    /// <summary>Memory in use now, in bytes.</summary>
    public long MemoryBytes { get; init; }
    /// <summary>Highest memory use seen, in bytes.</summary>
    public long MemoryPeakBytes { get; init; }
    /// <summary>Memory limit, in bytes.</summary>
    public long MemoryLimitBytes { get; init; }
    /// <summary>How many times the memory limit made the kernel kill a process.</summary>
    public long OomKills { get; init; }
    /// <summary>Processes and threads now.</summary>
    public long Pids { get; init; }
    /// <summary>How many times a fork failed because the pids limit was reached.</summary>
    public long PidsLimitHits { get; init; }
    /// <summary>Bytes used on the writable layer.</summary>
    public long DiskUsedBytes { get; init; }
    /// <summary>Size of the writable layer.</summary>
    public long DiskLimitBytes { get; init; }
}
