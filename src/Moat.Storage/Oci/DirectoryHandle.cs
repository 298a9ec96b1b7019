using System.ComponentModel;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Moat.Storage.Oci;

/// <summary>
/// An open directory, and every file operation Moat does on untrusted trees relative to it:
/// each name is one path component, resolved with <c>O_NOFOLLOW</c> / <c>AT_SYMLINK_NOFOLLOW</c>,
/// so no symlink — made by a layer or by a sandbox — is ever followed while writing or reading.
/// This is the only place the unpacker and the layer differ touch the filesystem.
/// </summary>
internal sealed partial class DirectoryHandle : IDisposable
{
    private const int ORdOnly = 0, OWrOnly = 1, OCreat = 0x40, OExcl = 0x80, ONoFollow = 0x20000, ODirectory = 0x10000, OCloexec = 0x80000, ONonBlock = 0x800, OPath = 0x200000;
    private const int AtSymlinkNoFollow = 0x100, AtRemoveDir = 0x200, AtEmptyPath = 0x1000;
    public const uint SIfMt = 0xF000, SIfReg = 0x8000, SIfDir = 0x4000, SIfLnk = 0xA000, SIfChr = 0x2000, SIfBlk = 0x6000, SIfIfo = 0x1000, SIfSock = 0xC000;
    public const int ENOENT = 2, EEXIST = 17, ENOTDIR = 20, ELOOP = 40, ENODATA = 61, EISDIR = 21, ENOTEMPTY = 39;

    private readonly int _fd;
    private bool _disposed;

    private DirectoryHandle(int fd, string display)
    {
        _fd = fd;
        Display = display;
    }

    /// <summary>The directory's path relative to the tree's root, for messages.</summary>
    public string Display { get; }

    /// <summary>The raw descriptor (valid until disposed).</summary>
    public int Fd => _fd;

    /// <summary>Opens a directory by absolute host path; its last component must not be a symlink.</summary>
    public static DirectoryHandle OpenRoot(string path)
    {
        int fd = SysOpen(path, ORdOnly | ODirectory | ONoFollow | OCloexec, 0);
        if (fd < 0)
            throw Error($"open {path}");
        return new DirectoryHandle(fd, "/");
    }

    /// <summary>Opens the child directory <paramref name="name"/>; null when it does not exist; throws when it is not a directory (a symlink included).</summary>
    public DirectoryHandle? OpenDirectory(string name)
    {
        int fd = SysOpenAt(_fd, name, ORdOnly | ODirectory | ONoFollow | OCloexec, 0);
        if (fd >= 0)
            return new DirectoryHandle(fd, Join(name));
        int errno = Marshal.GetLastPInvokeError();
        if (errno == ENOENT)
            return null;
        if (errno is ENOTDIR or ELOOP)
            throw new NotADirectoryException(Join(name));
        throw Error($"open {Join(name)}", errno);
    }

