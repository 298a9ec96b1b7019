using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Http;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Protocol.Messages;
using Moat.Server.E2b.Connect;
using FileInfo = Moat.Protocol.Messages.FileInfo;

namespace Moat.Server.E2b.Envd;

/// <summary>
/// envd's <c>filesystem.Filesystem</c> service, relayed to the sandbox's agent (which resolves
/// every path inside the sandbox's own root): Stat, MakeDir, Move, ListDir, Remove, and watching
/// a directory (WatchDir as a stream; CreateWatcher / GetWatcherEvents / RemoveWatcher as polls).
/// Moat's agent has no inotify, so watches poll the directory through it (every 200 ms) and
/// report what changed between two looks: CREATE, WRITE (size or mtime), CHMOD and REMOVE. A
/// rename shows as REMOVE + CREATE, and a change undone within one interval is not seen.
/// </summary>
internal sealed partial class FilesystemService(SandboxManager manager)
{
    public const string Service = "filesystem.Filesystem";
    private const int MaxWatchersPerSandbox = 64;
    private const int MaxQueuedEvents = 10_000;
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(200);
    private static readonly TimeSpan WatcherIdleLimit = TimeSpan.FromMinutes(10);
    private readonly ConcurrentDictionary<string, Watcher> _watchers = new();

    public Task HandleAsync(HttpContext context, SandboxTarget target, string method) => method switch
    {
        "Stat" => EnvdRpc.UnaryAsync(context, E2bJson.Default.PathRequest, E2bJson.Default.EntryResponse, r => StatAsync(context, target, r)),
        "MakeDir" => EnvdRpc.UnaryAsync(context, E2bJson.Default.PathRequest, E2bJson.Default.EntryResponse, r => MakeDirAsync(context, target, r)),
        "Move" => EnvdRpc.UnaryAsync(context, E2bJson.Default.MoveRequest, E2bJson.Default.EntryResponse, r => MoveAsync(context, target, r)),
        "ListDir" => EnvdRpc.UnaryAsync(context, E2bJson.Default.ListDirRequest, E2bJson.Default.ListDirResponse, r => ListDirAsync(context, target, r)),
        "Remove" => EnvdRpc.UnaryAsync(context, E2bJson.Default.PathRequest, E2bJson.Default.Empty, r => RemoveAsync(context, target, r)),
        "WatchDir" => WatchDirAsync(context, target),
        "CreateWatcher" => EnvdRpc.UnaryAsync(context, E2bJson.Default.WatchDirRequest, E2bJson.Default.CreateWatcherResponse, r => CreateWatcherAsync(context, target, r)),
        "GetWatcherEvents" => EnvdRpc.UnaryAsync(context, E2bJson.Default.WatcherRequest, E2bJson.Default.GetWatcherEventsResponse, r => Task.FromResult(GetWatcherEvents(target, r))),
        "RemoveWatcher" => EnvdRpc.UnaryAsync(context, E2bJson.Default.WatcherRequest, E2bJson.Default.Empty, r => RemoveWatcherAsync(target, r)),
        _ => EnvdRpc.UnimplementedAsync(context, Service, method),
    };

    private static string PathOf(string? path) =>
        string.IsNullOrEmpty(path) ? throw new ConnectException(ConnectCode.InvalidArgument, "path is required") : path;

