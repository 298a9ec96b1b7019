using System.Text.Json;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Host;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Runtimes.Agent;
using Moat.Runtimes.Cgroups;
using Moat.Storage.Rootfs;

namespace Moat.Runtimes.Oci;

/// <summary>Settings every OCI runtime tier has.</summary>
public abstract class OciRuntimeOptions
{
    /// <summary>The runtime binary.</summary>
    public abstract string Binary { get; set; }
    /// <summary>The runtime's state directory (on tmpfs: containers do not survive a reboot).</summary>
    public abstract string Root { get; set; }
    /// <summary>Parent cgroup of all sandboxes of this tier.</summary>
    public string CgroupParent { get; set; } = "/moat";
}

/// <summary>
/// What the container tiers share: the sandbox is Moat's hardened OCI bundle (overlay rootfs with
/// the agent layer, config.json from <see cref="OciSpecBuilder"/>), run detached by an OCI
/// runtime binary; the agent is its init and listens on a Unix socket in a directory of the
/// sandbox's scratch volume, bind-mounted in. Tiers differ in the binary and its flags only.
/// </summary>
public abstract partial class OciBundleRuntime(ProcessRunner runner, OverlayRootfs rootfs, AgentLayer agentLayer, OciRuntimeOptions options, ILogger logger) : ISandboxRuntime
{
    /// <inheritdoc />
    public abstract IsolationTier Tier { get; }

    /// <summary>The host command runner.</summary>
    protected ProcessRunner Runner => runner;

    /// <summary>Flags that go before the subcommand on every call (runsc wants the same ones on each).</summary>
    protected abstract IReadOnlyList<string> GlobalFlags { get; }

    /// <summary>The seccomp profile that goes into config.json (null: none).</summary>
    protected virtual JsonElement? Seccomp => Moat.Runtimes.Seccomp.SeccompProfile.Json;

    /// <summary>What the tier checks beyond the common requirements; null when usable.</summary>
    protected abstract Task<(string? Problem, string Note)> ProbeTierAsync(Dictionary<string, string> details, CancellationToken cancellationToken);

    /// <summary>Whether the container's init as the host sees it is the agent itself (runc), rather than a runtime process (gVisor's Sentry).</summary>
    protected virtual bool AgentIsInit => false;

    /// <summary>What the runtime's own processes add to the sandbox's cgroup.</summary>
    protected virtual OciSpecBuilder.RuntimeOverhead Overhead => default;

    /// <summary>How long deleting a container may take.</summary>
    protected virtual TimeSpan DeleteTimeout => TimeSpan.FromSeconds(60);

    /// <summary>The global flags for calls about <paramref name="instance"/> (runsc wants a networked sandbox's own on every call).</summary>
    protected virtual IReadOnlyList<string> FlagsFor(RuntimeInstance instance) => GlobalFlags;

    /// <summary>
    /// The program and arguments that run <c>{binary} {runtimeArgs}</c> for a new sandbox (a tier may
    /// need a wrapper, e.g. gVisor's network work-around); called right before the runtime starts.
    /// </summary>
    protected virtual Task<(string Program, IReadOnlyList<string> Args)> LauncherAsync(SandboxLaunch launch, IReadOnlyList<string> runtimeArgs, CancellationToken cancellationToken) =>
        Task.FromResult<(string, IReadOnlyList<string>)>((options.Binary, runtimeArgs));

    private IEnumerable<string> Args(RuntimeInstance instance, params string[] args) => [.. FlagsFor(instance), .. args];

    /// <summary>The subcommand that starts the bundle from a memory checkpoint (after <c>FlagsFor</c>); only tiers that checkpoint override it.</summary>
    protected virtual IReadOnlyList<string> RestoreCommand(string pidFile, string bundle, string imageDirectory, string id) =>
        throw new MoatException(ErrorKind.Conflict, "snapshot_kind_unsupported", $"the {Tier.Name()} tier cannot restore memory snapshots");

