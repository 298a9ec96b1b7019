using System.Runtime.InteropServices;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;
using Moat.Agent.Transport;

namespace Moat.Agent.Init;

/// <summary>What the host passes to the agent on the guest kernel's command line (after <c>--</c>).</summary>
internal sealed record VmSettings
{
    public string Hostname { get; init; } = "sandbox";
    /// <summary>Memory limit of the commands' cgroup.</summary>
    public long MemoryBytes { get; init; } = 512L << 20;
    /// <summary>Process limit of the commands' cgroup.</summary>
    public long Pids { get; init; } = 1024;
    /// <summary>RLIMIT_NOFILE of the agent and so of every command.</summary>
    public ulong OpenFiles { get; init; } = 4096;
    /// <summary>The guest's NIC configuration, when the host gave it one (network modes allow and open).</summary>
    public GuestNetworkSettings? Network { get; init; }
}

/// <summary>
/// <c>--vm</c>: the agent is <c>/init</c> of a microVM's initramfs. It mounts the kernel's
/// filesystems, loads the modules the host packed, finds the two virtio disks by the serial
/// numbers the host gave them (the template's ext4 image, read-only and shared by every VM, and
/// the sandbox's own scratch volume), stacks them into the sandbox's root with overlayfs, puts
/// /tmp on the scratch volume, creates the commands' cgroup, and switches into the new root
/// (MS_MOVE + chroot, as switch_root does: an initramfs cannot be pivot_root'ed). Anything it
/// leaves behind in the initramfs — the devtmpfs with the disks, console and the agent's port,
/// the writable cgroup mount — is outside the sandbox's root afterwards.
/// </summary>
internal static unsafe class VmInit
{
    /// <summary>virtio-blk serial of the template disk (set by the host).</summary>
    public const string RootSerial = "moat-root";
    /// <summary>virtio-blk serial of the scratch volume (set by the host).</summary>
    public const string ScratchSerial = "moat-scratch";

    private const nuint MS_RDONLY = 1, MS_NOSUID = 2, MS_NODEV = 4, MS_NOEXEC = 8, MS_REMOUNT = 32;
    private const nuint MS_BIND = 4096, MS_MOVE = 8192, MS_REC = 16384, MS_RELATIME = 1 << 21;
    private const uint RB_POWER_OFF = 0x4321FEDC;
    private const int RLIMIT_CORE = 4, RLIMIT_NOFILE = 7;

    private static int _poweringOff;
    private static string[] _maskedPaths = [], _readonlyPaths = [];

    /// <summary>Whether the agent runs as a VM's init (set by <see cref="Run"/>).</summary>
    public static bool IsGuest { get; internal set; }

    /// <summary>Prepares the sandbox root and enters it; false (after logging why) when the VM cannot serve.</summary>
    public static bool Run(VmSettings settings, string portName)
    {
        IsGuest = true;
        // PID 1 of a VM: an unhandled exception would end init and panic the kernel; power off instead.
        AppDomain.CurrentDomain.UnhandledException += (_, e) =>
        {
            AgentLog.Write($"fatal: {e.ExceptionObject}");
            PowerOff();
        };
        if (!Mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, null)
            || !Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, null)
            || !Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755"))
            return false;
        if (!KernelModules.LoadListed("/moat/modules.load"))
            AgentLog.Write("some kernel modules did not load; trying anyway");
        // Loopback always; eth0 only when the host gave the VM a NIC (a sandbox told it has a
        // network that it has not would fail in confusing ways later: refuse to serve instead).
        if (!GuestNetwork.Configure(settings.Network) && settings.Network is not null)
            return false;

