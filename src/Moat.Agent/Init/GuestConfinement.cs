using System.Runtime.InteropServices;
using System.Text;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Init;

/// <summary>
/// What confines user commands inside a VM guest, where no container runtime does it: a cgroup v2
/// with the sandbox's memory and pids limits, which every command joins before it can fork, and
/// Moat's seccomp profile (compiled to BPF by the host), installed right before execve. In the
/// container tiers neither is set: the runtime confines the whole sandbox from outside.
/// </summary>
internal static unsafe class GuestConfinement
{
    /// <summary>The commands' cgroup, below the cgroup2 root.</summary>
    public const string CgroupName = "sandbox";

    private static int _cgroupDir = -1;

    /// <summary>Open (write) cgroup.procs of the commands' cgroup; -1 outside a VM guest.</summary>
    public static int CgroupProcsFd { get; private set; } = -1;

    /// <summary>The seccomp program the spawn shim installs (native memory, never freed), or null.</summary>
    public static void* SeccompFilter { get; private set; }

    /// <summary>Instructions in <see cref="SeccompFilter"/>.</summary>
    public static int SeccompLength { get; private set; }

    /// <summary>Whether the agent confines commands itself (VM guest).</summary>
    public static bool Active => CgroupProcsFd >= 0;

    /// <summary>
    /// Creates the commands' cgroup under the cgroup2 hierarchy mounted at <paramref name="mountPoint"/>
    /// (a mount the sandbox cannot reach) and keeps handles on it. The agent itself stays in the root.
    /// </summary>
    public static bool SetUpCgroup(string mountPoint, long memoryBytes, long pids)
    {
        if (!Write($"{mountPoint}/cgroup.subtree_control", "+memory +pids"))
            return false;
        string dir = $"{mountPoint}/{CgroupName}";
        fixed (byte* p = Libc.Z(dir))
        {
            if (Libc.mkdir(p, 0x1ED) < 0 && Libc.Errno != Libc.EEXIST)
            {
                AgentLog.Write($"mkdir {dir} failed (errno {Libc.Errno})");
                return false;
            }
        }
        // No swap in the guest; memory.swap.max is absent without CONFIG_SWAP, which is fine.
        if (!Write($"{dir}/memory.max", memoryBytes.ToString(System.Globalization.CultureInfo.InvariantCulture))
            || !Write($"{dir}/pids.max", pids.ToString(System.Globalization.CultureInfo.InvariantCulture)))
            return false;
        Write($"{dir}/memory.swap.max", "0", quiet: true);
        fixed (byte* p = Libc.Z(dir))
            _cgroupDir = Libc.open(p, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        fixed (byte* p = Libc.Z($"{dir}/cgroup.procs"))
            CgroupProcsFd = Libc.open(p, Libc.O_WRONLY | Libc.O_CLOEXEC, 0);
        if (_cgroupDir < 0 || CgroupProcsFd < 0)
        {
            AgentLog.Write($"cannot open the commands' cgroup (errno {Libc.Errno})");
            return false;
        }
        return true;
    }

    /// <summary>Loads the BPF program the host put into the initramfs (struct sock_filter[], 8 bytes each).</summary>
    public static bool LoadSeccomp(string path)
    {
        var bytes = Libc.ReadSmallFile(path, 256 << 10);
        if (bytes is null || bytes.Length == 0 || bytes.Length % 8 != 0 || bytes.Length / 8 > 4096)
        {
            AgentLog.Write($"no usable seccomp program at {path}");
            return false;
        }
        void* filter = NativeMemory.Alloc((nuint)bytes.Length);
        bytes.AsSpan().CopyTo(new Span<byte>(filter, bytes.Length));
        SeccompFilter = filter;
        SeccompLength = bytes.Length / 8;
        return true;
    }

    /// <summary>How many times the commands' memory limit made the guest kernel kill a process (0 outside a VM).</summary>
    public static long OomKills() => ReadKey("memory.events", "oom_kill");

    /// <summary>Memory the commands' cgroup uses now, in bytes (0 outside a VM).</summary>
    public static ulong MemoryCurrent() => ReadNumber("memory.current");

    /// <summary>Highest memory use of the commands' cgroup, in bytes (0 outside a VM, or on a kernel without memory.peak).</summary>
    public static ulong MemoryPeak() => ReadNumber("memory.peak");

    /// <summary>Tasks in the commands' cgroup now (0 outside a VM).</summary>
    public static ulong Pids() => ReadNumber("pids.current");

    /// <summary>How many forks the commands' pids limit refused (0 outside a VM).</summary>
    public static long PidsLimitHits() => ReadKey("pids.events", "max");

    /// <summary>The commands' memory limit in bytes, or 0 when there is none (outside a VM).</summary>
    public static ulong MemoryLimit()
    {
        var text = ReadFile("memory.max")?.Trim();
        return text is not null && ulong.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out ulong v) ? v : 0;
    }

    private static ulong ReadNumber(string file)
    {
        var text = ReadFile(file)?.Trim();
        return text is not null && ulong.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out ulong v) ? v : 0;
    }

    private static long ReadKey(string file, string key)
    {
        var text = ReadFile(file);
        if (text is null)
            return 0;
        foreach (var line in text.Split('\n'))
        {
            var parts = line.Split(' ');
            if (parts.Length == 2 && parts[0] == key && long.TryParse(parts[1], out long v))
                return v;
        }
        return 0;
    }

    private static string? ReadFile(string name)
    {
        if (_cgroupDir < 0)
            return null;
        int fd;
        fixed (byte* p = Libc.Z(name))
            fd = Libc.openat(_cgroupDir, p, Libc.O_RDONLY | Libc.O_CLOEXEC, 0);
        if (fd < 0)
            return null;
        try
        {
            byte* buffer = stackalloc byte[512];
            nint n = Libc.read(fd, buffer, 512);
            return n > 0 ? Encoding.ASCII.GetString(buffer, (int)n) : null;
        }
        finally
        {
            Libc.close(fd);
        }
    }

    private static bool Write(string path, string value, bool quiet = false)
    {
        int fd;
        fixed (byte* p = Libc.Z(path))
            fd = Libc.open(p, Libc.O_WRONLY | Libc.O_CLOEXEC, 0);
        int error = fd < 0 ? Libc.Errno : Libc.WriteAll(fd, Encoding.ASCII.GetBytes(value));
        if (fd >= 0)
            Libc.close(fd);
        if (error != 0 && !quiet)
            AgentLog.Write($"write '{value}' to {path} failed (errno {error})");
        return error == 0;
    }
}
