using System.Text;
using Moat.Agent.Core;
using Moat.Agent.Interop;
using Moat.Agent.Session;
using Moat.Agent.Users;
using Moat.Protocol;
using Moat.Protocol.Messages;
using FileInfo = Moat.Protocol.Messages.FileInfo;

namespace Moat.Agent.Files;

/// <summary>
/// File operations performed by the agent inside the sandbox as the requested user: every path
/// and symlink resolves in the sandbox's root, permissions are the sandbox's. Each request runs
/// synchronously on a worker thread; the user identity is switched only around path-resolving
/// system calls.
/// </summary>
internal sealed unsafe class FileService(UserDatabase users, WorkerPool workers)
{
    /// <summary>Deepest directory recursion of list_dir and recursive remove.</summary>
    public const int MaxDepth = 128;
    /// <summary>Entries list_dir returns when the request sets no limit.</summary>
    public const int DefaultMaxEntries = 100_000;

    public void Handle(AgentSession session, uint id, Request request)
    {
        switch (request.KindCase)
        {
            case Request.KindOneofCase.FileRead:
                Start(session, new SimpleStream(session, id), s => Read(s, request.FileRead));
                break;
            case Request.KindOneofCase.FileWrite:
                Start(session, new FileWriteStream(session, id), s => Write(s, request.FileWrite));
                break;
            case Request.KindOneofCase.ListDir:
                Start(session, new SimpleStream(session, id), s => ListDir(s, request.ListDir));
                break;
            case Request.KindOneofCase.Stat:
                Start(session, new SimpleStream(session, id), s => Stat(s, request.Stat));
                break;
            case Request.KindOneofCase.MakeDir:
                Start(session, new SimpleStream(session, id), s => MakeDir(s, request.MakeDir));
                break;
            case Request.KindOneofCase.Remove:
                Start(session, new SimpleStream(session, id), s => Remove(s, request.Remove));
                break;
            case Request.KindOneofCase.Rename:
                Start(session, new SimpleStream(session, id), s => Rename(s, request.Rename));
                break;
            default:
                var stream = session.Open(new SimpleStream(session, id));
                if (stream is not null)
                    session.RespondError(stream, "unsupported", $"request {request.KindCase} is not supported by this agent");
                break;
        }
    }

    private void Start<T>(AgentSession session, T stream, Action<T> work) where T : AgentStream
    {
        if (session.Open(stream) is null)
            return;
        workers.Run(() => session.Guarded(stream, () => work(stream)));
    }

    // ---- common ----

    private bool Prepare(AgentStream s, string userSpec, string path, out UserIdentity user, out string normalized)
    {
        normalized = "";
        var resolved = users.Resolve(userSpec, "root");
        if (resolved is null)
        {
            user = null!;
            s.Session.RespondError(s, "no_such_user", $"no user '{userSpec}' in the sandbox's /etc/passwd");
            return false;
        }
        user = resolved;
        var n = SandboxPath.Normalize(path, user.Home);
        if (n is null)
        {
            s.Session.RespondError(s, "invalid_argument", "the path is empty, too long or contains NUL");
            return false;
        }
        normalized = n;
        return true;
    }

    private static bool Enter(AgentStream s, UserIdentity user, out FsIdentity scope)
    {
        scope = FsIdentity.Enter(user);
        if (scope.Error == 0)
            return true;
        s.Session.RespondError(s, "permission_denied", $"cannot act as user '{user.Name}' (errno {scope.Error})", scope.Error);
        return false;
    }

    private static void Fail(AgentStream s, string what, string path, int errno)
        => s.Session.RespondError(s, FileErrors.Code(errno), FileErrors.Describe(what, path, errno), errno);

    private static int StatAt(int dirfd, string path, bool follow, out MoatStat st)
    {
        MoatStat result;
        int r;
        fixed (byte* p = Libc.Z(path))
            r = Native.moat_fstatat(dirfd, p, follow ? 0 : Libc.AT_SYMLINK_NOFOLLOW, &result);
        st = result;
        return r < 0 ? -r : 0;
    }

    private static string ReadLink(int dirfd, string path)
    {
        byte* buffer = stackalloc byte[SandboxPath.MaxLength + 1];
        nint n;
        fixed (byte* p = Libc.Z(path))
            n = Libc.readlinkat(dirfd, p, buffer, SandboxPath.MaxLength);
        return n <= 0 ? "" : Encoding.UTF8.GetString(buffer, (int)n);
    }