        string? rootDisk = WaitForDisk(RootSerial), scratchDisk = WaitForDisk(ScratchSerial);
        if (rootDisk is null || scratchDisk is null)
        {
            AgentLog.Write($"disks not found (template: {rootDisk ?? "missing"}, scratch: {scratchDisk ?? "missing"})");
            return false;
        }
        foreach (var dir in new[] { "/lower", "/scratch", "/newroot", "/cgroup" })
            MakeDirectory(dir, 0x1ED);
        if (!Mount(rootDisk, "/lower", "ext4", MS_RDONLY | MS_NODEV, "noload")
            || !Mount(scratchDisk, "/scratch", "ext4", MS_NOSUID | MS_NODEV | MS_RELATIME, "errors=remount-ro,discard"))
            return false;
        MakeDirectory("/scratch/upper", 0x1ED);
        MakeDirectory("/scratch/work", 0x1ED);
        MakeDirectory("/scratch/tmp", 0x3FF);
        Chmod("/scratch/tmp", 0x3FF); // 1777 (mkdir applies the umask)
        if (!Mount("overlay", "/newroot", "overlay", 0, "lowerdir=/lower,upperdir=/scratch/upper,workdir=/scratch/work"))
            return false;
        foreach (var dir in new[] { "/newroot/proc", "/newroot/sys", "/newroot/dev", "/newroot/tmp" })
            MakeDirectory(dir, 0x1ED);
        // /tmp on the sandbox's own volume, as in every tier: bounded by the disk limit.
        if (!Mount("/scratch/tmp", "/newroot/tmp", null, MS_BIND, null)
            || !Mount("none", "/newroot/tmp", null, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, null))
            return false;

        // The commands' cgroup, through a mount that stays behind in the initramfs: the sandbox
        // sees the hierarchy read-only only.
        if (!Mount("cgroup2", "/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, null)
            || !GuestConfinement.SetUpCgroup("/cgroup", settings.MemoryBytes, settings.Pids))
            return false;
        if (!GuestConfinement.LoadSeccomp("/moat/seccomp.bpf"))
            return false;
        _maskedPaths = Lines("/moat/masked-paths");
        _readonlyPaths = Lines("/moat/readonly-paths");
        // The agent's port stays reachable through a handle only (its node is in the devtmpfs left behind).
        if (!VirtioSerialTransport.Pin(portName))
            return false;

        if (!Mount("/proc", "/newroot/proc", null, MS_MOVE, null)
            || !Mount("/sys", "/newroot/sys", null, MS_MOVE, null)
            || !Mount("none", "/newroot/sys", null, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, null))
            return false;
        Mount("cgroup2", "/newroot/sys/fs/cgroup", "cgroup2", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, null);

        fixed (byte* p = "/newroot\0"u8)
        {
            if (chdir(p) < 0)
                return Fail("chdir /newroot");
        }
        fixed (byte* dot = ".\0"u8)
        fixed (byte* slash = "/\0"u8)
        {
            if (Libc.mount(dot, slash, null, MS_MOVE, null) < 0)
                return Fail("move the new root onto /");
            if (chroot(dot) < 0)
                return Fail("chroot");
            if (chdir(slash) < 0)
                return Fail("chdir /");
        }

        var name = System.Text.Encoding.UTF8.GetBytes(settings.Hostname);
        fixed (byte* p = name)
        {
            if (sethostname(p, (nuint)name.Length) < 0)
                AgentLog.Write($"sethostname failed (errno {Libc.Errno})");
        }
        if (settings.Network is { } network)
            GuestNetwork.WriteResolvConf(network);
        var nofile = new RLimit { Current = settings.OpenFiles, Max = settings.OpenFiles };
        var core = new RLimit();
        if (setrlimit(RLIMIT_NOFILE, &nofile) < 0 || setrlimit(RLIMIT_CORE, &core) < 0)
            AgentLog.Write($"setrlimit failed (errno {Libc.Errno})");
        return true;
    }

