using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Transport;

/// <summary>
/// <c>virtio:NAME</c>: the microVM tier's channel, a virtio-serial port that QEMU names NAME
/// (found under /sys/class/virtio-ports/*/name), or <c>virtio:/dev/PATH</c> for a device given
/// directly (a serial console, a pty in tests). The port is one pipe to one host: the next
/// "connection" is the same port reopened after the host went away, so a connection never
/// replaces a live one.
/// </summary>
internal sealed unsafe class VirtioSerialTransport(string portName) : IAgentTransport
{
    private const int O_PATH = 0x200000;
    private static int _pinned = -1;
    private volatile bool _disposed;

    /// <summary>
    /// VM guest: holds the port by an O_PATH handle, taken in the initramfs where its /dev node
    /// is. Every (re)open then goes through /proc/self/fd, so the port needs no node inside the
    /// sandbox's /dev, and code in the sandbox has nothing to open while the host is away.
    /// </summary>
    public static bool Pin(string name)
    {
        string? device = null;
        long deadline = Environment.TickCount64 + 10_000;
        while ((device = name.StartsWith('/') ? name : FindDevice(name)) is null || !File.Exists(device))
        {
            if (Environment.TickCount64 > deadline)
            {
                AgentLog.Write($"virtio-serial port '{name}' not found");
                return false;
            }
            Thread.Sleep(5);
        }
        fixed (byte* p = Libc.Z(device))
            _pinned = Libc.open(p, O_PATH | Libc.O_CLOEXEC, 0);
        if (_pinned < 0)
            AgentLog.Write($"cannot hold {device} (errno {Libc.Errno})");
        return _pinned >= 0;
    }

    public string Name => "virtio-serial";

    public bool ReplacesOnAccept => false;

    public AgentChannel? Accept()
    {
        bool reported = false;
        while (!_disposed)
        {
            string? device = _pinned >= 0 ? $"/proc/self/fd/{_pinned}" : portName.StartsWith('/') ? portName : FindDevice(portName);
            if (device is null)
            {
                if (!reported)
                    AgentLog.Write($"virtio-serial port '{portName}' not found yet");
                reported = true;
                Thread.Sleep(200);
                continue;
            }
            int fd;
            fixed (byte* p = Libc.Z(device))
                fd = Libc.open(p, Libc.O_RDWR | Libc.O_CLOEXEC | Libc.O_NONBLOCK | Libc.O_NOCTTY, 0);
            if (fd < 0)
            {
                if (!reported)
                    AgentLog.Write($"cannot open {device} (errno {Libc.Errno}); retrying");
                reported = true;
                Thread.Sleep(200);
                continue;
            }
            reported = false;
            Native.moat_make_raw_if_tty(fd);
            // While no host is connected to the chardev the port reports POLLHUP; wait it out.
            while (!_disposed)
            {
                var pfd = new Libc.PollFd { Fd = fd, Events = Libc.POLLIN };
                int r = Libc.poll(&pfd, 1, 200);
                if (r > 0 && (pfd.Revents & Libc.POLLHUP) != 0)
                {
                    Thread.Sleep(100);
                    continue;
                }
                return new AgentChannel(fd, Name);
            }
            Libc.close(fd);
        }
        return null;
    }

    /// <summary>Maps a port name to its /dev node via sysfs.</summary>
    internal static string? FindDevice(string name, string sysRoot = "/sys/class/virtio-ports")
    {
        if (!Directory.Exists(sysRoot))
            return null;
        foreach (string dir in Directory.EnumerateDirectories(sysRoot))
        {
            string? text = Libc.ReadSmallText(Path.Combine(dir, "name"));
            if (text is not null && text.Trim() == name)
                return "/dev/" + Path.GetFileName(dir);
        }
        return null;
    }

    public void Dispose() => _disposed = true;
}