    private FileInfo Info(string path, in MoatStat st, AccountFiles accounts, string symlinkTarget = "")
    {
        return new FileInfo
        {
            Name = path == "/" ? "/" : SandboxPath.Name(path),
            Path = path,
            Type = TypeOf(st),
            Size = st.Size,
            Mode = st.Mode,
            MtimeUnixMs = st.MtimeUnixMs,
            Uid = st.Uid,
            Gid = st.Gid,
            Owner = accounts.ByUid(st.Uid)?.Name ?? "",
            Group = accounts.GroupByGid(st.Gid)?.Name ?? "",
            SymlinkTarget = symlinkTarget,
        };
    }

    private static FileType TypeOf(in MoatStat st) => st.Kind switch
    {
        MoatStat.S_IFREG => FileType.File,
        MoatStat.S_IFDIR => FileType.Directory,
        MoatStat.S_IFLNK => FileType.Symlink,
        MoatStat.S_IFIFO => FileType.Fifo,
        MoatStat.S_IFSOCK => FileType.Socket,
        MoatStat.S_IFCHR => FileType.CharDevice,
        MoatStat.S_IFBLK => FileType.BlockDevice,
        _ => FileType.Unknown,
    };

    // ---- read ----

    private void Read(SimpleStream s, FileReadRequest request)
    {
        if (!Prepare(s, request.User, request.Path, out var user, out var path))
            return;
        int fd;
        MoatStat st;
        if (!Enter(s, user, out var scope))
            return;
        using (scope)
        {
            // Refuse anything but a regular file before opening it: opening a device can have
            // side effects, and a FIFO would block.
            int e = StatAt(Libc.AT_FDCWD, path, follow: true, out st);
            if (e != 0)
            {
                Fail(s, "read", path, e);
                return;
            }
            if (st.IsDirectory)
            {
                s.Session.RespondError(s, "is_a_directory", $"read {path}: is a directory");
                return;
            }
            if (!st.IsRegular)
            {
                s.Session.RespondError(s, "not_a_file", $"read {path}: not a regular file");
                return;
            }
            fixed (byte* p = Libc.Z(path))
                fd = Libc.open(p, Libc.O_RDONLY | Libc.O_NONBLOCK | Libc.O_NOCTTY | Libc.O_CLOEXEC, 0);
            if (fd < 0)
            {
                Fail(s, "read", path, Libc.Errno);
                return;
            }
        }
        try
        {
            MoatStat opened;
            if (Native.moat_fstat(fd, &opened) < 0 || !opened.IsRegular || opened.Ino != st.Ino || opened.Dev != st.Dev)
            {
                s.Session.RespondError(s, "not_a_file", $"read {path}: not a regular file");
                return;
            }
            var session = s.Session;
            session.Respond(s, new Response { FileInfo = Info(path, opened, users.Files) }, final: false);
            long position = (long)Math.Min(request.Offset, long.MaxValue);
            ulong remaining = request.Length == 0 ? ulong.MaxValue : request.Length;
            while (remaining > 0)
            {
                int want = (int)Math.Min((ulong)session.MaxData, remaining);
                int credit = session.ReserveBlocking(s, want);
                if (credit == 0)
                    return; // the host cancelled or went away
                byte[] frame = FramePool.Rent();
                nint n;
                do
                {
                    fixed (byte* b = frame)
                        n = Libc.pread(fd, b + FrameHeader.Size, credit, position);
                }
                while (n < 0 && Libc.Errno == Libc.EINTR);
                int errno = n < 0 ? Libc.Errno : 0;
                session.Release(s, credit - (int)Math.Max(0, n));
                if (n <= 0)
                {
                    FramePool.Return(frame);
                    if (n == 0)
                        break;
                    Fail(s, "read", path, errno);
                    return;
                }
                session.SendData(s, FrameType.FileData, frame, (int)n, final: false);
                position += n;
                remaining -= (ulong)n;
            }
            session.SendEndOfData(s, FrameType.FileData);
            session.Respond(s, new Response { Ok = new Ok() }, final: true);
        }
        finally
        {
            Libc.close(fd);
        }
    }