    /// <summary>
    /// Once the sandbox's /dev exists: what a container runtime does for the container tiers, done
    /// inside the guest. Root in a sandbox holds no capabilities, but the guest kernel trusts uid 0
    /// with its writable sysctls — a core_pattern or modprobe path it runs as full root — so
    /// /proc/sys goes read-only after Moat's own settings; information about the guest kernel
    /// is masked as the container tiers mask the host's.
    /// </summary>
    public static void Harden()
    {
        // Modules are the host's business (loaded above, signed): no on-demand loading through a
        // /sbin/modprobe that root in the sandbox could replace. No user namespaces, no kernel
        // pointers or logs for unprivileged code.
        foreach (var (key, value) in new[]
        {
            ("kernel/modprobe", "\n"), ("user/max_user_namespaces", "0"), ("kernel/kptr_restrict", "2"),
            ("kernel/dmesg_restrict", "1"), ("kernel/perf_event_paranoid", "3"), ("kernel/unprivileged_bpf_disabled", "1"),
            ("kernel/yama/ptrace_scope", "2"), ("vm/unprivileged_userfaultfd", "0"), ("fs/suid_dumpable", "0"),
        })
        {
            int fd;
            fixed (byte* p = Libc.Z("/proc/sys/" + key))
                fd = Libc.open(p, Libc.O_WRONLY | Libc.O_CLOEXEC, 0);
            if (fd < 0 || Libc.WriteAll(fd, System.Text.Encoding.ASCII.GetBytes(value)) != 0)
                AgentLog.Write($"sysctl {key}: errno {Libc.Errno}");
            if (fd >= 0)
                Libc.close(fd);
        }
        foreach (var path in _maskedPaths)
        {
            if (Directory.Exists(path))
                Mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0");
            else if (File.Exists(path))
                Mount("/dev/null", path, null, MS_BIND, null);
        }
        foreach (var path in _readonlyPaths)
        {
            if (Directory.Exists(path) && Mount(path, path, null, MS_BIND | MS_REC, null))
                Mount("none", path, null, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, null);
        }
    }

    private static string[] Lines(string file) =>
        (Libc.ReadSmallText(file) ?? "").Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>
    /// Ends the VM: PID 1 must never exit (the kernel would panic); the host sees the guest power
    /// off and tears the sandbox down.
    /// </summary>
    public static void PowerOff()
    {
        if (Interlocked.Exchange(ref _poweringOff, 1) != 0)
        {
            Thread.Sleep(Timeout.Infinite);
            return;
        }
        sync();
        reboot(RB_POWER_OFF);
        // Not reached unless reboot() failed; spinning is still better than a kernel panic.
        AgentLog.Write($"power off failed (errno {Libc.Errno})");
        Thread.Sleep(Timeout.Infinite);
    }

    /// <summary>The /dev node of the virtio disk with this serial, waiting up to 10 s for the driver to find it.</summary>
    private static string? WaitForDisk(string serial)
    {
        long deadline = Environment.TickCount64 + 10_000;
        while (Environment.TickCount64 < deadline)
        {
            if (Directory.Exists("/sys/class/block"))
            {
                foreach (var dir in Directory.EnumerateDirectories("/sys/class/block"))
                {
                    var text = Libc.ReadSmallText(Path.Combine(dir, "serial"));
                    var node = "/dev/" + Path.GetFileName(dir);
                    if (text?.Trim() == serial && File.Exists(node))
                        return node;
                }
            }
            Thread.Sleep(5);
        }
        return null;
    }

    private static bool Mount(string source, string target, string? type, nuint flags, string? data)
    {
        fixed (byte* s = Libc.Z(source))
        fixed (byte* t = Libc.Z(target))
        fixed (byte* f = type is null ? null : Libc.Z(type))
        fixed (byte* d = data is null ? null : Libc.Z(data))
        {
            if (Libc.mount(s, t, f, flags, d) == 0)
                return true;
        }
        return Fail($"mount {type ?? "(bind/move)"} {source} on {target}");
    }

    private static void MakeDirectory(string path, int mode)
    {
        fixed (byte* p = Libc.Z(path))
        {
            if (Libc.mkdir(p, mode) < 0 && Libc.Errno != Libc.EEXIST)
                AgentLog.Write($"mkdir {path} failed (errno {Libc.Errno})");
        }
    }

    private static void Chmod(string path, int mode)
    {
        fixed (byte* p = Libc.Z(path))
            Libc.chmod(p, mode);
    }

    private static bool Fail(string what)
    {
        AgentLog.Write($"vm init: {what} failed (errno {Libc.Errno})");
        return false;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Max;
    }

    [DllImport("libc", SetLastError = true)] private static extern int chdir(byte* path);
    [DllImport("libc", SetLastError = true)] private static extern int chroot(byte* path);
    [DllImport("libc", SetLastError = true)] private static extern int sethostname(byte* name, nuint length);
    [DllImport("libc", SetLastError = true)] private static extern int setrlimit(int resource, RLimit* limit);
    [DllImport("libc", SetLastError = true)] private static extern int reboot(uint howto);
    [DllImport("libc")] private static extern void sync();
}
