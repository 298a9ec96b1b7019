namespace Moat.Runtimes.Cgroups;

/// <summary>Host-side readings of one cgroup: what the sandbox used, measured where it cannot lie.</summary>
public interface ICgroup
{
    /// <summary>The cgroup path relative to the hierarchy root (e.g. /moat/sb123).</summary>
    string Path { get; }
    /// <summary>CPU time of every process in it.</summary>
    TimeSpan CpuTime();
    /// <summary>Memory now, peak and limit, in bytes.</summary>
    (long Current, long Peak, long Limit) Memory();
    /// <summary>How many processes the memory limit killed.</summary>
    long OomKills();
    /// <summary>Tasks in it now.</summary>
    long Pids();
    /// <summary>Forks refused because the pids limit was reached.</summary>
    long PidsLimitHits();
    /// <summary>Whether the cgroup exists in any hierarchy.</summary>
    bool Exists();
    /// <summary>Pids of the processes in it.</summary>
    IReadOnlyList<int> Processes();
    /// <summary>Creates the cgroup (for runtimes that do not create their own) and applies limits.</summary>
    void Create(long memoryBytes, double cpus, long pids);
    /// <summary>Moves a process in.</summary>
    void Add(int pid);
    /// <summary>Removes the cgroup (it must be empty). Idempotent.</summary>
    void Remove();
}

/// <summary>Picks the cgroup implementation of this host: v2 when the unified hierarchy has the controllers, else v1.</summary>
public static class CgroupHierarchy
{
    private static readonly Lazy<bool> Unified = new(() =>
        File.Exists("/sys/fs/cgroup/cgroup.controllers") && File.ReadAllText("/sys/fs/cgroup/cgroup.controllers").Contains("memory", StringComparison.Ordinal));

    /// <summary>Whether this host runs cgroup v2 only.</summary>
    public static bool IsUnified => Unified.Value;

    /// <summary>The cgroup at <paramref name="path"/> (relative to the hierarchy root).</summary>
    public static ICgroup At(string path) => IsUnified ? new CgroupV2(path) : new CgroupV1(path);

    internal static long ReadLong(string file, long fallback = 0)
    {
        try
        {
            var text = File.ReadAllText(file).Trim();
            return text == "max" ? long.MaxValue : long.TryParse(text, out var v) ? v : fallback;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return fallback;
        }
    }

    internal static long ReadKey(string file, string key)
    {
        try
        {
            foreach (var line in File.ReadLines(file))
            {
                var parts = line.Split(' ', 2);
                if (parts.Length == 2 && parts[0] == key && long.TryParse(parts[1], out var v))
                    return v;
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
        return 0;
    }

    internal static IReadOnlyList<int> ReadPids(string file)
    {
        try
        {
            return File.ReadAllLines(file).Select(l => int.TryParse(l, out var p) ? p : 0).Where(p => p > 0).ToList();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }

    internal static void RemoveDirectory(string dir)
    {
        try
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir); // rmdir: cgroupfs refuses recursive deletes of control files
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}

/// <summary>cgroup v1: one directory per controller.</summary>
internal sealed class CgroupV1(string path) : ICgroup
{
    private static readonly string[] Controllers = ["cpu", "cpuacct", "memory", "pids", "freezer", "devices", "blkio", "cpuset"];

    public string Path { get; } = path;

    private string Dir(string controller) => $"/sys/fs/cgroup/{controller}{Path}";

    public TimeSpan CpuTime() => TimeSpan.FromTicks(CgroupHierarchy.ReadLong(Dir("cpuacct") + "/cpuacct.usage") / 100);

    public (long Current, long Peak, long Limit) Memory() => (
        CgroupHierarchy.ReadLong(Dir("memory") + "/memory.usage_in_bytes"),
        CgroupHierarchy.ReadLong(Dir("memory") + "/memory.max_usage_in_bytes"),
        CgroupHierarchy.ReadLong(Dir("memory") + "/memory.limit_in_bytes"));

    public long OomKills() => CgroupHierarchy.ReadKey(Dir("memory") + "/memory.oom_control", "oom_kill");

    public long Pids() => CgroupHierarchy.ReadLong(Dir("pids") + "/pids.current");

    public long PidsLimitHits() => CgroupHierarchy.ReadKey(Dir("pids") + "/pids.events", "max");

    public bool Exists() => Controllers.Any(c => Directory.Exists(Dir(c)));

    public IReadOnlyList<int> Processes() => CgroupHierarchy.ReadPids(Dir("pids") + "/cgroup.procs");

    public void Create(long memoryBytes, double cpus, long pids)
    {
        foreach (var c in new[] { "cpu", "cpuacct", "memory", "pids", "freezer" })
            Directory.CreateDirectory(Dir(c));
        File.WriteAllText(Dir("memory") + "/memory.limit_in_bytes", memoryBytes.ToString());
        File.WriteAllText(Dir("cpu") + "/cpu.cfs_period_us", "100000");
        File.WriteAllText(Dir("cpu") + "/cpu.cfs_quota_us", ((long)Math.Ceiling(cpus * 100000)).ToString());
        File.WriteAllText(Dir("pids") + "/pids.max", pids.ToString());
    }

    public void Add(int pid)
    {
        foreach (var c in new[] { "cpu", "cpuacct", "memory", "pids", "freezer" })
        {
            if (Directory.Exists(Dir(c)))
                File.WriteAllText(Dir(c) + "/cgroup.procs", pid.ToString());
        }
    }

    public void Remove()
    {
        foreach (var c in Controllers)
            CgroupHierarchy.RemoveDirectory(Dir(c));
        CgroupHierarchy.RemoveDirectory($"/sys/fs/cgroup/systemd{Path}");
        CgroupHierarchy.RemoveDirectory($"/sys/fs/cgroup/unified{Path}");
    }
}

/// <summary>cgroup v2: one unified directory.</summary>
internal sealed class CgroupV2(string path) : ICgroup
{
    public string Path { get; } = path;

    private string Dir => $"/sys/fs/cgroup{Path}";

    public TimeSpan CpuTime() => TimeSpan.FromTicks(CgroupHierarchy.ReadKey(Dir + "/cpu.stat", "usage_usec") * 10);

    public (long Current, long Peak, long Limit) Memory() => (
        CgroupHierarchy.ReadLong(Dir + "/memory.current"),
        CgroupHierarchy.ReadLong(Dir + "/memory.peak"),
        CgroupHierarchy.ReadLong(Dir + "/memory.max"));

    public long OomKills() => CgroupHierarchy.ReadKey(Dir + "/memory.events", "oom_kill");

    public long Pids() => CgroupHierarchy.ReadLong(Dir + "/pids.current");

    public long PidsLimitHits() => CgroupHierarchy.ReadKey(Dir + "/pids.events", "max");

    public bool Exists() => Directory.Exists(Dir);

    public IReadOnlyList<int> Processes() => CgroupHierarchy.ReadPids(Dir + "/cgroup.procs");

    public void Create(long memoryBytes, double cpus, long pids)
    {
        Directory.CreateDirectory(Dir);
        File.WriteAllText(Dir + "/memory.max", memoryBytes.ToString());
        File.WriteAllText(Dir + "/cpu.max", $"{(long)Math.Ceiling(cpus * 100000)} 100000");
        File.WriteAllText(Dir + "/pids.max", pids.ToString());
    }

    public void Add(int pid) => File.WriteAllText(Dir + "/cgroup.procs", pid.ToString());

    public void Remove() => CgroupHierarchy.RemoveDirectory(Dir);
}
