using System.Globalization;
using Moat.Agent.Interop;
using Moat.Agent.Processes;
using UsageMessage = Moat.Protocol.Messages.Usage;

namespace Moat.Agent.Usage;

/// <summary>
/// The sandbox's resource use as the agent sees it. The host trusts its own cgroup readings
/// over these; they exist for tiers where the host cannot look inside (a microVM).
/// </summary>
/// <param name="table">The agent's running commands.</param>
/// <param name="ownKernel">Whether /proc/meminfo describes the sandbox itself (a VM guest) rather than the host.</param>
internal sealed unsafe class UsageCollector(ProcessTable table, bool ownKernel)
{
    private const int _SC_CLK_TCK = 2;
    private readonly long _startedTick = Environment.TickCount64;

    public UsageMessage Collect()
    {
        var all = ProcessTree.Snapshot();
        var mine = Libc.getpid() == 1 ? all : Descendants(all, Libc.getpid());
        long ticksPerSecond = Math.Max(1, Libc.sysconf(_SC_CLK_TCK));
        ulong ticks = 0;
        long rssPages = 0;
        foreach (var p in mine)
        {
            // The agent's own cutime/cstime are its reaped children, counted below from getrusage.
            ticks += p.Utime + p.Stime + (p.Pid == Libc.getpid() ? 0 : p.ChildrenTime);
            rssPages += Math.Max(0, p.RssPages);
        }
        var usage = new UsageMessage
        {
            CpuUsec = ticks * 1_000_000UL / (ulong)ticksPerSecond + (ulong)Math.Max(0, Native.moat_reaped_children_cpu_usec()),
            Processes = (uint)mine.Count,
            TrackedProcesses = (uint)table.Count,
            UptimeMs = (ulong)(Environment.TickCount64 - _startedTick),
            Load1 = LoadAverage(),
        };

        var meminfo = ownKernel ? MemInfo() : null;
        if (meminfo is { } m && m.Total > 0)
        {
            usage.MemoryBytes = m.Total - Math.Min(m.Total, m.Available);
            usage.MemoryLimitBytes = m.Total;
        }
        else
        {
            usage.MemoryBytes = (ulong)rssPages * (ulong)Environment.SystemPageSize;
        }
        ulong limit = CgroupMemoryLimit();
        if (limit > 0)
            usage.MemoryLimitBytes = limit;
        if (Init.GuestConfinement.Active)
        {
            // A VM guest: the commands' cgroup is the sandbox, as the host's cgroup is elsewhere
            // (the guest kernel and the agent live outside it, in the guest RAM Moat adds on top).
            usage.MemoryBytes = Init.GuestConfinement.MemoryCurrent();
            usage.GuestMemoryPeakBytes = Init.GuestConfinement.MemoryPeak();
            usage.GuestOomKills = (ulong)Math.Max(0, Init.GuestConfinement.OomKills());
            usage.GuestPids = Init.GuestConfinement.Pids();
            usage.GuestPidsLimitHits = (ulong)Math.Max(0, Init.GuestConfinement.PidsLimitHits());
        }

        MoatStatfs fs;
        int r;
        fixed (byte* p = "/\0"u8)
            r = Native.moat_statfs(p, &fs);
        if (r == 0)
        {
            usage.DiskTotalBytes = fs.Blocks * fs.BlockSize;
            usage.DiskUsedBytes = (fs.Blocks - Math.Min(fs.Blocks, fs.BlocksFree)) * fs.BlockSize;
            usage.InodesTotal = fs.Files;
            usage.InodesUsed = fs.Files - Math.Min(fs.Files, fs.FilesFree);
        }
        return usage;
    }

    private static List<ProcStat> Descendants(List<ProcStat> all, int root)
    {
        var children = new Dictionary<int, List<ProcStat>>();
        ProcStat? self = null;
        foreach (var p in all)
        {
            if (p.Pid == root)
                self = p;
            if (!children.TryGetValue(p.Ppid, out var list))
                children[p.Ppid] = list = [];
            list.Add(p);
        }
        var result = new List<ProcStat>();
        if (self is { } s)
            result.Add(s);
        var queue = new Queue<int>();
        queue.Enqueue(root);
        var seen = new HashSet<int> { root };
        while (queue.TryDequeue(out int pid))
        {
            if (!children.TryGetValue(pid, out var kids))
                continue;
            foreach (var k in kids)
            {
                if (seen.Add(k.Pid))
                {
                    result.Add(k);
                    queue.Enqueue(k.Pid);
                }
            }
        }
        return result;
    }

    private static uint LoadAverage()
    {
        var text = Libc.ReadSmallText("/proc/loadavg");
        if (text is null)
            return 0;
        int space = text.IndexOf(' ');
        return space > 0 && double.TryParse(text.AsSpan(0, space), NumberStyles.Float, CultureInfo.InvariantCulture, out double load)
            ? (uint)Math.Round(load * 100)
            : 0;
    }

    private static (ulong Total, ulong Available)? MemInfo()
    {
        var text = Libc.ReadSmallText("/proc/meminfo");
        if (text is null)
            return null;
        ulong total = 0, available = 0;
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith("MemTotal:", StringComparison.Ordinal))
                total = KiB(line);
            else if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                available = KiB(line);
        }
        return (total, available);
    }

    private static ulong KiB(string line)
    {
        var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return parts.Length >= 2 && ulong.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out ulong v) ? v * 1024 : 0;
    }

    private static ulong CgroupMemoryLimit()
    {
        if (Init.GuestConfinement.Active)
            return Init.GuestConfinement.MemoryLimit();
        foreach (var path in new[] { "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes" })
        {
            var text = Libc.ReadSmallText(path)?.Trim();
            if (text is not null && ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out ulong v) && v < (1UL << 60))
                return v;
        }
        return 0;
    }
}
