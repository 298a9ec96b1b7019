using System.Text;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Users;

/// <summary>
/// Start-up preparation of the sandbox's accounts: user code runs as <c>user</c> (uid 1000,
/// home /home/user) whatever the image ships. Nothing here is fatal — the rootfs may be read-only
/// and the command then simply runs with what there is.
/// </summary>
internal static unsafe class SandboxAccountSetup
{
    public static void Run(UserDatabase users)
    {
        Try("etc", () => MakeDirectory(Path.GetDirectoryName(users.PasswdPath) ?? "/etc", 0x1ED /* 0755 */, 0, 0));
        Try("passwd", () => EnsurePasswd(users));
        Try("group", () => EnsureGroup(users));
        Try("home", EnsureHome);
        Try("tmp", EnsureTmp);
    }

    private static void EnsurePasswd(UserDatabase users)
    {
        var files = users.Files;
        if (files.ByName(UserDatabase.DefaultUserName) is not null || files.ByUid(UserDatabase.DefaultUid) is not null)
            return;
        string line = $"{UserDatabase.DefaultUserName}:x:{UserDatabase.DefaultUid}:{UserDatabase.DefaultUid}::{UserDatabase.DefaultHome}:{UserDatabase.DefaultShell()}\n";
        if (!File.Exists(users.PasswdPath))
            line = "root:x:0:0:root:/root:" + UserDatabase.DefaultShell() + "\n" + line;
        Append(users.PasswdPath, line);
    }

    private static void EnsureGroup(UserDatabase users)
    {
        var files = users.Files;
        if (files.HasGroup(UserDatabase.DefaultUserName) || files.GroupByGid(UserDatabase.DefaultUid) is not null)
            return;
        string line = $"{UserDatabase.DefaultUserName}:x:{UserDatabase.DefaultUid}:\n";
        if (!File.Exists(users.GroupPath))
            line = "root:x:0:\n" + line;
        Append(users.GroupPath, line);
    }

    private static void EnsureHome()
    {
        if (Directory.Exists(UserDatabase.DefaultHome))
            return;
        MakeDirectory("/home", 0x1ED /* 0755 */, 0, 0);
        MakeDirectory(UserDatabase.DefaultHome, 0x1ED /* 0755 */, UserDatabase.DefaultUid, UserDatabase.DefaultUid);
    }

    private static void EnsureTmp()
    {
        MakeDirectory("/tmp", 0x3FF /* 01777 */, 0, 0);
        fixed (byte* p = Libc.Z("/tmp"))
        {
            if (Libc.chmod(p, 0x3FF /* 01777 */) < 0)
                throw new IOException($"chmod /tmp failed (errno {Libc.Errno})");
        }
    }

    private static void MakeDirectory(string path, int mode, uint uid, uint gid)
    {
        fixed (byte* p = Libc.Z(path))
        {
            if (Libc.mkdir(p, mode) < 0)
            {
                if (Libc.Errno == Libc.EEXIST)
                    return;
                throw new IOException($"mkdir {path} failed (errno {Libc.Errno})");
            }
            Libc.chown(p, uid, gid);
            Libc.chmod(p, mode); // exact mode, whatever the umask
        }
    }

    private static void Append(string path, string line)
    {
        var existing = Libc.ReadSmallFile(path);
        if (existing is { Length: > 0 } && existing[^1] != (byte)'\n')
            line = "\n" + line;
        int fd;
        fixed (byte* p = Libc.Z(path))
            fd = Libc.open(p, Libc.O_WRONLY | Libc.O_APPEND | Libc.O_CREAT | Libc.O_CLOEXEC | Libc.O_NOFOLLOW, 0x1A4 /* 0644 */);
        if (fd < 0)
            throw new IOException($"{path} is not writable (errno {Libc.Errno})");
        try
        {
            int e = Libc.WriteAll(fd, Encoding.UTF8.GetBytes(line));
            if (e != 0)
                throw new IOException($"writing {path} failed (errno {e})");
        }
        finally
        {
            Libc.close(fd);
        }
        AgentLog.Info($"added the sandbox user to {path}");
    }

    private static void Try(string what, Action action)
    {
        try
        {
            action();
        }
        catch (Exception ex)
        {
            AgentLog.Write($"account set-up ({what}): {ex.Message}");
        }
    }
}
