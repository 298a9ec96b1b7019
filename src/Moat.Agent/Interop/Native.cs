using System.Runtime.InteropServices;

namespace Moat.Agent.Interop;

/// <summary>Where in the child's set-up a spawn failed (matches the STAGE_ values in Native/spawn.c).</summary>
internal enum SpawnStage
{
    None = 0, Fork = 1, Setsid = 2, ControllingTerminal = 3, Dup = 4, CapabilityBoundingSet = 5,
    SetGroups = 6, SetGid = 7, SetUid = 8, CapSet = 9, NoNewPrivs = 10, Chdir = 11, Exec = 12, Pipe = 13,
    Cgroup = 14, Seccomp = 15,
}

/// <summary>Mirror of <c>struct moat_spawn_request</c> in Native/spawn.c.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct MoatSpawnRequest
{
    public byte* Path;
    public byte** Argv;
    public byte** Envp;
    public byte* Cwd;
    public int StdinFd;
    public int StdoutFd;
    public int StderrFd;
    public int Pty;
    public uint Uid;
    public uint Gid;
    public uint* Groups;
    public int GroupCount;
    public int LastCap;
    public int Privileged;
    /// <summary>VM guest: cgroup.procs of the commands' cgroup, or -1.</summary>
    public int CgroupFd;
    /// <summary>VM guest: instructions in <see cref="SeccompFilter"/>, or 0.</summary>
    public int SeccompLength;
    /// <summary>VM guest: the seccomp BPF program (struct sock_filter[]), or null.</summary>
    public void* SeccompFilter;
}

/// <summary>Mirror of <c>struct moat_stat</c> in Native/sys.c.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct MoatStat
{
    public ulong Dev;
    public ulong Ino;
    public ulong Size;
    public long MtimeSec;
    public long MtimeNsec;
    public uint Mode;
    public uint Uid;
    public uint Gid;
    public uint Nlink;

    public const uint S_IFMT = 0xF000, S_IFSOCK = 0xC000, S_IFLNK = 0xA000, S_IFREG = 0x8000, S_IFBLK = 0x6000;
    public const uint S_IFDIR = 0x4000, S_IFCHR = 0x2000, S_IFIFO = 0x1000;

    public readonly uint Kind => Mode & S_IFMT;
    public readonly bool IsRegular => Kind == S_IFREG;
    public readonly bool IsDirectory => Kind == S_IFDIR;
    public readonly bool IsSymlink => Kind == S_IFLNK;
    public readonly long MtimeUnixMs => MtimeSec * 1000 + MtimeNsec / 1_000_000;
}

/// <summary>Mirror of <c>struct moat_statfs</c> in Native/sys.c.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct MoatStatfs
{
    public ulong BlockSize;
    public ulong Blocks;
    public ulong BlocksFree;
    public ulong BlocksAvailable;
    public ulong Files;
    public ulong FilesFree;
}

/// <summary>The agent's native shim (Native/*.c, linked statically). Functions return -errno on failure.</summary>
internal static unsafe class Native
{
    private const string Lib = "moatnative";

    [DllImport(Lib)] public static extern int moat_spawn(MoatSpawnRequest* request, int* pid, int* errfd, int* stage, int* err);
    [DllImport(Lib)] public static extern int moat_spawn_wait(int errfd, int* stage, int* err);
    [DllImport(Lib)] public static extern int moat_drop_bounding_set(int lastCap);
    [DllImport(Lib)] public static extern int moat_openpty(int* master, int* slave, ushort cols, ushort rows, uint uid, uint gid);
    [DllImport(Lib)] public static extern int moat_set_winsize(int fd, ushort cols, ushort rows);
    [DllImport(Lib)] public static extern int moat_fs_enter(uint uid, uint gid, uint* groups, int count);
    [DllImport(Lib)] public static extern int moat_fs_exit(int mode, uint uid, uint gid, uint* groups, int count);

    [DllImport(Lib)] public static extern int moat_init_signals();
    [DllImport(Lib)] public static extern int moat_epoll_create();
    [DllImport(Lib)] public static extern int moat_epoll_ctl(int epfd, int op, int fd, uint events, ulong data);
    [DllImport(Lib)] public static extern int moat_epoll_wait(int epfd, ulong* data, uint* events, int max, int timeoutMs);
    [DllImport(Lib)] public static extern int moat_fstatat(int dirfd, byte* path, int flags, MoatStat* result);
    [DllImport(Lib)] public static extern int moat_fstat(int fd, MoatStat* result);
    [DllImport(Lib)] public static extern nint moat_fdopendir(int fd);
    [DllImport(Lib)] public static extern int moat_closedir(nint dir);
    [DllImport(Lib)] public static extern int moat_dirfd(nint dir);
    [DllImport(Lib)] public static extern int moat_readdir(nint dir, byte* name, int capacity, int* type);
    [DllImport(Lib)] public static extern int moat_statfs(byte* path, MoatStatfs* result);
    [DllImport(Lib)] public static extern long moat_reaped_children_cpu_usec();
    [DllImport(Lib)] public static extern int moat_kernel_release(byte* buffer, int capacity);
    [DllImport(Lib)] public static extern int moat_unix_listen(byte* path);
    [DllImport(Lib)] public static extern int moat_accept(int listenFd);
    [DllImport(Lib)] public static extern int moat_peer_pid(int fd);
    [DllImport(Lib)] public static extern int moat_make_raw_if_tty(int fd);
    [DllImport(Lib)] public static extern int moat_finit_module(int fd, byte* parameters, int flags);

    public const int EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2, EPOLL_CTL_MOD = 3;
    public const uint EPOLLIN = 0x1, EPOLLOUT = 0x4, EPOLLERR = 0x8, EPOLLHUP = 0x10, EPOLLRDHUP = 0x2000, EPOLLET = 0x80000000;
}