    // ---- write ----

    private void Write(FileWriteStream s, FileWriteRequest request)
    {
        if (!Prepare(s, request.User, request.Path, out var user, out var path))
        {
            s.Abandon();
            return;
        }
        if (path == "/")
        {
            s.Session.RespondError(s, "is_a_directory", "write /: is a directory");
            s.Abandon();
            return;
        }
        var writer = new FileWriteOperation(s, request, user, path, users.Files);
        try
        {
            writer.Run();
        }
        finally
        {
            writer.Cleanup();
            s.Abandon();
        }
    }

    /// <summary>The state of one file_write while it runs.</summary>
    private sealed class FileWriteOperation(FileWriteStream s, FileWriteRequest request, UserIdentity user, string path, AccountFiles accounts)
    {
        private int _fd = -1;
        private string? _temp;
        private string _target = "";

        public void Run()
        {
            _target = path;
            if (!Open())
                return;
            if (request.ExpectedSize > 0 && !HasRoomFor(request.ExpectedSize))
            {
                s.Session.RespondError(s, "no_space", $"write {path}: {request.ExpectedSize} bytes do not fit on the file system");
                return;
            }
            while (true)
            {
                if (!s.Take(out var chunk, out bool final))
                    return; // cancelled, or the connection went away
                if (chunk.Length > 0)
                {
                    int e = Libc.WriteAll(_fd, chunk);
                    if (e != 0)
                    {
                        Fail(s, "write", path, e);
                        return;
                    }
                    s.Session.GrantRecv(s, chunk.Length, force: s.QueuedCount == 0);
                }
                if (final)
                    break;
            }
            // Flush before answering: a file system that caches writes (gVisor's gofer) reports a
            // full disk only here, and the atomic replace below must not publish a short file.
            if (Libc.fdatasync(_fd) < 0 && Libc.Errno is not (Libc.EINVAL or Libc.ENOSYS))
            {
                Fail(s, "write", path, Libc.Errno);
                return;
            }
            if (_temp is not null)
            {
                if (!Enter(s, user, out var scope))
                    return;
                using (scope)
                {
                    int r;
                    fixed (byte* from = Libc.Z(_temp))
                    fixed (byte* to = Libc.Z(_target))
                        r = Libc.renameat(Libc.AT_FDCWD, from, Libc.AT_FDCWD, to);
                    if (r < 0)
                    {
                        Fail(s, "write", path, Libc.Errno);
                        return;
                    }
                }
                _temp = null;
            }
            MoatStat st;
            Native.moat_fstat(_fd, &st);
            s.Session.Respond(s, new Response { FileInfo = InfoOf(path, st) }, final: true);
        }

        private FileInfo InfoOf(string p, in MoatStat st)
        {
            return new FileInfo
            {
                Name = SandboxPath.Name(p), Path = p, Type = FileType.File, Size = st.Size, Mode = st.Mode,
                MtimeUnixMs = st.MtimeUnixMs, Uid = st.Uid, Gid = st.Gid,
                Owner = accounts.ByUid(st.Uid)?.Name ?? "", Group = accounts.GroupByGid(st.Gid)?.Name ?? "",
            };
        }

