using System.ComponentModel;
using System.Runtime.InteropServices;

namespace Moat.Core.Host;

/// <summary>
/// The Linux system calls the host side needs and .NET does not expose: mounts, loop devices,
/// sparse files, statfs, signals to arbitrary pids. One place, so every caller gets the same
/// error handling.
/// </summary>
public static partial class Linux
{
    /// <summary>MS_RDONLY.</summary>
    public const ulong MsReadOnly = 1;
    /// <summary>MS_NOSUID.</summary>
    public const ulong MsNoSuid = 2;
    /// <summary>MS_NODEV.</summary>
    public const ulong MsNoDev = 4;
    /// <summary>MS_NOEXEC.</summary>
    public const ulong MsNoExec = 8;
    /// <summary>MS_BIND.</summary>
    public const ulong MsBind = 4096;
    /// <summary>MS_REC.</summary>
    public const ulong MsRec = 16384;
    /// <summary>MS_PRIVATE.</summary>
    public const ulong MsPrivate = 1 << 18;
    private const int MntDetach = 2;
    private const int EINVAL = 22;
    private const int ENOENT = 2;
    private const int EBUSY = 16;

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysMount(string source, string target, string? fstype, ulong flags, string? data);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysUmount2(string target, int flags);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int SysIoctl(int fd, ulong request, nint arg);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysOpen(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int SysClose(int fd);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long SysLseek(nint fd, long offset, int whence);

    [LibraryImport("libc", EntryPoint = "statfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysStatfs(string path, out StatFs buf);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int SysGetsockopt(nint fd, int level, int name, out PeerCredentials value, ref int length);

    /// <summary>Credentials of the process at the other end of a Unix socket (SO_PEERCRED).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct PeerCredentials
    {
        /// <summary>Process id.</summary>
        public int Pid;
        /// <summary>User id.</summary>
        public uint Uid;
        /// <summary>Group id.</summary>
        public uint Gid;
    }

    /// <summary>The peer of a connected Unix socket: for a connection to a listener, the process that called listen().</summary>
    public static PeerCredentials PeerOf(System.Net.Sockets.Socket socket)
    {
        const int SolSocket = 1, SoPeerCred = 17;
        int length = Marshal.SizeOf<PeerCredentials>();
        if (SysGetsockopt(socket.Handle, SolSocket, SoPeerCred, out var credentials, ref length) != 0)
            throw Error("getsockopt SO_PEERCRED");
        return credentials;
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SysKill(int pid, int signal);

    [StructLayout(LayoutKind.Sequential)]
    private struct StatFs
    {
        public long Type, BlockSize, Blocks, BlocksFree, BlocksAvailable, Files, FilesFree;
        public long FsId, NameLength, FragmentSize, Flags, Spare0, Spare1, Spare2, Spare3;
    }

    /// <summary>Space on a filesystem.</summary>
    public readonly record struct FsUsage(long TotalBytes, long UsedBytes, long FreeBytes, long TotalInodes, long FreeInodes);

    /// <summary>mount(2).</summary>
    public static void Mount(string source, string target, string? fstype, ulong flags, string? data)
    {
        if (SysMount(source, target, fstype, flags, data) != 0)
            throw Error($"mount {fstype ?? "bind"} {source} on {target}");
    }

    /// <summary>Unmounts <paramref name="target"/>; not mounted is fine; busy falls back to a lazy detach.</summary>
    public static void Unmount(string target)
    {
        if (SysUmount2(target, 0) == 0)
            return;
        int errno = Marshal.GetLastPInvokeError();
        if (errno is EINVAL or ENOENT)
            return;
        if (errno == EBUSY && SysUmount2(target, MntDetach) == 0)
            return;
        throw new IOException($"umount {target}: {new Win32Exception(errno).Message}");
    }

    /// <summary>Whether something is mounted exactly at <paramref name="path"/>.</summary>
    public static bool IsMountPoint(string path)
    {
        var full = Path.GetFullPath(path).TrimEnd('/');
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var fields = line.Split(' ', 6);
            if (fields.Length > 4 && Unescape(fields[4]) == full)
                return true;
        }
        return false;
    }

    /// <summary>Every mount point under <paramref name="prefix"/>, deepest first.</summary>
    public static IReadOnlyList<string> MountsUnder(string prefix)
    {
        var full = Path.GetFullPath(prefix).TrimEnd('/') + "/";
        var found = new List<string>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var fields = line.Split(' ', 6);
            if (fields.Length > 4)
            {
                var point = Unescape(fields[4]);
                if ((point + "/").StartsWith(full, StringComparison.Ordinal))
                    found.Add(point);
            }
        }
        return found.OrderByDescending(p => p.Length).ToList();
    }

    private static string Unescape(string s) => s.Contains('\\') ? System.Text.RegularExpressions.Regex.Replace(s, @"\\([0-7]{3})", m => ((char)Convert.ToInt32(m.Groups[1].Value, 8)).ToString()) : s;

    /// <summary>
    /// Attaches <paramref name="image"/> to a free loop device that frees itself when its last user
    /// (the mount) goes away, and returns the device path. The caller must mount it before
    /// closing the returned handle.
    /// </summary>
    public static unsafe LoopDevice AttachLoop(string image, bool readOnly)
    {
        const ulong LoopCtlGetFree = 0x4C82, LoopConfigure = 0x4C0A;
        const uint LoFlagsReadOnly = 1, LoFlagsAutoclear = 4;
        int backing = SysOpen(image, (readOnly ? 0 : 2) | 0x80000 /* O_CLOEXEC */, 0);
        if (backing < 0)
            throw Error($"open {image}");
        try
        {
            int control = SysOpen("/dev/loop-control", 2 | 0x80000, 0);
            if (control < 0)
                throw Error("open /dev/loop-control");
            try
            {
                for (int attempt = 0; attempt < 20; attempt++)
                {
                    int number = SysIoctl(control, LoopCtlGetFree, 0);
                    if (number < 0)
                        throw Error("LOOP_CTL_GET_FREE");
                    string device = $"/dev/loop{number}";
                    int fd = SysOpen(device, (readOnly ? 0 : 2) | 0x80000, 0);
                    if (fd < 0)
                        throw Error($"open {device}");
                    var config = new LoopConfig { Fd = (uint)backing };
                    config.Info.Flags = LoFlagsAutoclear | (readOnly ? LoFlagsReadOnly : 0);
                    if (SysIoctl(fd, LoopConfigure, (nint)(&config)) == 0)
                        return new LoopDevice(device, fd);
                    int errno = Marshal.GetLastPInvokeError();
                    SysClose(fd);
                    if (errno != EBUSY)
                        throw new IOException($"LOOP_CONFIGURE {device}: {new Win32Exception(errno).Message}");
                    // Someone else took that device between GET_FREE and CONFIGURE: try the next.
                }
                throw new IOException("no free loop device after 20 attempts");
            }
            finally
            {
                SysClose(control);
            }
        }
        finally
        {
            SysClose(backing);
        }
    }

    /// <summary>An attached loop device; disposing closes our handle (the mount keeps it alive).</summary>
    public sealed class LoopDevice(string path, int fd) : IDisposable
    {
        /// <summary>/dev/loopN.</summary>
        public string Path { get; } = path;

        /// <inheritdoc />
        public void Dispose() => SysClose(fd);
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct LoopInfo64
    {
        public ulong Device, Inode, RDevice, Offset, SizeLimit;
        public uint Number, EncryptType, EncryptKeySize, Flags;
        public fixed byte FileName[64];
        public fixed byte CryptName[64];
        public fixed byte EncryptKey[32];
        public fixed ulong Init[2];
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct LoopConfig
    {
        public uint Fd, BlockSize;
        public LoopInfo64 Info;
        public fixed ulong Reserved[8];
    }

    /// <summary>
    /// Mounts an overlay whose layer paths are passed as <c>/proc/self/fd/N</c>: the mount's
    /// options (visible in the sandbox's /proc/self/mountinfo) then name no host path, and the
    /// option string stays short however many layers there are.
    /// </summary>
    public static void MountOverlay(string target, IReadOnlyList<string> lowerTopFirst, string upper, string work, ulong flags = 0)
    {
        const int OPath = 0x200000, ODirectory = 0x10000, OCloexec = 0x80000;
        var fds = new List<int>();
        try
        {
            int Open(string path)
            {
                int fd = SysOpen(path, OPath | ODirectory | OCloexec, 0);
                if (fd < 0)
                    throw Error($"open {path}");
                fds.Add(fd);
                return fd;
            }
            var lower = string.Join(':', lowerTopFirst.Select(l => $"/proc/self/fd/{Open(l)}"));
            var options = $"lowerdir={lower},upperdir=/proc/self/fd/{Open(upper)},workdir=/proc/self/fd/{Open(work)}";
            Mount("overlay", target, "overlay", flags, options);
        }
        finally
        {
            foreach (var fd in fds)
                SysClose(fd);
        }
    }

    /// <summary>Copies a file, writing only its data extents: holes stay holes.</summary>
    public static void CopySparse(string source, string destination)
    {
        const int SeekData = 3, SeekHole = 4;
        using var src = File.OpenHandle(source, FileMode.Open, FileAccess.Read);
        using var dst = File.OpenHandle(destination, FileMode.CreateNew, FileAccess.Write);
        long length = RandomAccess.GetLength(src);
        var buffer = new byte[1 << 20];
        long offset = 0;
        while (offset < length)
        {
            long data = SysLseek(src.DangerousGetHandle(), offset, SeekData);
            if (data < 0)
                break; // ENXIO: no more data
            long hole = SysLseek(src.DangerousGetHandle(), data, SeekHole);
            if (hole < 0)
                hole = length;
            for (long at = data; at < hole;)
            {
                int n = RandomAccess.Read(src, buffer.AsSpan(0, (int)Math.Min(buffer.Length, hole - at)), at);
                if (n <= 0)
                    break;
                RandomAccess.Write(dst, buffer.AsSpan(0, n), at);
                at += n;
            }
            offset = hole;
        }
        RandomAccess.SetLength(dst, length);
    }

    /// <summary>statfs(2) of the filesystem holding <paramref name="path"/>.</summary>
    public static FsUsage StatFilesystem(string path)
    {
        if (SysStatfs(path, out var s) != 0)
            throw Error($"statfs {path}");
        return new FsUsage(s.Blocks * s.BlockSize, (s.Blocks - s.BlocksFree) * s.BlockSize, s.BlocksAvailable * s.BlockSize, s.Files, s.FilesFree);
    }

    /// <summary>CLONE_NEWNET: the network namespace type for <see cref="EnterNamespace"/>.</summary>
    public const int CloneNewNet = 0x40000000;

    [LibraryImport("libc", EntryPoint = "setns", SetLastError = true)]
    private static partial int SysSetns(int fd, int nstype);

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    private static unsafe partial nint SysRecvmsg(nint fd, MsgHdr* message, int flags);

    /// <summary>Opens a namespace file (<c>/run/netns/NAME</c>, <c>/proc/PID/ns/net</c>) for <see cref="EnterNamespace"/>; close it with <see cref="CloseDescriptor"/>.</summary>
    public static int OpenNamespace(string path)
    {
        int fd = SysOpen(path, 0x80000 /* O_RDONLY|O_CLOEXEC */, 0);
        if (fd < 0)
            throw Error($"open {path}");
        return fd;
    }

    /// <summary>setns(2): moves the calling thread into the namespace <paramref name="fd"/> refers to.</summary>
    public static void EnterNamespace(int fd, int type)
    {
        if (SysSetns(fd, type) != 0)
            throw Error("setns");
    }

    /// <summary>close(2) of a descriptor from <see cref="OpenNamespace"/>.</summary>
    public static void CloseDescriptor(int fd) => SysClose(fd);

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public nint Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public nint Name;
        public uint NameLength;
        public nint Iov;
        public nuint IovLength;
        public nint Control;
        public nuint ControlLength;
        public int Flags;
    }

    /// <summary>
    /// recvmsg(2) of one datagram on a socket with IP_RECVORIGDSTADDR / IPV6_RECVORIGDSTADDR set
    /// (a transparent-proxy socket): the payload, who sent it, and the address it was sent to
    /// before the firewall diverted it. Returns -1 when the socket's receive timeout passed.
    /// </summary>
    public static unsafe int ReceiveWithOriginalDestination(System.Net.Sockets.Socket socket, Span<byte> buffer, out System.Net.IPEndPoint? source, out System.Net.IPEndPoint? originalDestination)
    {
        const int SolIp = 0, IpOrigDstAddr = 20, SolIpv6 = 41, Ipv6OrigDstAddr = 74, EAGAIN = 11, EINTR = 4;
        source = null;
        originalDestination = null;
        byte* name = stackalloc byte[128];
        byte* control = stackalloc byte[256];
        fixed (byte* data = buffer)
        {
            var iov = new IoVec { Base = (nint)data, Length = (nuint)buffer.Length };
            var message = new MsgHdr { Name = (nint)name, NameLength = 128, Iov = (nint)(&iov), IovLength = 1, Control = (nint)control, ControlLength = 256 };
            nint n;
            while ((n = SysRecvmsg(socket.Handle, &message, 0)) < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    return -1;
                throw new System.Net.Sockets.SocketException(errno);
            }
            source = SockaddrToEndPoint(new ReadOnlySpan<byte>(name, (int)message.NameLength));
            // struct cmsghdr { size_t len; int level; int type; data... }, 8-byte aligned.
            nuint offset = 0;
            while (offset + 16 <= message.ControlLength)
            {
                byte* header = control + offset;
                nuint length = *(nuint*)header;
                if (length < 16 || offset + length > message.ControlLength)
                    break;
                int level = *(int*)(header + 8), type = *(int*)(header + 12);
                if ((level == SolIp && type == IpOrigDstAddr) || (level == SolIpv6 && type == Ipv6OrigDstAddr))
                    originalDestination = SockaddrToEndPoint(new ReadOnlySpan<byte>(header + 16, (int)(length - 16)));
                offset += (length + 7) & ~(nuint)7;
            }
            return (int)n;
        }
    }

    private static System.Net.IPEndPoint? SockaddrToEndPoint(ReadOnlySpan<byte> sockaddr)
    {
        if (sockaddr.Length < 2)
            return null;
        int family = sockaddr[0] | (sockaddr[1] << 8);
        if (family == 2 && sockaddr.Length >= 8)
            return new System.Net.IPEndPoint(new System.Net.IPAddress(sockaddr.Slice(4, 4)), (sockaddr[2] << 8) | sockaddr[3]);
        if (family == 10 && sockaddr.Length >= 24)
            return new System.Net.IPEndPoint(new System.Net.IPAddress(sockaddr.Slice(8, 16)), (sockaddr[2] << 8) | sockaddr[3]);
        return null;
    }

    /// <summary>Sends a signal; false if the process does not exist.</summary>
    public static bool Kill(int pid, int signal) => SysKill(pid, signal) == 0;

    [LibraryImport("libc", EntryPoint = "stat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int SysStat(string path, byte* buffer);

    /// <summary>Bytes of disk a (sparse) file really occupies: st_blocks × 512.</summary>
    public static unsafe long AllocatedBytes(string path)
    {
        // struct stat on x86_64 is 144 bytes; st_blocks is the 64-bit field at offset 64.
        byte* buffer = stackalloc byte[256];
        if (SysStat(path, buffer) != 0)
            throw Error($"stat {path}");
        return *(long*)(buffer + 64) * 512;
    }

    private static IOException Error(string what)
    {
        int errno = Marshal.GetLastPInvokeError();
        return new IOException($"{what}: {new Win32Exception(errno).Message} (errno {errno})");
    }
}
