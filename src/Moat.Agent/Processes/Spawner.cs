using System.Runtime.InteropServices;
using System.Text;
using Moat.Agent.Init;
using Moat.Agent.Interop;
using Moat.Agent.Users;

namespace Moat.Agent.Processes;

/// <summary>What a spawn needs besides the program: where its stdio goes and who it runs as.</summary>
internal readonly record struct SpawnPlan(string Path, IReadOnlyList<string> Argv, IReadOnlyList<string> Env, string Cwd,
    int StdinFd, int StdoutFd, int StderrFd, bool Terminal, UserIdentity User);

/// <summary>
/// Starts processes through the native shim. The strings the child needs are copied to native
/// memory first, because between fork and exec the child may not allocate or touch the GC heap.
/// </summary>
internal sealed unsafe class Spawner(ProcessTable table)
{
    /// <summary>Highest capability number of this kernel.</summary>
    public static readonly int LastCap = ReadLastCap();

    /// <summary>Whether the agent can switch users and drop capabilities (it runs as root).</summary>
    public static bool Privileged { get; } = Libc.geteuid() == 0;

    /// <summary>Starts the process; on success the entry holds its pid and is in the table.</summary>
    public bool TrySpawn(ProcessEntry entry, SpawnPlan plan, out SpawnStage stage, out int errno)
    {
        var strings = new List<nint>();
        try
        {
            byte* path = Utf8(plan.Path, strings);
            byte** argv = Array(plan.Argv, strings);
            byte** envp = Array(plan.Env, strings);
            byte* cwd = Utf8(plan.Cwd, strings);
            uint[] groups = plan.User.Groups;
            fixed (uint* g = groups)
            {
                var request = new MoatSpawnRequest
                {
                    Path = path, Argv = argv, Envp = envp, Cwd = cwd,
                    StdinFd = plan.StdinFd, StdoutFd = plan.StdoutFd, StderrFd = plan.StderrFd,
                    Pty = plan.Terminal ? 1 : 0,
                    Uid = plan.User.Uid, Gid = plan.User.Gid, Groups = g, GroupCount = groups.Length,
                    LastCap = LastCap, Privileged = Privileged ? 1 : 0,
                    CgroupFd = GuestConfinement.CgroupProcsFd,
                    SeccompLength = GuestConfinement.SeccompLength,
                    SeccompFilter = GuestConfinement.SeccompFilter,
                };
                int errfd = -1, st = 0, er = 0;
                entry.StartTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
                int pid = -1;
                lock (table.SpawnGate)
                {
                    if (Native.moat_spawn(&request, &pid, &errfd, &st, &er) == 0)
                        table.RecordLocked(entry, pid);
                    else
                        pid = -1;
                }
                if (pid > 0)
                    table.NotifySpawned();
                if (pid <= 0)
                {
                    stage = (SpawnStage)st;
                    errno = er;
                    return false;
                }
                if (Native.moat_spawn_wait(errfd, &st, &er) != 0)
                {
                    entry.Failed = true;
                    table.Forget(entry);
                    stage = (SpawnStage)st;
                    errno = er;
                    return false;
                }
                stage = SpawnStage.None;
                errno = 0;
                return true;
            }
        }
        finally
        {
            foreach (var p in strings)
                NativeMemory.Free((void*)p);
        }
    }

    private static byte* Utf8(string s, List<nint> owned)
    {
        int n = Encoding.UTF8.GetByteCount(s);
        byte* p = (byte*)NativeMemory.Alloc((nuint)n + 1);
        owned.Add((nint)p);
        fixed (char* c = s)
            Encoding.UTF8.GetBytes(c, s.Length, p, n);
        p[n] = 0;
        return p;
    }

    private static byte** Array(IReadOnlyList<string> items, List<nint> owned)
    {
        byte** a = (byte**)NativeMemory.Alloc((nuint)(items.Count + 1), (nuint)sizeof(nint));
        owned.Add((nint)a);
        for (int i = 0; i < items.Count; i++)
            a[i] = Utf8(items[i], owned);
        a[items.Count] = null;
        return a;
    }

    private static int ReadLastCap()
    {
        var text = Libc.ReadSmallText("/proc/sys/kernel/cap_last_cap");
        // Unknown: try every number up to 63; the shim stops at the first EINVAL.
        return text is not null && int.TryParse(text.Trim(), out int n) && n is > 0 and < 64 ? n : 63;
    }
}