    private async Task<EntryResponse> StatAsync(HttpContext context, SandboxTarget target, PathRequest request)
    {
        var info = await manager.StatFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, PathOf(request.Path), target.User, context.RequestAborted).ConfigureAwait(false);
        return new EntryResponse { Entry = Entry(info) };
    }

    /// <summary>Creates the directory and its parents; one that exists is already_exists (the SDK's makeDir returns false).</summary>
    private async Task<EntryResponse> MakeDirAsync(HttpContext context, SandboxTarget target, PathRequest request)
    {
        var path = PathOf(request.Path);
        var existing = await TryStatAsync(target, path, context.RequestAborted).ConfigureAwait(false);
        if (existing is not null)
        {
            throw existing.Type == FileType.Directory
                ? new ConnectException(ConnectCode.AlreadyExists, $"directory already exists: {existing.Path}")
                : new ConnectException(ConnectCode.InvalidArgument, $"path already exists but it is not a directory: {existing.Path}");
        }
        var info = await manager.MakeDirectoryAsync(target.Sandbox.Id, target.Sandbox.TenantId, path, target.User, context.RequestAborted).ConfigureAwait(false);
        return new EntryResponse { Entry = Entry(info) };
    }

    private async Task<FileInfo?> TryStatAsync(SandboxTarget target, string path, CancellationToken cancellationToken)
    {
        try
        {
            return await manager.StatFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, path, target.User, cancellationToken).ConfigureAwait(false);
        }
        catch (AgentOperationException ex) when (ex.Code == "not_found")
        {
            return null;
        }
    }

    /// <summary>Renames (replacing the destination), creating the destination's parent directories as envd does.</summary>
    private async Task<EntryResponse> MoveAsync(HttpContext context, SandboxTarget target, MoveRequest request)
    {
        var source = PathOf(request.Source);
        var destination = string.IsNullOrEmpty(request.Destination) ? throw new ConnectException(ConnectCode.InvalidArgument, "destination is required") : request.Destination;
        // (A relative path is relative to the user's home, which exists.)
        var parent = destination.TrimEnd('/').LastIndexOf('/') is > 0 and var slash ? destination[..slash] : null;
        if (parent is not null && await TryStatAsync(target, parent, context.RequestAborted).ConfigureAwait(false) is null)
            await manager.MakeDirectoryAsync(target.Sandbox.Id, target.Sandbox.TenantId, parent, target.User, context.RequestAborted).ConfigureAwait(false);
        try
        {
            await manager.RenameFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, source, destination, target.User, context.RequestAborted).ConfigureAwait(false);
        }
        catch (AgentOperationException ex) when (ex.Code == "not_found")
        {
            throw new ConnectException(ConnectCode.NotFound, $"source file not found: {ex.Message}");
        }
        var info = await manager.StatFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, destination, target.User, context.RequestAborted).ConfigureAwait(false);
        return new EntryResponse { Entry = Entry(info) };
    }

    private async Task<ListDirResponse> ListDirAsync(HttpContext context, SandboxTarget target, ListDirRequest request)
    {
        int depth = (int)Math.Clamp(request.Depth is null or 0 ? 1u : request.Depth.Value, 1u, 32u);
        var path = PathOf(request.Path);
        var root = await manager.StatFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, path, target.User, context.RequestAborted).ConfigureAwait(false);
        if (root.Type is not FileType.Directory and not FileType.Symlink)
            throw new ConnectException(ConnectCode.InvalidArgument, $"path is not a directory: {root.Path}");
        var (entries, _) = await manager.ListFilesAsync(target.Sandbox.Id, target.Sandbox.TenantId, path, depth, target.User, context.RequestAborted).ConfigureAwait(false);
        return new ListDirResponse { Entries = entries.Select(Entry).ToList() };
    }

    /// <summary>Removes a file or a directory tree; a path that is not there is not an error (as envd's RemoveAll).</summary>
    private async Task<Empty> RemoveAsync(HttpContext context, SandboxTarget target, PathRequest request)
    {
        try
        {
            await manager.RemoveFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, PathOf(request.Path), target.User, context.RequestAborted).ConfigureAwait(false);
        }
        catch (AgentOperationException ex) when (ex.Code == "not_found")
        {
        }
        return new Empty();
    }

    // ---- watching ----

    private Task WatchDirAsync(HttpContext context, SandboxTarget target) => EnvdRpc.StreamAsync(context, E2bJson.Default.WatchDirRequest, async (request, stream, ct) =>
    {
        var watch = await DirectoryWatch.StartAsync(manager, target, PathOf(request.Path), request.Recursive == true, request.IncludeEntry == true, ct).ConfigureAwait(false);
        await stream.WriteAsync(new WatchDirResponse { Start = new Empty() }, E2bJson.Default.WatchDirResponse, ct).ConfigureAwait(false);
        await using var keepalive = EnvdRpc.Keepalive(context, stream, new WatchDirResponse { Keepalive = new Empty() }, E2bJson.Default.WatchDirResponse, ct);
        while (true)
        {
            await Task.Delay(PollInterval, ct).ConfigureAwait(false);
            foreach (var evt in await watch.PollAsync(ct).ConfigureAwait(false))
                await stream.WriteAsync(new WatchDirResponse { Filesystem = evt }, E2bJson.Default.WatchDirResponse, ct).ConfigureAwait(false);
        }
    });

    private async Task<CreateWatcherResponse> CreateWatcherAsync(HttpContext context, SandboxTarget target, WatchDirRequest request)
    {
        RemoveIdleWatchers();
        if (_watchers.Values.Count(w => w.SandboxId == target.Sandbox.Id) >= MaxWatchersPerSandbox)
            throw new ConnectException(ConnectCode.ResourceExhausted, $"sandbox {target.Sandbox.Id} already has {MaxWatchersPerSandbox} watchers; remove some");
        var watch = await DirectoryWatch.StartAsync(manager, target, PathOf(request.Path), request.Recursive == true, request.IncludeEntry == true, context.RequestAborted).ConfigureAwait(false);
        var id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12));
        var watcher = new Watcher(target.Sandbox.Id, watch);
        _watchers[id] = watcher;
        watcher.Start(() => _watchers.TryRemove(id, out _));
        return new CreateWatcherResponse { WatcherId = id };
    }

    private GetWatcherEventsResponse GetWatcherEvents(SandboxTarget target, WatcherRequest request)
    {
        var watcher = FindWatcher(target, request.WatcherId);
        return new GetWatcherEventsResponse { Events = watcher.Drain() };
    }

    private async Task<Empty> RemoveWatcherAsync(SandboxTarget target, WatcherRequest request)
    {
        var watcher = FindWatcher(target, request.WatcherId);
        _watchers.TryRemove(request.WatcherId!, out _);
        await watcher.StopAsync().ConfigureAwait(false);
        return new Empty();
    }

    private Watcher FindWatcher(SandboxTarget target, string? id) =>
        id is not null && _watchers.TryGetValue(id, out var w) && w.SandboxId == target.Sandbox.Id
            ? w
            : throw new ConnectException(ConnectCode.NotFound, $"watcher with id {id} not found");

    private void RemoveIdleWatchers()
    {
        foreach (var (id, w) in _watchers)
        {
            if (w.IdleFor > WatcherIdleLimit && _watchers.TryRemove(id, out _))
                _ = w.StopAsync();
        }
    }

    /// <summary>A watcher polled by GetWatcherEvents: events queue (bounded) until drained.</summary>
    private sealed class Watcher(string sandboxId, DirectoryWatch watch)
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly Lock _lock = new();
        private readonly List<FilesystemEvent> _queue = [];
        private long _lastDrain = Environment.TickCount64;
        private Task _loop = Task.CompletedTask;

        public string SandboxId { get; } = sandboxId;

        public TimeSpan IdleFor => TimeSpan.FromMilliseconds(Environment.TickCount64 - Interlocked.Read(ref _lastDrain));

        public void Start(Action onEnded) => _loop = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    await Task.Delay(PollInterval, _stop.Token).ConfigureAwait(false);
                    var events = await watch.PollAsync(_stop.Token).ConfigureAwait(false);
                    lock (_lock)
                    {
                        _queue.AddRange(events);
                        if (_queue.Count > MaxQueuedEvents)
                            _queue.RemoveRange(0, _queue.Count - MaxQueuedEvents);
                    }
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or MoatException)
            {
                // Stopped, or the sandbox (or the directory) is gone.
                onEnded();
            }
        });

        public List<FilesystemEvent> Drain()
        {
            Interlocked.Exchange(ref _lastDrain, Environment.TickCount64);
            lock (_lock)
            {
                var events = _queue.ToList();
                _queue.Clear();
                return events;
            }
        }

        public async Task StopAsync()
        {
            await _stop.CancelAsync().ConfigureAwait(false);
            await _loop.ConfigureAwait(false);
        }
    }

    // ---- EntryInfo ----

    /// <summary>An agent file entry as envd's EntryInfo (Go's os.FileMode in <c>mode</c> and <c>permissions</c>).</summary>
    internal static EntryInfo Entry(FileInfo f)
    {
        uint mode = GoMode(f);
        return new EntryInfo
        {
            Name = f.Name,
            Type = f.Type switch
            {
                FileType.File => "FILE_TYPE_FILE",
                FileType.Directory => "FILE_TYPE_DIRECTORY",
                FileType.Symlink => "FILE_TYPE_SYMLINK",
                _ => "FILE_TYPE_UNSPECIFIED",
            },
            Path = f.Path,
            Size = f.Size.ToString(System.Globalization.CultureInfo.InvariantCulture),
            Mode = mode,
            Permissions = GoModeString(mode),
            Owner = string.IsNullOrEmpty(f.Owner) ? f.Uid.ToString(System.Globalization.CultureInfo.InvariantCulture) : f.Owner,
            Group = string.IsNullOrEmpty(f.Group) ? f.Gid.ToString(System.Globalization.CultureInfo.InvariantCulture) : f.Group,
            ModifiedTime = DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(f.MtimeUnixMs, 0, 253402300799999)).UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", System.Globalization.CultureInfo.InvariantCulture),
            SymlinkTarget = f.Type == FileType.Symlink && !string.IsNullOrEmpty(f.SymlinkTarget) ? f.SymlinkTarget : null,
        };
    }

    private const uint GoDir = 1u << 31, GoSymlink = 1u << 27, GoDevice = 1u << 26, GoPipe = 1u << 25, GoSocket = 1u << 24,
        GoSetuid = 1u << 23, GoSetgid = 1u << 22, GoCharDevice = 1u << 21, GoSticky = 1u << 20;

    private static uint GoMode(FileInfo f)
    {
        uint mode = f.Mode & 0x1FF;
        mode |= f.Type switch
        {
            FileType.Directory => GoDir,
            FileType.Symlink => GoSymlink,
            FileType.Fifo => GoPipe,
            FileType.Socket => GoSocket,
            FileType.CharDevice => GoDevice | GoCharDevice,
            FileType.BlockDevice => GoDevice,
            _ => 0u,
        };
        if ((f.Mode & 0x800) != 0)
            mode |= GoSetuid;
        if ((f.Mode & 0x400) != 0)
            mode |= GoSetgid;
        if ((f.Mode & 0x200) != 0)
            mode |= GoSticky;
        return mode;
    }

    /// <summary>What Go's FileMode.String() prints, e.g. <c>drwxr-xr-x</c>.</summary>
    private static string GoModeString(uint mode)
    {
        const string types = "dalTLDpSugct?";
        var chars = new List<char>(16);
        for (int i = 0; i < types.Length; i++)
        {
            if ((mode & (1u << (31 - i))) != 0)
                chars.Add(types[i]);
        }
        if (chars.Count == 0)
            chars.Add('-');
        const string rwx = "rwxrwxrwx";
        for (int i = 0; i < 9; i++)
            chars.Add((mode & (1u << (8 - i))) != 0 ? rwx[i] : '-');
        return new string([.. chars]);
    }

    /// <summary>The agent's temporary file of an atomic write: not a change anyone made.</summary>
    [GeneratedRegex(@"\.moat-[0-9a-f]{16}\.tmp$")]
    internal static partial Regex AgentTempFile();
}

