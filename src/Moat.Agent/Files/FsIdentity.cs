using Moat.Agent.Interop;
using Moat.Agent.Users;

namespace Moat.Agent.Files;

/// <summary>
/// Makes the calling thread act on the file system as a user, for the few system calls that
/// resolve paths (open, mkdir, rename, unlink...). Per-thread (setfsuid/setfsgid, or raw
/// setresuid/setresgid where setfsuid is missing, and the raw setgroups syscall), so other
/// threads of the agent keep root; synchronous by construction —
/// an await inside a scope could resume on another thread with the wrong identity.
/// </summary>
internal readonly unsafe struct FsIdentity : IDisposable
{
    private static readonly uint[] RootGroups = ReadOwnGroups();
    private readonly int _mode; // 0: nothing switched; else the shim's mode (fsuid or euid)

    private FsIdentity(int mode, int error)
    {
        _mode = mode;
        Error = error;
    }

    /// <summary>0, or the errno that prevented the switch (the operation must then be refused).</summary>
    public int Error { get; }

    public static FsIdentity Enter(UserIdentity user)
    {
        uint euid = Libc.geteuid();
        if (euid != 0)
            return new FsIdentity(0, user.Uid == euid ? 0 : Libc.EPERM); // unprivileged agent: only itself
        if (user.Uid == 0 && user.Gid == 0)
            return new FsIdentity(0, 0);
        int r;
        fixed (uint* g = user.Groups)
            r = Native.moat_fs_enter(user.Uid, user.Gid, g, user.Groups.Length);
        return r < 0 ? new FsIdentity(0, -r) : new FsIdentity(r, 0);
    }

    public void Dispose()
    {
        if (_mode == 0)
            return;
        fixed (uint* g = RootGroups)
            Native.moat_fs_exit(_mode, 0, 0, g, RootGroups.Length);
    }

    private static uint[] ReadOwnGroups()
    {
        int n = Libc.getgroups(0, null);
        if (n <= 0)
            return [];
        var groups = new uint[n];
        fixed (uint* g = groups)
            n = Libc.getgroups(n, g);
        return n < 0 ? [] : groups[..n];
    }
}