    /// <summary>Creates the child directory (fine if one exists) and opens it.</summary>
    public DirectoryHandle CreateDirectory(string name, uint mode)
    {
        if (SysMkdirAt(_fd, name, mode) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EEXIST)
                throw Error($"mkdir {Join(name)}", errno);
        }
        return OpenDirectory(name) ?? throw new IOException($"{Join(name)} vanished after mkdir");
    }

    /// <summary>lstat of a child; null when it does not exist.</summary>
    public FileStatus? Stat(string name)
    {
        if (SysFstatAt(_fd, name, out var st, AtSymlinkNoFollow) == 0)
            return FileStatus.From(st);
        int errno = Marshal.GetLastPInvokeError();
        if (errno == ENOENT)
            return null;
        throw Error($"stat {Join(name)}", errno);
    }

    /// <summary>fstat of this directory itself.</summary>
    public FileStatus StatSelf()
    {
        if (SysFstatAt(_fd, "", out var st, AtEmptyPath) != 0)
            throw Error($"stat {Display}");
        return FileStatus.From(st);
    }

    /// <summary>Creates a new regular file (never an existing one, never through a symlink) and returns a handle to write it.</summary>
    public SafeFileHandle CreateFile(string name, uint mode)
    {
        int fd = SysOpenAt(_fd, name, OWrOnly | OCreat | OExcl | ONoFollow | OCloexec, mode & 0x1FF);
        if (fd < 0)
            throw Error($"create {Join(name)}");
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>Opens a child for reading if it is a regular file (a FIFO never blocks, a symlink is refused).</summary>
    public SafeFileHandle? OpenFileForRead(string name)
    {
        int fd = SysOpenAt(_fd, name, ORdOnly | ONoFollow | ONonBlock | OCloexec, 0);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno is ENOENT or ELOOP)
                return null;
            throw Error($"open {Join(name)}", errno);
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (SysFstatAt(fd, "", out var st, AtEmptyPath) != 0 || (st.Mode & SIfMt) != SIfReg)
        {
            handle.Dispose();
            return null;
        }
        return handle;
    }

    /// <summary>symlinkat: the target is stored as given and never resolved by Moat.</summary>
    public void Symlink(string target, string name)
    {
        if (SysSymlinkAt(target, _fd, name) != 0)
            throw Error($"symlink {Join(name)}");
    }

    /// <summary>Hard-links <paramref name="sourceName"/> of <paramref name="source"/> (not following a symlink) as <paramref name="name"/> here.</summary>
    public void Link(DirectoryHandle source, string sourceName, string name)
    {
        if (SysLinkAt(source._fd, sourceName, _fd, name, 0) != 0)
            throw Error($"link {Join(name)} to {source.Join(sourceName)}");
    }

    /// <summary>mknodat of a FIFO or a character device (whiteouts are char 0:0).</summary>
    public void MakeNode(string name, uint mode, ulong device)
    {
        if (SysMknodAt(_fd, name, mode, device) != 0)
            throw Error($"mknod {Join(name)}");
    }

    /// <summary>readlinkat.</summary>
    public string ReadLink(string name)
    {
        var buffer = new byte[4097];
        long n = SysReadLinkAt(_fd, name, buffer, buffer.Length);
        if (n < 0)
            throw Error($"readlink {Join(name)}");
        return System.Text.Encoding.UTF8.GetString(buffer, 0, (int)Math.Min(n, 4096));
    }

    /// <summary>Removes a child that is not a directory (false when absent).</summary>
    public bool Unlink(string name)
    {
        if (SysUnlinkAt(_fd, name, 0) == 0)
            return true;
        int errno = Marshal.GetLastPInvokeError();
        if (errno == ENOENT)
            return false;
        throw Error($"unlink {Join(name)}", errno);
    }

    /// <summary>Removes a child of any kind, a directory with everything in it, without following symlinks.</summary>
    public void RemoveTree(string name)
    {
        var status = Stat(name);
        if (status is null)
            return;
        if (!status.Value.IsDirectory)
        {
            Unlink(name);
            return;
        }
        using (var child = OpenDirectory(name))
        {
            if (child is not null)
            {
                foreach (var entry in child.List())
                    child.RemoveTree(entry);
            }
        }
        if (SysUnlinkAt(_fd, name, AtRemoveDir) != 0)
            throw Error($"rmdir {Join(name)}");
    }

    /// <summary>Names in this directory (not . or ..), read through this descriptor.</summary>
    public List<string> List()
    {
        // /proc/self/fd/N names exactly the directory this descriptor holds, whatever happened to its path since.
        var names = new List<string>();
        foreach (var path in Directory.EnumerateFileSystemEntries($"/proc/self/fd/{_fd}"))
            names.Add(Path.GetFileName(path));
        return names;
    }

    /// <summary>Owner of a child (the child itself, never a symlink's target).</summary>
    public void Chown(string name, int uid, int gid)
    {
        if (SysFchownAt(_fd, name, uid, gid, AtSymlinkNoFollow) != 0)
            throw Error($"chown {Join(name)}");
    }

    /// <summary>Owner of this directory.</summary>
    public void ChownSelf(int uid, int gid)
    {
        if (SysFchownAt(_fd, "", uid, gid, AtEmptyPath) != 0)
            throw Error($"chown {Display}");
    }

    /// <summary>Permission bits of this directory.</summary>
    public void ChmodSelf(uint mode)
    {
        if (SysFchmod(_fd, mode & 0xFFF) != 0)
            throw Error($"chmod {Display}");
    }

    /// <summary>Times of a child (the symlink itself for a symlink).</summary>
    public void SetTimes(string name, DateTimeOffset mtime)
    {
        Span<Timespec> times = [Timespec.From(mtime), Timespec.From(mtime)];
        if (SysUtimensAt(_fd, name, ref times[0], AtSymlinkNoFollow) != 0)
            throw Error($"utimens {Join(name)}");
    }

    /// <summary>Sets an extended attribute on this directory.</summary>
    public void SetAttribute(string attribute, ReadOnlySpan<byte> value)
    {
        if (SysFsetxattr(_fd, attribute, value, (nuint)value.Length, 0) != 0)
            throw Error($"setxattr {attribute} on {Display}");
    }

    /// <summary>Reads an extended attribute of a child (not following a symlink); null when it has none.</summary>
    public byte[]? GetAttribute(string name, string attribute)
    {
        // lgetxattr on /proc/self/fd/N/name: the directory is pinned by its descriptor; the last component is not followed.
        var buffer = new byte[256];
        long n = SysLgetxattr($"/proc/self/fd/{_fd}/{name}", attribute, buffer, (nuint)buffer.Length);
        if (n < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno is ENODATA or 95 /* EOPNOTSUPP */)
                return null;
            throw Error($"getxattr {attribute} of {Join(name)}", errno);
        }
        return buffer[..(int)n];
    }

    /// <summary>Renames a child within this directory, atomically.</summary>
    public void Rename(string from, string to)
    {
        if (SysRenameAt(_fd, from, _fd, to) != 0)
            throw Error($"rename {Join(from)} to {Join(to)}");
    }

    /// <summary>Applies ownership, permissions and times to a regular file through its own descriptor.</summary>
    public static void SetFileMetadata(SafeFileHandle file, int uid, int gid, uint mode, DateTimeOffset mtime, string display)
    {
        int fd = (int)file.DangerousGetHandle();
        // chown first: it clears setuid/setgid bits, which chmod then sets.
        if (SysFchownAt(fd, "", uid, gid, AtEmptyPath) != 0)
            throw Error($"chown {display}");
        if (SysFchmod(fd, mode & 0xFFF) != 0)
            throw Error($"chmod {display}");
        Span<Timespec> times = [Timespec.From(mtime), Timespec.From(mtime)];
        if (SysFutimens(fd, ref times[0]) != 0)
            throw Error($"utimens {display}");
    }

    /// <summary>Times of this directory.</summary>
    public void SetTimesSelf(DateTimeOffset mtime)
    {
        Span<Timespec> times = [Timespec.From(mtime), Timespec.From(mtime)];
        if (SysFutimens(_fd, ref times[0]) != 0)
            throw Error($"utimens {Display}");
    }

    private string Join(string name) => Display == "/" ? "/" + name : Display + "/" + name;

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        SysClose(_fd);
    }

    internal static IOException Error(string what, int? errno = null)
    {
        int e = errno ?? Marshal.GetLastPInvokeError();
        return new IOException($"{what}: {new Win32Exception(e).Message} (errno {e})") { HResult = e };
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;

        public static Timespec From(DateTimeOffset time)
        {
            long ticks = time.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks;
            return new Timespec { Seconds = Math.DivRem(ticks, TimeSpan.TicksPerSecond, out long rest) - (rest < 0 ? 1 : 0), Nanoseconds = (rest < 0 ? rest + TimeSpan.TicksPerSecond : rest) * 100 };
        }
    }

    /// <summary>struct stat of x86_64 Linux.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct StatBuf
    {
        public ulong Dev, Ino, Nlink;
        public uint Mode, Uid, Gid, Pad0;
        public ulong Rdev;
        public long Size, BlockSize, Blocks;
        public long AtimeSec, AtimeNsec, MtimeSec, MtimeNsec, CtimeSec, CtimeNsec;
        public long Reserved0, Reserved1, Reserved2;
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysOpen(string path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "openat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysOpenAt(int dirfd, string path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int SysClose(int fd);

    [LibraryImport("libc", EntryPoint = "mkdirat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysMkdirAt(int dirfd, string path, uint mode);

    [LibraryImport("libc", EntryPoint = "fstatat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysFstatAt(int dirfd, string path, out StatBuf buf, int flags);

    [LibraryImport("libc", EntryPoint = "symlinkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysSymlinkAt(string target, int dirfd, string path);

    [LibraryImport("libc", EntryPoint = "linkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysLinkAt(int olddirfd, string oldpath, int newdirfd, string newpath, int flags);

    [LibraryImport("libc", EntryPoint = "mknodat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysMknodAt(int dirfd, string path, uint mode, ulong dev);

    [LibraryImport("libc", EntryPoint = "readlinkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial long SysReadLinkAt(int dirfd, string path, byte[] buf, long size);

    [LibraryImport("libc", EntryPoint = "unlinkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysUnlinkAt(int dirfd, string path, int flags);

    [LibraryImport("libc", EntryPoint = "fchownat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysFchownAt(int dirfd, string path, int uid, int gid, int flags);

    [LibraryImport("libc", EntryPoint = "fchmod", SetLastError = true)]
    private static partial int SysFchmod(int fd, uint mode);

    [LibraryImport("libc", EntryPoint = "utimensat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysUtimensAt(int dirfd, string path, ref Timespec times, int flags);

    [LibraryImport("libc", EntryPoint = "futimens", SetLastError = true)]
    private static partial int SysFutimens(int fd, ref Timespec times);

    [LibraryImport("libc", EntryPoint = "fsetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysFsetxattr(int fd, string name, ReadOnlySpan<byte> value, nuint size, int flags);

    [LibraryImport("libc", EntryPoint = "lgetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial long SysLgetxattr(string path, string name, byte[] value, nuint size);

    [LibraryImport("libc", EntryPoint = "renameat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysRenameAt(int olddirfd, string oldpath, int newdirfd, string newpath);
}

/// <summary>What lstat says of a file.</summary>
internal readonly record struct FileStatus(uint Mode, int Uid, int Gid, long Size, ulong Rdev, ulong Inode, ulong Nlink, DateTimeOffset Mtime, long CtimeTicks, long Blocks)
{
    public uint Type => Mode & DirectoryHandle.SIfMt;
    public bool IsDirectory => Type == DirectoryHandle.SIfDir;
    public bool IsRegular => Type == DirectoryHandle.SIfReg;
    public bool IsSymlink => Type == DirectoryHandle.SIfLnk;
    /// <summary>An overlayfs whiteout: a character device 0:0.</summary>
    public bool IsWhiteout => Type == DirectoryHandle.SIfChr && Rdev == 0;

    internal static FileStatus From(DirectoryHandle.StatBuf s) => new(s.Mode, (int)s.Uid, (int)s.Gid, s.Size, s.Rdev, s.Ino, s.Nlink,
        DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(s.MtimeSec, -62135596800, 253402300799)).AddTicks(s.MtimeNsec / 100),
        s.CtimeSec * TimeSpan.TicksPerSecond + s.CtimeNsec / 100, s.Blocks);
}

/// <summary>A path component that had to be a directory was something else (a symlink, a file).</summary>
internal sealed class NotADirectoryException(string path) : IOException($"{path} is not a directory");