/// <summary>One polled watch of a directory: the last look, and what differs in the next.</summary>
internal sealed class DirectoryWatch
{
    private readonly SandboxManager _manager;
    private readonly SandboxTarget _target;
    private readonly string _root;
    private readonly int _depth;
    private readonly bool _includeEntry;
    private Dictionary<string, FileInfo> _last;

    private DirectoryWatch(SandboxManager manager, SandboxTarget target, string root, int depth, bool includeEntry, Dictionary<string, FileInfo> first)
    {
        _manager = manager;
        _target = target;
        _root = root;
        _depth = depth;
        _includeEntry = includeEntry;
        _last = first;
    }

    /// <summary>Checks the path is a directory and takes the first look.</summary>
    public static async Task<DirectoryWatch> StartAsync(SandboxManager manager, SandboxTarget target, string path, bool recursive, bool includeEntry, CancellationToken cancellationToken)
    {
        var root = await manager.StatFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, path, target.User, cancellationToken).ConfigureAwait(false);
        if (root.Type is not FileType.Directory and not FileType.Symlink)
            throw new ConnectException(ConnectCode.InvalidArgument, $"path {root.Path} not a directory");
        int depth = recursive ? 32 : 1;
        var first = await LookAsync(manager, target, root.Path, depth, cancellationToken).ConfigureAwait(false);
        return new DirectoryWatch(manager, target, root.Path, depth, includeEntry, first);
    }

    private static async Task<Dictionary<string, FileInfo>> LookAsync(SandboxManager manager, SandboxTarget target, string root, int depth, CancellationToken cancellationToken)
    {
        var (entries, _) = await manager.ListFilesAsync(target.Sandbox.Id, target.Sandbox.TenantId, root, depth, target.User, cancellationToken).ConfigureAwait(false);
        var look = new Dictionary<string, FileInfo>(StringComparer.Ordinal);
        string prefix = root.EndsWith('/') ? root : root + "/";
        foreach (var e in entries)
        {
            if (FilesystemService.AgentTempFile().IsMatch(e.Name))
                continue;
            string name = e.Path.StartsWith(prefix, StringComparison.Ordinal) ? e.Path[prefix.Length..] : e.Name;
            look[name] = e;
        }
        return look;
    }

    /// <summary>What changed since the last look, named relative to the watched directory.</summary>
    public async Task<List<FilesystemEvent>> PollAsync(CancellationToken cancellationToken)
    {
        var now = await LookAsync(_manager, _target, _root, _depth, cancellationToken).ConfigureAwait(false);
        var events = new List<FilesystemEvent>();
        foreach (var (name, info) in now)
        {
            if (!_last.TryGetValue(name, out var before))
            {
                events.Add(Event(name, "EVENT_TYPE_CREATE", info));
                if (info.Type == FileType.File && info.Size > 0)
                    events.Add(Event(name, "EVENT_TYPE_WRITE", info));
                continue;
            }
            if (before.Type != info.Type)
            {
                events.Add(Event(name, "EVENT_TYPE_REMOVE", null));
                events.Add(Event(name, "EVENT_TYPE_CREATE", info));
                continue;
            }
            if (before.Size != info.Size || before.MtimeUnixMs != info.MtimeUnixMs)
                events.Add(Event(name, "EVENT_TYPE_WRITE", info));
            if ((before.Mode & 0xFFF) != (info.Mode & 0xFFF) || before.Uid != info.Uid || before.Gid != info.Gid)
                events.Add(Event(name, "EVENT_TYPE_CHMOD", info));
        }
        foreach (var name in _last.Keys)
        {
            if (!now.ContainsKey(name))
                events.Add(Event(name, "EVENT_TYPE_REMOVE", null));
        }
        _last = now;
        return events;
    }

    private FilesystemEvent Event(string name, string type, FileInfo? info) => new()
    {
        Name = name,
        Type = type,
        Entry = _includeEntry && info is not null ? FilesystemService.Entry(info) : null,
    };
}
