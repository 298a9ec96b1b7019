using System.Runtime.InteropServices;
using System.Text;

namespace Moat.Agent.Interop;

/// <summary>
/// The libc functions the agent calls directly. Bound at link time (DirectPInvoke), blittable
/// signatures only, errno read with <see cref="Marshal.GetLastPInvokeError"/>.
/// </summary>
internal static unsafe partial class Libc
{
    public const int O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2;
    public const int O_CREAT = 0x40, O_EXCL = 0x80, O_NOCTTY = 0x100, O_TRUNC = 0x200, O_APPEND = 0x400;
    public const int O_NONBLOCK = 0x800, O_DIRECTORY = 0x10000, O_NOFOLLOW = 0x20000, O_CLOEXEC = 0x80000;
    public const int AT_FDCWD = -100, AT_SYMLINK_NOFOLLOW = 0x100, AT_REMOVEDIR = 0x200;
    public const int F_GETFL = 3, F_SETFL = 4;
    public const int EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800;
    public const uint RENAME_NOREPLACE = 1;
    public const int FIONREAD = 0x541B;
    public const short POLLIN = 0x1, POLLOUT = 0x4, POLLERR = 0x8, POLLHUP = 0x10, POLLNVAL = 0x20;
    public const int SIGKILL = 9, SIGTERM = 15, SIGSTOP = 19, SIGCONT = 18;
    public const int WNOHANG = 1, __WALL = 0x40000000;
    public const int PR_SET_DUMPABLE = 4, PR_SET_CHILD_SUBREAPER = 36;
    public const int SHUT_RDWR = 2;