    /// <summary>Runs after a sandbox was started from a checkpoint, before the host connects to its agent.</summary>
    protected virtual Task AfterRestoreAsync(RuntimeInstance instance, CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Where a checkpoint keeps the sandbox's scratch /tmp (not part of the filesystem layer).</summary>
    protected const string CheckpointTmp = "tmp";

    /// <inheritdoc />
    public async Task<TierStatus> ProbeAsync(CancellationToken cancellationToken)
    {
        var details = new Dictionary<string, string>();
        if (Environment.UserName != "root")
            return new TierStatus(Tier, false, $"moat must run as root to drive {options.Binary}", details);
        HostCommandResult version;
        try
        {
            version = await runner.RunAsync(options.Binary, ["--version"], new HostCommandOptions { Timeout = TimeSpan.FromSeconds(10) }, cancellationToken).ConfigureAwait(false);
        }
        catch (MoatException ex)
        {
            return new TierStatus(Tier, false, $"{options.Binary} is not installed ({ex.Message})", details);
        }
        details[Path.GetFileName(options.Binary)] = version.Stdout.Split('\n')[0].Split(' ').Last().Trim();
        details["cgroups"] = CgroupHierarchy.IsUnified ? "v2" : "v1";
        if (AgentProblem(agentLayer.SourceDirectory) is { } problem)
            return new TierStatus(Tier, false, problem, details);
        if (!File.ReadAllText("/proc/filesystems").Contains("overlay", StringComparison.Ordinal))
            return new TierStatus(Tier, false, "the kernel has no overlayfs", details);
        if (!File.Exists("/dev/loop-control"))
            return new TierStatus(Tier, false, "no /dev/loop-control: loop devices are needed for the per-sandbox writable layer", details);
        var (tierProblem, note) = await ProbeTierAsync(details, cancellationToken).ConfigureAwait(false);
        return new TierStatus(Tier, tierProblem is null, tierProblem ?? note, details);
    }

    /// <summary>Why the agent directory is unusable, or null when it is fine.</summary>
    public static string? AgentProblem(string agentDirectory)
    {
        if (string.IsNullOrEmpty(agentDirectory) || !File.Exists(Path.Combine(agentDirectory, "moat-agent")))
            return $"moat-agent is not built (looked in '{agentDirectory}'); run ./run.sh";
        if (!File.Exists(Path.Combine(agentDirectory, "lib", "ld-linux-x86-64.so.2")))
            return $"the agent directory {agentDirectory} lacks lib/ld-linux-x86-64.so.2; run ./run.sh";
        return null;
    }

    /// <inheritdoc />
    public async Task<RuntimeInstance> StartAsync(SandboxLaunch launch, CancellationToken cancellationToken)
    {
        // The channel directory lives on the sandbox's scratch volume, outside its upper layer:
        // bind-mounted into the sandbox it shows no host path, and it survives a server restart.
        var channel = Path.Combine(OverlayRootfs.LayoutOf(launch.Directory).ScratchMount, "chan");
        var cgroup = $"{options.CgroupParent}/{launch.Id}";
        var instance = new RuntimeInstance
        {
            Tier = Tier,
            ContainerId = launch.Id,
            Directory = launch.Directory,
            AgentSocket = Path.Combine(channel, "agent.sock"),
            Properties = launch.Network is { } network
                ? new Dictionary<string, string> { ["cgroup"] = cgroup, ["netns"] = network.NamespacePath }
                : new Dictionary<string, string> { ["cgroup"] = cgroup },
        };
        if (instance.AgentSocket.Length > 107)
            throw new MoatException(ErrorKind.Unavailable, "data_directory_too_deep", $"the agent socket path {instance.AgentSocket} is longer than a Unix socket path may be (107); use a shorter Moat:DataDirectory");
        try
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var layout = await rootfs.PrepareAsync(launch.Template, [agentLayer.Path], launch.Directory, launch.Resources.DiskMiB, cancellationToken).ConfigureAwait(false);
            double prepared = clock.Elapsed.TotalMilliseconds;
            Directory.CreateDirectory(channel, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var tmp = Path.Combine(layout.ScratchMount, "tmp");
            Directory.CreateDirectory(tmp);
            File.SetUnixFileMode(tmp, (UnixFileMode)0x3FF); // 1777
            if (launch.RestoreFrom is { } saved && Directory.Exists(Path.Combine(saved, CheckpointTmp)))
                await runner.RunAsync("cp", ["-a", "--", Path.Combine(saved, CheckpointTmp) + "/.", tmp], new HostCommandOptions { Timeout = TimeSpan.FromSeconds(120) }, cancellationToken).ConfigureAwait(false);
            var bundle = Path.Combine(launch.Directory, "bundle");
            Directory.CreateDirectory(bundle);
            string? resolvConf = null;
            if (launch.Network is { } attachment)
            {
                // Moat's resolver on the gateway: the only one that answers the sandbox.
                resolvConf = Path.Combine(bundle, "resolv.conf");
                await File.WriteAllTextAsync(resolvConf, attachment.ResolvConf, cancellationToken).ConfigureAwait(false);
            }
            var spec = OciSpecBuilder.Build(launch, layout.Root, channel, tmp, cgroup, Seccomp, Overhead, resolvConf);
            await File.WriteAllTextAsync(Path.Combine(bundle, "config.json"), OciSpecBuilder.Serialize(spec), cancellationToken).ConfigureAwait(false);
            var pidFile = Path.Combine(launch.Directory, "init.pid");
            string id = launch.Id;
            IReadOnlyList<string> command = launch.RestoreFrom is { } image
                ? RestoreCommand(pidFile, bundle, image, id)
                : ["run", "--detach", "--pid-file", pidFile, "--bundle", bundle, id];
            var (program, args) = await LauncherAsync(launch, [.. FlagsFor(instance), .. command], cancellationToken).ConfigureAwait(false);
            await runner.RunAsync(program, args,
                new HostCommandOptions { Timeout = TimeSpan.FromSeconds(60), InheritedOutput = line => LogAgentOutput(logger, id, line) }, cancellationToken).ConfigureAwait(false);
            int pid = int.Parse((await File.ReadAllTextAsync(pidFile, cancellationToken).ConfigureAwait(false)).Trim());
            if (launch.RestoreFrom is not null)
                await AfterRestoreAsync(instance, cancellationToken).ConfigureAwait(false);
            LogStarted(logger, id, prepared, clock.Elapsed.TotalMilliseconds - prepared);
            return instance with { Pid = pid, AgentPid = AgentIsInit ? pid : null };
        }
        catch
        {
            await DestroyAsync(instance, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    }

    /// <inheritdoc />
    public async Task<InstanceStatus> InspectAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var result = await runner.RunAsync(options.Binary, Args(instance, "state", instance.ContainerId), new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(20) }, cancellationToken).ConfigureAwait(false);
        if (result.ExitCode != 0)
            return InstanceStatus.Missing;
        using var state = JsonDocument.Parse(result.Stdout);
        return state.RootElement.GetProperty("status").GetString() switch
        {
            "running" => InstanceStatus.Running,
            "paused" => InstanceStatus.Paused,
            _ => InstanceStatus.Stopped,
        };
    }

    /// <inheritdoc />
    public Task PauseAsync(RuntimeInstance instance, CancellationToken cancellationToken) =>
        runner.RunAsync(options.Binary, Args(instance, "pause", instance.ContainerId), new HostCommandOptions { Timeout = TimeSpan.FromSeconds(30) }, cancellationToken);

    /// <inheritdoc />
    public Task ResumeAsync(RuntimeInstance instance, CancellationToken cancellationToken) =>
        runner.RunAsync(options.Binary, Args(instance, "resume", instance.ContainerId), new HostCommandOptions { Timeout = TimeSpan.FromSeconds(30) }, cancellationToken);

    /// <inheritdoc />
    public async Task DestroyAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        // A frozen container cannot die: thaw it first (harmless when it is not paused).
        await runner.RunAsync(options.Binary, Args(instance, "resume", instance.ContainerId), new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(30) }, cancellationToken).ConfigureAwait(false);
        var result = await runner.RunAsync(options.Binary, Args(instance, "delete", "--force", instance.ContainerId), new HostCommandOptions { Check = false, Timeout = DeleteTimeout }, cancellationToken).ConfigureAwait(false);
        if (result.ExitCode != 0 && !result.Stderr.Contains("not exist", StringComparison.Ordinal) && !result.Stderr.Contains("not found", StringComparison.Ordinal))
            LogDeleteFailed(logger, instance.ContainerId, result.Stderr.Trim());
        // Whatever the runtime left in the sandbox's cgroup (a half-made container) is killed.
        // Killed processes take a moment to leave the cgroup, and a fork bomb forks between two
        // reads of its list: kill and look again until it is empty, then remove it (rmdir is EBUSY
        // while anything is left).
        var cgroup = CgroupOf(instance);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            var left = cgroup.Processes().ToList();
            foreach (var pid in left)
                Linux.Kill(pid, 9);
            if (left.Count == 0 || DateTime.UtcNow > deadline)
                break;
            await Task.Delay(20, CancellationToken.None).ConfigureAwait(false);
        }
        rootfs.Release(instance.Directory);
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                cgroup.Remove();
                break;
            }
            catch (IOException) when (attempt < 50)
            {
                await Task.Delay(100, CancellationToken.None).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                LogDeleteFailed(logger, instance.ContainerId, $"cgroup {cgroup.Path}: {ex.Message}");
                break;
            }
        }
    }

    /// <inheritdoc />
    public Task<HostUsage?> ReadUsageAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var cgroup = CgroupOf(instance);
        if (!cgroup.Exists())
            return Task.FromResult<HostUsage?>(null);
        var (current, peak, limit) = cgroup.Memory();
        var disk = OverlayRootfs.Usage(instance.Directory);
        return Task.FromResult<HostUsage?>(new HostUsage
        {
            CpuTime = cgroup.CpuTime(),
            MemoryBytes = current,
            MemoryPeakBytes = peak,
            MemoryLimitBytes = limit,
            OomKills = cgroup.OomKills(),
            Pids = cgroup.Pids(),
            PidsLimitHits = cgroup.PidsLimitHits(),
            DiskUsedBytes = disk?.UsedBytes ?? 0,
            DiskLimitBytes = disk?.TotalBytes ?? 0,
        });
    }

    private ICgroup CgroupOf(RuntimeInstance instance) =>
        CgroupHierarchy.At(instance.Properties.TryGetValue("cgroup", out var path) ? path : $"{options.CgroupParent}/{instance.ContainerId}");

    [LoggerMessage(Level = LogLevel.Debug, Message = "Started {SandboxId}: rootfs {RootfsMs:0.0} ms, runtime {RuntimeMs:0.0} ms")]
    private static partial void LogStarted(ILogger logger, string sandboxId, double rootfsMs, double runtimeMs);

    [LoggerMessage(Level = LogLevel.Debug, Message = "[{SandboxId}] agent: {Line}")]
    private static partial void LogAgentOutput(ILogger logger, string sandboxId, string line);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Deleting container {SandboxId} failed: {Error}")]
    private static partial void LogDeleteFailed(ILogger logger, string sandboxId, string error);
}