        private bool Open()
        {
            if (!Enter(s, user, out var scope))
                return false;
            using (scope)
            {
                string dir = SandboxPath.Parent(path);
                if (request.CreateParents)
                {
                    int e = MakeDirectories(dir, 0x1ED /* 0755 */);
                    if (e != 0)
                    {
                        Fail(s, "create parents of", path, e);
                        return false;
                    }
                }
                // Resolve the directory first (realpath, one component at a time) and work on the
                // real path: the kernel then never walks a symlink inside the path itself. Same
                // result on Linux; on gVisor it avoids a stat through a link to / that reports a
                // missing file as the directory it is in.
                string? realDir = RealPath(dir, out int re);
                if (realDir is null)
                {
                    Fail(s, "write", path, re);
                    return false;
                }
                _target = SandboxPath.Join(realDir, SandboxPath.Name(path));
                int se = StatAt(Libc.AT_FDCWD, _target, follow: true, out var existing);
                bool exists = se == 0;
                if (exists && existing.IsDirectory)
                {
                    s.Session.RespondError(s, "is_a_directory", $"write {path}: is a directory");
                    return false;
                }
                if (exists && !existing.IsRegular)
                {
                    s.Session.RespondError(s, "not_a_file", $"write {path}: not a regular file");
                    return false;
                }
                if (se != 0 && se != Libc.ENOENT)
                {
                    Fail(s, "write", path, se);
                    return false;
                }
                int mode = request.Mode != 0 ? (int)(request.Mode & 0xFFF /* 07777 */) : exists ? (int)(existing.Mode & 0xFFF /* 07777 */) : 0x1A4 /* 0644 */;

                if (request.Append)
                {
                    fixed (byte* p = Libc.Z(_target))
                        _fd = Libc.open(p, Libc.O_WRONLY | Libc.O_APPEND | Libc.O_CREAT | Libc.O_CLOEXEC | Libc.O_NONBLOCK | Libc.O_NOCTTY, mode);
                    if (_fd < 0)
                    {
                        Fail(s, "write", path, Libc.Errno);
                        return false;
                    }
                    MoatStat st;
                    if (Native.moat_fstat(_fd, &st) < 0 || !st.IsRegular)
                    {
                        s.Session.RespondError(s, "not_a_file", $"write {path}: not a regular file");
                        return false;
                    }
                    return true;
                }

                // A symlink to a file is followed (the sandbox's own link, resolved in its root):
                // the file it points to is replaced, not the link.
                if (exists && StatAt(Libc.AT_FDCWD, _target, follow: false, out var link) == 0 && link.IsSymlink)
                    _target = RealPath(_target, out _) ?? _target;
                string targetDir = SandboxPath.Parent(_target);
                for (int attempt = 0; attempt < 16 && _fd < 0; attempt++)
                {
                    string temp = SandboxPath.Join(targetDir, $".{Truncate(SandboxPath.Name(_target))}.moat-{Random.Shared.NextInt64():x16}.tmp");
                    fixed (byte* p = Libc.Z(temp))
                        _fd = Libc.open(p, Libc.O_WRONLY | Libc.O_CREAT | Libc.O_EXCL | Libc.O_CLOEXEC | Libc.O_NOFOLLOW | Libc.O_NOCTTY, 0x180 /* 0600 */);
                    if (_fd >= 0)
                    {
                        _temp = temp;
                        break;
                    }
                    if (Libc.Errno != Libc.EEXIST)
                    {
                        Fail(s, "write", path, Libc.Errno);
                        return false;
                    }
                }
                if (_fd < 0)
                {
                    s.Session.RespondError(s, "io_error", $"write {path}: cannot create a temporary file");
                    return false;
                }
                // The replacement keeps the owner of the file it replaces (root may write other users' files).
                if (exists && user.IsRoot)
                    Libc.fchown(_fd, existing.Uid, existing.Gid);
                Libc.fchmod(_fd, mode);
                return true;
            }
        }

        private bool HasRoomFor(long bytes)
        {
            MoatStatfs fs;
            int r;
            fixed (byte* p = Libc.Z(SandboxPath.Parent(_target)))
                r = Native.moat_statfs(p, &fs);
            return r < 0 || (ulong)bytes <= fs.BlocksAvailable * fs.BlockSize;
        }

        public void Cleanup()
        {
            if (_fd >= 0)
            {
                Libc.close(_fd);
                _fd = -1;
            }
            if (_temp is null)
                return;
            using var scope = FsIdentity.Enter(user);
            fixed (byte* p = Libc.Z(_temp))
                Libc.unlinkat(Libc.AT_FDCWD, p, 0);
            _temp = null;
        }

        private static string Truncate(string name) => name.Length > 100 ? name[..100] : name;
    }

    private static string? RealPath(string path, out int errno)
    {
        byte* buffer = stackalloc byte[SandboxPath.MaxLength + 1];
        errno = 0;
        fixed (byte* p = Libc.Z(path))
        {
            if (realpath(p, buffer) == null)
            {
                errno = Libc.Errno;
                return null;
            }
        }
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.MemoryMarshal.CreateReadOnlySpanFromNullTerminated(buffer));
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern byte* realpath(byte* path, byte* resolved);