    public const int EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EIO = 5, ENXIO = 6, E2BIG = 7, ENOEXEC = 8, EBADF = 9, ECHILD = 10;
    public const int EAGAIN = 11, ENOMEM = 12, EACCES = 13, EBUSY = 16, EEXIST = 17, EXDEV = 18, ENODEV = 19, ENOTDIR = 20, EISDIR = 21;
    public const int EINVAL = 22, ENFILE = 23, EMFILE = 24, ETXTBSY = 26, EFBIG = 27, ENOSPC = 28, ESPIPE = 29, EROFS = 30, EMLINK = 31, EPIPE = 32;
    public const int ENAMETOOLONG = 36, ENOSYS = 38, ENOTEMPTY = 39, ELOOP = 40, EOVERFLOW = 75, EDQUOT = 122;

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [DllImport("libc", SetLastError = true)] public static extern int open(byte* path, int flags, int mode);
    [DllImport("libc", SetLastError = true)] public static extern int openat(int dirfd, byte* path, int flags, int mode);
    [DllImport("libc", SetLastError = true)] public static extern int close(int fd);
    [DllImport("libc", SetLastError = true)] public static extern int fdatasync(int fd);
    [DllImport("libc", SetLastError = true)] public static extern nint read(int fd, byte* buffer, nint count);
    [DllImport("libc", SetLastError = true)] public static extern nint write(int fd, byte* buffer, nint count);
    [DllImport("libc", SetLastError = true)] public static extern nint pread(int fd, byte* buffer, nint count, long offset);
    [DllImport("libc", SetLastError = true)] public static extern int pipe2(int* fds, int flags);
    [DllImport("libc", SetLastError = true)] public static extern int fcntl(int fd, int cmd, int arg);
    [DllImport("libc", SetLastError = true)] public static extern int ioctl(int fd, nuint request, int* arg);
    [DllImport("libc", SetLastError = true)] public static extern int poll(PollFd* fds, nuint count, int timeout);
    [DllImport("libc", SetLastError = true)] public static extern int eventfd(uint initval, int flags);
    [DllImport("libc", SetLastError = true)] public static extern int shutdown(int fd, int how);
    [DllImport("libc", SetLastError = true)] public static extern int mkdirat(int dirfd, byte* path, int mode);
    [DllImport("libc", SetLastError = true)] public static extern int unlinkat(int dirfd, byte* path, int flags);
    [DllImport("libc", SetLastError = true)] public static extern nint readlinkat(int dirfd, byte* path, byte* buffer, nint size);
    [DllImport("libc", SetLastError = true)] public static extern int renameat(int olddirfd, byte* oldpath, int newdirfd, byte* newpath);
    [DllImport("libc", SetLastError = true)] public static extern int renameat2(int olddirfd, byte* oldpath, int newdirfd, byte* newpath, uint flags);
    [DllImport("libc", SetLastError = true)] public static extern int fchmod(int fd, int mode);
    [DllImport("libc", SetLastError = true)] public static extern int fchown(int fd, uint owner, uint group);
    [DllImport("libc", SetLastError = true)] public static extern int chmod(byte* path, int mode);
    [DllImport("libc", SetLastError = true)] public static extern int chown(byte* path, uint owner, uint group);
    [DllImport("libc", SetLastError = true)] public static extern int ftruncate(int fd, long length);
    [DllImport("libc", SetLastError = true)] public static extern int kill(int pid, int signal);
    [DllImport("libc", SetLastError = true)] public static extern int waitpid(int pid, int* status, int options);
    [DllImport("libc")] public static extern int getpid();
    [DllImport("libc")] public static extern uint geteuid();
    [DllImport("libc")] public static extern int umask(int mask);
    [DllImport("libc", SetLastError = true)] public static extern int prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);
    [DllImport("libc", SetLastError = true)] public static extern int mount(byte* source, byte* target, byte* fstype, nuint flags, byte* data);
    [DllImport("libc", SetLastError = true)] public static extern int mkdir(byte* path, int mode);
    [DllImport("libc", SetLastError = true)] public static extern int getgroups(int size, uint* list);
    [DllImport("libc")] public static extern long sysconf(int name);
    [DllImport("libc")] public static extern void _exit(int status);

    public static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>Encodes a path as NUL-terminated UTF-8; false when it contains a NUL (never valid on Linux).</summary>
    public static bool TryEncode(string value, out byte[] bytes)
    {
        if (value.Contains('\0'))
        {
            bytes = [];
            return false;
        }
        int n = Encoding.UTF8.GetByteCount(value);
        bytes = new byte[n + 1];
        Encoding.UTF8.GetBytes(value, bytes);
        return true;
    }

    /// <summary>NUL-terminated UTF-8 of a string known to contain no NUL.</summary>
    public static byte[] Z(string value)
    {
        if (!TryEncode(value, out var bytes))
            throw new ArgumentException("string contains NUL", nameof(value));
        return bytes;
    }

    /// <summary>Writes all of <paramref name="data"/>, retrying EINTR; returns 0 or an errno.</summary>
    public static int WriteAll(int fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = write(fd, p + done, data.Length - done);
                if (n < 0)
                {
                    int e = Errno;
                    if (e == EINTR)
                        continue;
                    return e;
                }
                done += (int)n;
            }
        }
        return 0;
    }

    public static void SetNonBlocking(int fd)
    {
        int flags = fcntl(fd, F_GETFL, 0);
        if (flags >= 0)
            fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    }

    public static void CloseQuietly(ref int fd)
    {
        if (fd >= 0)
        {
            close(fd);
            fd = -1;
        }
    }

    /// <summary>Reads a whole small file (under /proc, /etc) as bytes, or null.</summary>
    public static byte[]? ReadSmallFile(string path, int limit = 4 << 20)
    {
        if (!TryEncode(path, out var z))
            return null;
        int fd;
        fixed (byte* p = z)
            fd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0);
        if (fd < 0)
            return null;
        try
        {
            byte[] buffer = new byte[4096];
            int total = 0;
            while (true)
            {
                if (total == buffer.Length)
                {
                    if (buffer.Length >= limit)
                        return null;
                    Array.Resize(ref buffer, Math.Min(buffer.Length * 2, limit));
                }
                nint n;
                fixed (byte* b = buffer)
                    n = read(fd, b + total, buffer.Length - total);
                if (n < 0)
                {
                    if (Errno == EINTR)
                        continue;
                    return null;
                }
                if (n == 0)
                    break;
                total += (int)n;
            }
            return buffer.AsSpan(0, total).ToArray();
        }
        finally
        {
            close(fd);
        }
    }

    public static string? ReadSmallText(string path)
    {
        var bytes = ReadSmallFile(path);
        return bytes is null ? null : Encoding.UTF8.GetString(bytes);
    }
}
