using System.Text.Json;
using Moat.Core.Host;
using Moat.Core.Runtimes;
using Moat.Runtimes.Seccomp;

namespace Moat.Runtimes.Oci;

/// <summary>
/// Writes the one OCI bundle description that the container tiers run: the hardened defaults of
/// docs/security.md, expressed as config.json.
/// </summary>
public static class OciSpecBuilder
{
    /// <summary>Where the agent's files appear inside every sandbox.</summary>
    public const string AgentMount = "/.moat";

    /// <summary>The agent's socket directory inside the sandbox.</summary>
    public const string ChannelMount = "/.moat/chan";

    /// <summary>The agent's socket inside the sandbox.</summary>
    public const string AgentSocketInside = ChannelMount + "/agent.sock";

    /// <summary>What the agent keeps: enough to start commands as any user and manage files as root. User code gets none of it.</summary>
    public static readonly IReadOnlyList<string> AgentCapabilities =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    ];

    /// <summary>Paths under /proc and /sys that reveal or change the host: hidden.</summary>
    public static readonly IReadOnlyList<string> MaskedPaths =
    [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/proc/config.gz", "/proc/kallsyms", "/proc/vmallocinfo",
        "/proc/sysrq-trigger", "/sys/firmware", "/sys/devices/virtual/powercap", "/sys/kernel/debug", "/sys/kernel/security",
    ];

    /// <summary>Paths under /proc that stay readable but never writable.</summary>
    public static readonly IReadOnlyList<string> ReadonlyPaths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"];

    /// <summary>Builds the spec for a sandbox.</summary>
    /// <param name="launch">What to run.</param>
    /// <param name="rootfs">The prepared root filesystem.</param>
    /// <param name="channelDirectory">Host directory where the agent's socket will appear.</param>
    /// <param name="tmpDirectory">Host directory on the sandbox's volume that becomes its /tmp.</param>
    /// <param name="cgroupsPath">Cgroup of the sandbox, or null to let the runtime choose.</param>
    /// <param name="seccomp">The seccomp profile to apply, or null for none.</param>
    /// <param name="overhead">What the runtime itself adds to the sandbox's cgroup (gVisor's Sentry and gofer), on top of the user's limits.</param>
    /// <param name="resolvConf">Host file that becomes the sandbox's /etc/resolv.conf (read-only), for sandboxes with a network.</param>
    public static OciSpec Build(SandboxLaunch launch, string rootfs, string channelDirectory, string tmpDirectory, string? cgroupsPath, JsonElement? seccomp, RuntimeOverhead overhead = default, string? resolvConf = null)
    {
        var r = launch.Resources;
        long memory = ((long)r.MemoryMiB + overhead.MemoryMiB) << 20;
        const ulong period = 100_000;
        var spec = new OciSpec
        {
            Hostname = launch.Hostname,
            Root = new OciRoot { Path = rootfs, ReadOnly = false },
            Process = new OciProcess
            {
                Args = [$"{AgentMount}/lib/ld-linux-x86-64.so.2", "--library-path", $"{AgentMount}/lib", $"{AgentMount}/moat-agent", "--listen", $"unix:{AgentSocketInside}"],
                Env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                Cwd = "/",
                User = new OciUser { Uid = 0, Gid = 0 },
                NoNewPrivileges = true,
                // The OOM killer takes user code, not the agent: the agent is shielded where the host
                // may lower scores (CAP_SYS_RESOURCE), and always raises its children's.
                OomScoreAdj = HostCapabilities.CanLowerOomScore ? -1000 : null,
                Capabilities = new OciCapabilities
                {
                    Bounding = [.. AgentCapabilities],
                    Effective = [.. AgentCapabilities],
                    Permitted = [.. AgentCapabilities],
                },
                Rlimits =
                [
                    new OciRlimit { Type = "RLIMIT_NOFILE", Hard = (ulong)r.OpenFiles, Soft = (ulong)r.OpenFiles },
                    new OciRlimit { Type = "RLIMIT_CORE", Hard = 0, Soft = 0 },
                    .. overhead.CountProcessesInside ? [new OciRlimit { Type = "RLIMIT_NPROC", Hard = (ulong)r.Pids, Soft = (ulong)r.Pids }] : Array.Empty<OciRlimit>(),
                ],
            },
            Mounts =
            [
                new OciMount { Destination = "/proc", Type = "proc", Source = "proc", Options = ["nosuid", "noexec", "nodev"] },
                new OciMount { Destination = "/dev", Type = "tmpfs", Source = "tmpfs", Options = ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                new OciMount { Destination = "/dev/pts", Type = "devpts", Source = "devpts", Options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
                new OciMount { Destination = "/dev/shm", Type = "tmpfs", Source = "shm", Options = ["nosuid", "noexec", "nodev", "mode=1777", $"size={Math.Min(r.MemoryMiB / 2, 1024)}m"] },
                new OciMount { Destination = "/dev/mqueue", Type = "mqueue", Source = "mqueue", Options = ["nosuid", "noexec", "nodev"] },
                new OciMount { Destination = "/sys", Type = "sysfs", Source = "sysfs", Options = ["nosuid", "noexec", "nodev", "ro"] },
                new OciMount { Destination = ChannelMount, Type = "bind", Source = channelDirectory, Options = ["bind", "rw", "nosuid", "nodev", "noexec"] },
                // /tmp on the sandbox's own volume: bounded by its disk limit on every tier (runsc
                // would otherwise put an unbounded, memory-backed tmpfs there).
                new OciMount { Destination = "/tmp", Type = "bind", Source = tmpDirectory, Options = ["bind", "rw", "nosuid", "nodev"] },
            ],
            Linux = new OciLinux
            {
                // Without a network the runtime makes a fresh namespace (loopback only); with one, Moat made it.
                Namespaces = [new() { Type = "pid" }, new() { Type = "network", Path = launch.Network?.NamespacePath }, new() { Type = "ipc" }, new() { Type = "uts" }, new() { Type = "mount" }, new() { Type = "cgroup" }],
                CgroupsPath = cgroupsPath,
                Resources = new OciResources
                {
                    Memory = new OciMemory { Limit = memory, Swap = memory },
                    Cpu = new OciCpu { Period = period, Quota = (long)Math.Ceiling(r.Cpus * period) },
                    Pids = new OciPids { Limit = r.Pids + overhead.Pids },
                    Devices = [new OciDeviceRule { Allow = false, Access = "rwm" }, .. AllowedDevices()],
                },
                MaskedPaths = [.. MaskedPaths],
                ReadonlyPaths = [.. ReadonlyPaths],
                RootfsPropagation = "rprivate",
                Seccomp = seccomp,
            },
        };
        if (resolvConf is not null)
            spec.Mounts.Add(new OciMount { Destination = "/etc/resolv.conf", Type = "bind", Source = resolvConf, Options = ["bind", "ro", "nosuid", "nodev", "noexec"] });
        return spec;
    }

    private static IEnumerable<OciDeviceRule> AllowedDevices()
    {
        // null, zero, full, random, urandom, tty, ptmx, and the pty slaves.
        foreach (var (major, minor) in new (long, long?)[] { (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, null) })
            yield return new OciDeviceRule { Allow = true, Type = "c", Major = major, Minor = minor, Access = "rwm" };
    }

    /// <summary>What a runtime's own processes need inside the sandbox's cgroup, beyond the user's limits.</summary>
    /// <param name="MemoryMiB">Memory the runtime uses (gVisor's Sentry and gofer).</param>
    /// <param name="Pids">Host tasks the runtime uses (gVisor's threads and ptrace stubs).</param>
    /// <param name="CountProcessesInside">Also give processes RLIMIT_NPROC = the pids limit: where the runtime's
    /// kernel enforces it (gVisor), a fork bomb stops inside before the host's pids cgroup, which
    /// the runtime itself needs, runs dry.</param>
    public readonly record struct RuntimeOverhead(int MemoryMiB, int Pids, bool CountProcessesInside = false);

    /// <summary>Serializes a spec as config.json.</summary>
    public static string Serialize(OciSpec spec) => JsonSerializer.Serialize(spec, OciJson.Default.OciSpec);
}