    /// <summary>mkdir -p. Returns 0 or an errno. Runs under the caller's identity scope.</summary>
    private static int MakeDirectories(string path, int mode)
    {
        if (path == "/")
            return 0;
        int e = StatAt(Libc.AT_FDCWD, path, follow: true, out var st);
        if (e == 0)
            return st.IsDirectory ? 0 : Libc.ENOTDIR;
        if (e != Libc.ENOENT)
            return e;
        e = MakeDirectories(SandboxPath.Parent(path), mode);
        if (e != 0)
            return e;
        int r;
        fixed (byte* p = Libc.Z(path))
            r = Libc.mkdirat(Libc.AT_FDCWD, p, mode);
        if (r < 0 && Libc.Errno != Libc.EEXIST)
            return Libc.Errno;
        return 0;
    }

    // ---- list_dir ----

    private void ListDir(SimpleStream s, ListDirRequest request)
    {
        if (!Prepare(s, request.User, request.Path, out var user, out var path))
            return;
        int depth = (int)Math.Clamp(request.Depth, 1u, (uint)MaxDepth);
        int max = request.MaxEntries == 0 ? DefaultMaxEntries : (int)Math.Min(request.MaxEntries, 10_000_000u);
        var listing = new Listing(s, users.Files, max, Math.Min(s.Session.PeerMaxPayload / 2, 256 * 1024));
        if (!Enter(s, user, out var scope))
            return;
        using (scope)
        {
            int e = StatAt(Libc.AT_FDCWD, path, follow: true, out var st);
            if (e != 0)
            {
                Fail(s, "list", path, e);
                return;
            }
            if (!st.IsDirectory)
            {
                s.Session.RespondError(s, "not_a_directory", $"list {path}: not a directory");
                return;
            }
            int fd;
            fixed (byte* p = Libc.Z(path))
                fd = Libc.open(p, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
            if (fd < 0)
            {
                Fail(s, "list", path, Libc.Errno);
                return;
            }
            ListInto(fd, path, 1, depth, listing);
        }
        listing.Finish();
    }

    // Takes ownership of dirfd. Children are opened relative to their parent with O_NOFOLLOW, so
    // a symlink is listed, never descended into, even if it is swapped in while we list.
    private void ListInto(int dirfd, string dirPath, int level, int depth, Listing listing)
    {
        nint dir = Native.moat_fdopendir(dirfd);
        if (dir == 0)
        {
            Libc.close(dirfd);
            return;
        }
        var subdirs = new List<string>();
        try
        {
            byte* name = stackalloc byte[512];
            while (!listing.Full && !listing.Stopped)
            {
                int type;
                int len = Native.moat_readdir(dir, name, 512, &type);
                if (len <= 0)
                    break;
                string entryName = Encoding.UTF8.GetString(name, len);
                MoatStat st;
                if (Native.moat_fstatat(dirfd, name, Libc.AT_SYMLINK_NOFOLLOW, &st) < 0)
                    continue; // vanished meanwhile
                string entryPath = SandboxPath.Join(dirPath, entryName);
                string target = st.IsSymlink ? ReadLinkAt(dirfd, name) : "";
                listing.Add(Info(entryPath, st, listing.Accounts, target));
                if (st.IsDirectory && level < depth)
                    subdirs.Add(entryName);
            }
            if (!listing.Full && !listing.Stopped)
            {
                foreach (var sub in subdirs)
                {
                    if (listing.Full || listing.Stopped)
                        break;
                    int fd;
                    fixed (byte* p = Libc.Z(sub))
                        fd = Libc.openat(dirfd, p, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_NOFOLLOW | Libc.O_CLOEXEC, 0);
                    if (fd >= 0)
                        ListInto(fd, SandboxPath.Join(dirPath, sub), level + 1, depth, listing);
                }
            }
        }
        finally
        {
            Native.moat_closedir(dir);
        }
    }

    private static string ReadLinkAt(int dirfd, byte* name)
    {
        byte* buffer = stackalloc byte[SandboxPath.MaxLength + 1];
        nint n = Libc.readlinkat(dirfd, name, buffer, SandboxPath.MaxLength);
        return n <= 0 ? "" : Encoding.UTF8.GetString(buffer, (int)n);
    }

    /// <summary>Entries being collected for a list_dir reply, sent in batches that fit a frame.</summary>
    private sealed class Listing(SimpleStream s, AccountFiles accounts, int max, int batchBytes)
    {
        private DirEntries _batch = new();
        private int _batchSize;
        private int _count;

        public AccountFiles Accounts => accounts;
        public bool Full { get; private set; }
        public bool Stopped => s.Ended;

        public void Add(FileInfo info)
        {
            if (_count >= max)
            {
                Full = true;
                return;
            }
            _count++;
            _batch.Entries.Add(info);
            _batchSize += info.CalculateSize() + 4;
            if (_batchSize >= batchBytes)
            {
                s.Session.Respond(s, new Response { Entries = _batch }, final: false);
                _batch = new DirEntries();
                _batchSize = 0;
            }
        }

        public void Finish()
        {
            _batch.Truncated = Full;
            s.Session.Respond(s, new Response { Entries = _batch }, final: true);
        }
    }

    // ---- stat, make_dir ----

    private void Stat(SimpleStream s, StatRequest request)
    {
        if (!Prepare(s, request.User, request.Path, out var user, out var path))
            return;
        if (!Enter(s, user, out var scope))
            return;
        FileInfo info;
        using (scope)
        {
            int e = StatAt(Libc.AT_FDCWD, path, follow: false, out var st);
            if (e != 0)
            {
                Fail(s, "stat", path, e);
                return;
            }
            info = Info(path, st, users.Files, st.IsSymlink ? ReadLink(Libc.AT_FDCWD, path) : "");
        }
        s.Session.Respond(s, new Response { FileInfo = info }, final: true);
    }

    private void MakeDir(SimpleStream s, MakeDirRequest request)
    {
        if (!Prepare(s, request.User, request.Path, out var user, out var path))
            return;
        int mode = request.Mode == 0 ? 0x1ED /* 0755 */ : (int)(request.Mode & 0xFFF /* 07777 */);
        if (!Enter(s, user, out var scope))
            return;
        FileInfo info;
        using (scope)
        {
            if (request.Parents)
            {
                int e = MakeDirectories(path, mode);
                if (e != 0)
                {
                    Fail(s, "mkdir", path, e == Libc.ENOTDIR ? Libc.EEXIST : e);
                    return;
                }
            }
            else
            {
                int r;
                fixed (byte* p = Libc.Z(path))
                    r = Libc.mkdirat(Libc.AT_FDCWD, p, mode);
                if (r < 0)
                {
                    Fail(s, "mkdir", path, Libc.Errno);
                    return;
                }
            }
            if (request.Mode != 0)
            {
                fixed (byte* p = Libc.Z(path))
                    Libc.chmod(p, mode); // exact bits, whatever the umask
            }
            int se = StatAt(Libc.AT_FDCWD, path, follow: false, out var st);
            if (se != 0)
            {
                Fail(s, "mkdir", path, se);
                return;
            }
            info = Info(path, st, users.Files);
        }
        s.Session.Respond(s, new Response { FileInfo = info }, final: true);
    }

    // ---- remove ----

    private void Remove(SimpleStream s, RemoveRequest request)
    {
        if (!Prepare(s, request.User, request.Path, out var user, out var path))
            return;
        if (path == "/")
        {
            s.Session.RespondError(s, "invalid_argument", "refusing to remove /");
            return;
        }
        if (!Enter(s, user, out var scope))
            return;
        using (scope)
        {
            int e = StatAt(Libc.AT_FDCWD, path, follow: false, out var st);
            if (e != 0)
            {
                Fail(s, "remove", path, e);
                return;
            }
            int r;
            if (!st.IsDirectory)
            {
                fixed (byte* p = Libc.Z(path))
                    r = Libc.unlinkat(Libc.AT_FDCWD, p, 0);
                e = r < 0 ? Libc.Errno : 0;
            }
            else if (!request.Recursive)
            {
                fixed (byte* p = Libc.Z(path))
                    r = Libc.unlinkat(Libc.AT_FDCWD, p, Libc.AT_REMOVEDIR);
                e = r < 0 ? Libc.Errno : 0;
                if (e == Libc.EEXIST)
                    e = Libc.ENOTEMPTY;
            }
            else
            {
                int parent;
                fixed (byte* p = Libc.Z(SandboxPath.Parent(path)))
                    parent = Libc.open(p, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
                if (parent < 0)
                {
                    Fail(s, "remove", path, Libc.Errno);
                    return;
                }
                try
                {
                    e = RemoveTree(parent, SandboxPath.Name(path), 0);
                }
                finally
                {
                    Libc.close(parent);
                }
            }
            if (e != 0)
            {
                Fail(s, "remove", path, e);
                return;
            }
        }
        s.Session.Respond(s, new Response { Ok = new Ok() }, final: true);
    }

    // Removes parentfd/name, a directory, with everything below it. Never follows a symlink:
    // directories are opened with O_NOFOLLOW relative to their parent, links are unlinked.
    private static int RemoveTree(int parentfd, string name, int level)
    {
        if (level > MaxDepth)
            return Libc.ELOOP;
        byte[] z = Libc.Z(name);
        int fd;
        fixed (byte* p = z)
            fd = Libc.openat(parentfd, p, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_NOFOLLOW | Libc.O_CLOEXEC, 0);
        if (fd < 0)
        {
            int oe = Libc.Errno;
            if (oe != Libc.ENOTDIR && oe != Libc.ELOOP)
                return oe;
            // Replaced by a file or link meanwhile: just unlink it.
            fixed (byte* p = z)
                return Libc.unlinkat(parentfd, p, 0) < 0 ? Libc.Errno : 0;
        }
        nint dir = Native.moat_fdopendir(fd);
        if (dir == 0)
        {
            Libc.close(fd);
            return Libc.ENOMEM;
        }
        int result = 0;
        try
        {
            byte* entry = stackalloc byte[512];
            while (true)
            {
                int type;
                int len = Native.moat_readdir(dir, entry, 512, &type);
                if (len <= 0)
                    break;
                MoatStat st;
                if (Native.moat_fstatat(fd, entry, Libc.AT_SYMLINK_NOFOLLOW, &st) < 0)
                    continue;
                int e;
                if (st.IsDirectory)
                {
                    e = RemoveTree(fd, Encoding.UTF8.GetString(entry, len), level + 1);
                }
                else
                {
                    e = Libc.unlinkat(fd, entry, 0) < 0 ? Libc.Errno : 0;
                    if (e == Libc.ENOENT)
                        e = 0;
                }
                if (e != 0 && result == 0)
                    result = e;
            }
        }
        finally
        {
            Native.moat_closedir(dir);
        }
        if (result != 0)
            return result;
        fixed (byte* p = z)
            return Libc.unlinkat(parentfd, p, Libc.AT_REMOVEDIR) < 0 ? Libc.Errno : 0;
    }

    // ---- rename ----

    private void Rename(SimpleStream s, RenameRequest request)
    {
        if (!Prepare(s, request.User, request.From, out var user, out var from))
            return;
        var to = SandboxPath.Normalize(request.To, user.Home);
        if (to is null)
        {
            s.Session.RespondError(s, "invalid_argument", "the destination path is empty, too long or contains NUL");
            return;
        }
        if (from == "/" || to == "/")
        {
            s.Session.RespondError(s, "invalid_argument", "cannot rename /");
            return;
        }
        if (!Enter(s, user, out var scope))
            return;
        using (scope)
        {
            int r;
            byte[] zf = Libc.Z(from), zt = Libc.Z(to);
            fixed (byte* f = zf)
            fixed (byte* t = zt)
            {
                if (request.Overwrite)
                {
                    r = Libc.renameat(Libc.AT_FDCWD, f, Libc.AT_FDCWD, t);
                }
                else
                {
                    r = Libc.renameat2(Libc.AT_FDCWD, f, Libc.AT_FDCWD, t, Libc.RENAME_NOREPLACE);
                    if (r < 0 && (Libc.Errno == Libc.EINVAL || Libc.Errno == Libc.ENOSYS))
                    {
                        // A file system without RENAME_NOREPLACE: check, then rename (racy, but only
                        // against the sandbox itself).
                        if (StatAt(Libc.AT_FDCWD, to, follow: false, out _) == 0)
                        {
                            s.Session.RespondError(s, "already_exists", $"rename {from} → {to}: destination exists");
                            return;
                        }
                        r = Libc.renameat(Libc.AT_FDCWD, f, Libc.AT_FDCWD, t);
                    }
                }
            }
            if (r < 0)
            {
                Fail(s, "rename", from, Libc.Errno);
                return;
            }
        }
        s.Session.Respond(s, new Response { Ok = new Ok() }, final: true);
    }
}
