using System.Runtime.InteropServices;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Init;

/// <summary>
/// --init-mounts: what a container runtime would have mounted, done by the agent itself when it
/// is the first process of a VM guest. Already-mounted targets are left alone.
/// </summary>
internal static unsafe class InitMounts
{
    private const nuint MS_NOSUID = 2, MS_NODEV = 4, MS_NOEXEC = 8, MS_RELATIME = 1 << 21;

    /// <summary>Mounts what is missing; <paramref name="minimalDev"/> makes /dev a tmpfs with the usual nodes only (never the kernel's devtmpfs).</summary>
    public static void Run(bool minimalDev = false)
    {
        Mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, null);
        Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, null);
        if (minimalDev)
        {
            if (Mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k"))
                MakeDeviceNodes();
        }
        else if (!Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") && Mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=0755"))
            MakeDeviceNodes();
        // What udev or a container runtime would add; bash process substitution needs /dev/fd.
        Link("/proc/self/fd", "/dev/fd");
        Link("/proc/self/fd/0", "/dev/stdin");
        Link("/proc/self/fd/1", "/dev/stdout");
        Link("/proc/self/fd/2", "/dev/stderr");
        Mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
        Mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
        Mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_RELATIME, "mode=1777");
        Mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    }

    private static bool Mount(string source, string target, string type, nuint flags, string? data)
    {
        if (IsMountPoint(target))
            return true;
        fixed (byte* t = Libc.Z(target))
        {
            Libc.mkdir(t, 0x1ED /* 0755 */);
            fixed (byte* s = Libc.Z(source))
            fixed (byte* f = Libc.Z(type))
            fixed (byte* d = data is null ? null : Libc.Z(data))
            {
                if (Libc.mount(s, t, f, flags, d) == 0)
                    return true;
            }
        }
        AgentLog.Write($"mount {type} on {target} failed (errno {Libc.Errno})");
        return false;
    }

    // A tmpfs /dev (no devtmpfs in the guest kernel): the nodes every program expects.
    private static void MakeDeviceNodes()
    {
        foreach (var (name, major, minor) in new[] { ("null", 1u, 3u), ("zero", 1u, 5u), ("full", 1u, 7u), ("random", 1u, 8u), ("urandom", 1u, 9u), ("tty", 5u, 0u), ("ptmx", 5u, 2u) })
        {
            ulong dev = ((ulong)(major & 0xfff) << 8) | (minor & 0xff) | ((ulong)(minor & ~0xffu) << 12);
            fixed (byte* p = Libc.Z("/dev/" + name))
            {
                if (mknod(p, 0x2000 /* S_IFCHR */ | 0x1B6 /* 0666 */, dev) < 0 && Libc.Errno != Libc.EEXIST)
                    AgentLog.Write($"mknod /dev/{name} failed (errno {Libc.Errno})");
                Libc.chmod(p, 0x1B6);
            }
        }
    }

    private static void Link(string target, string path)
    {
        fixed (byte* t = Libc.Z(target))
        fixed (byte* l = Libc.Z(path))
            symlink(t, l); // EEXIST is fine
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int mknod(byte* path, int mode, ulong dev);

    [DllImport("libc", SetLastError = true)]
    private static extern int symlink(byte* target, byte* path);

    private static bool IsMountPoint(string path)
    {
        var mounts = Libc.ReadSmallText("/proc/self/mounts");
        if (mounts is null)
            return false;
        foreach (var line in mounts.Split('\n'))
        {
            var f = line.Split(' ');
            if (f.Length > 1 && f[1] == path)
                return true;
        }
        return false;
    }
}
