using System.Globalization;
using Moat.Agent.Interop;

namespace Moat.Agent.Processes;

/// <summary>One /proc/[pid]/stat line, the fields the agent uses.</summary>
/// <remarks>
/// <see cref="ChildrenTime"/> is cutime + cstime: CPU of the children this process has waited for,
/// which would otherwise be lost from a sum over live processes until the process itself exits.
/// </remarks>
internal readonly record struct ProcStat(int Pid, int Ppid, int Pgrp, int Session, ulong Utime, ulong Stime, long RssPages, ulong ChildrenTime = 0);

/// <summary>
/// Process-tree walks over /proc: for killing a command with everything it started (even what
/// left its process group with setsid), and for usage figures.
/// </summary>
internal static class ProcessTree
{
    /// <summary>Every process visible in /proc.</summary>
    public static List<ProcStat> Snapshot()
    {
        var result = new List<ProcStat>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            var name = Path.GetFileName(dir.AsSpan());
            if (name.Length == 0 || !char.IsAsciiDigit(name[0]))
                continue;
            var text = Libc.ReadSmallText(dir + "/stat");
            if (text is not null && TryParse(text, out var stat))
                result.Add(stat);
        }
        return result;
    }

    /// <summary>Parses a stat line; the command name may hold spaces and parentheses, so fields start after the last ')'.</summary>
    public static bool TryParse(string line, out ProcStat stat)
    {
        stat = default;
        int open = line.IndexOf('(');
        int close = line.LastIndexOf(')');
        if (open <= 0 || close < open || close + 2 >= line.Length)
            return false;
        if (!int.TryParse(line.AsSpan(0, open).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
            return false;
        // Fields after ')': state(3) ppid(4) pgrp(5) session(6) tty(7) tpgid(8) flags(9) minflt(10)
        // cminflt(11) majflt(12) cmajflt(13) utime(14) stime(15) cutime(16) cstime(17) ... rss(24).
        var f = line[(close + 2)..].Split(' ');
        if (f.Length < 22)
            return false;
        static long L(string s) => long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v) ? v : 0;
        stat = new ProcStat(pid, (int)L(f[1]), (int)L(f[2]), (int)L(f[3]), (ulong)Math.Max(0, L(f[11])), (ulong)Math.Max(0, L(f[12])), L(f[21]),
            (ulong)Math.Max(0, L(f[13])) + (ulong)Math.Max(0, L(f[14])));
        return true;
    }

    /// <summary>
    /// The processes that belong to the command led by <paramref name="leader"/>: its
    /// descendants (by parent links), its process group and its session.
    /// </summary>
    public static HashSet<int> Members(int leader, List<ProcStat> all)
    {
        var children = new Dictionary<int, List<int>>();
        var members = new HashSet<int> { leader };
        var queue = new Queue<int>();
        queue.Enqueue(leader);
        foreach (var p in all)
        {
            if (!children.TryGetValue(p.Ppid, out var list))
                children[p.Ppid] = list = [];
            list.Add(p.Pid);
            if ((p.Pgrp == leader || p.Session == leader) && members.Add(p.Pid))
                queue.Enqueue(p.Pid);
        }
        // Descendants of every member, including the children of re-parented group members.
        while (queue.TryDequeue(out int pid))
        {
            if (!children.TryGetValue(pid, out var kids))
                continue;
            foreach (int kid in kids)
            {
                if (members.Add(kid))
                    queue.Enqueue(kid);
            }
        }
        members.Remove(Libc.getpid());
        members.Remove(1);
        members.Remove(0);
        return members;
    }

    /// <summary>
    /// SIGKILLs the command led by <paramref name="leader"/> and everything it started. Members
    /// are first stopped (a stopped process cannot fork) until a scan finds nobody new, so a
    /// fork loop cannot outrun the kill. What double-forked *and* called setsid before this
    /// runs has no link left to the command; only the sandbox's own end reaches it.
    /// </summary>
    public static void KillCommand(int leader)
    {
        Libc.kill(-leader, Libc.SIGSTOP);
        var frozen = new HashSet<int>();
        for (int round = 0; round < 8; round++)
        {
            var members = Members(leader, Snapshot());
            bool grew = false;
            foreach (int pid in members)
            {
                if (frozen.Add(pid))
                {
                    Libc.kill(pid, Libc.SIGSTOP);
                    grew = true;
                }
            }
            if (!grew)
                break;
        }
        Libc.kill(-leader, Libc.SIGKILL);
        foreach (int pid in frozen)
            Libc.kill(pid, Libc.SIGKILL);
    }
}
