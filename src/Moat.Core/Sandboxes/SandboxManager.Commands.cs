using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Protocol.Messages;
using FileInfo = Moat.Protocol.Messages.FileInfo;

namespace Moat.Core.Sandboxes;

/// <summary>The result of a command whose output was collected in memory.</summary>
public sealed record BufferedResult(ProcessExit Exit, byte[] Stdout, byte[] Stderr, bool StdoutTruncated, bool StderrTruncated);

public sealed partial class SandboxManager
{
    /// <summary>Default user of commands and file operations.</summary>
    public const string DefaultUser = "user";

    /// <summary>Starts a command in a running sandbox.</summary>
    public Task<SandboxCommand> StartCommandAsync(string id, string tenantId, CommandSpec command, CancellationToken cancellationToken) =>
        StartCommandAsync(id, tenantId, command, cancellationToken, detached: false);

    private async Task<SandboxCommand> StartCommandAsync(string id, string tenantId, CommandSpec command, CancellationToken cancellationToken, bool detached)
    {
        var argv = command.ResolveArgv();
        var live = await RunningAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        var agent = live.Agent ?? throw NotRunning(live.Record);
        var request = new ExecRequest
        {
            Cwd = command.Cwd ?? DefaultCwd(live),
            User = command.User ?? DefaultUserOf(live),
            Stdin = command.Stdin,
            TimeoutMs = command.Timeout is { } t ? (uint)Math.Min(uint.MaxValue, t.TotalMilliseconds) : 0,
            Tag = command.Tag ?? "",
            KeepOutput = command.KeepOutput,
            Detached = detached,
            Pty = command.Pty is { } pty ? new PtySize { Cols = (uint)pty.Cols, Rows = (uint)pty.Rows } : null,
        };
        request.Argv.AddRange(argv);
        foreach (var (name, value) in ComposeEnv(live, command.Env))
            request.Env.Add(new EnvVar { Name = name, Value = value });

        long oomBefore = await OomKillsAsync(live, cancellationToken).ConfigureAwait(false);
        AgentProcess process;
        try
        {
            process = await agent.ExecAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch (AgentOperationException ex)
        {
            throw CommandRefused(ex);
        }
        NotifyCommand(live, process, argv, request.User, request.Cwd, detached);
        if (detached)
            live.BackgroundArgv[process.Pid] = argv;
        return new SandboxCommand(process, command.Timeout, () => OomKillsAsync(live, CancellationToken.None), oomBefore, OutputObserver(live, process.Pid, argv));
    }

    /// <summary>
    /// A command the sandbox could not start is the caller's mistake (400), with a code that
    /// says which: the program, its working directory, its user.
    /// </summary>
    private static MoatException CommandRefused(AgentOperationException ex) => ex.Code switch
    {
        "not_found" when ex.Message.StartsWith("working directory", StringComparison.Ordinal) => MoatException.Invalid("invalid_cwd", ex.Message),
        "not_found" => MoatException.Invalid(CommandNotFound, ex.Message),
        "permission_denied" => MoatException.Invalid(CommandNotExecutable, ex.Message),
        "no_such_user" => MoatException.Invalid("no_such_user", ex.Message),
        "invalid_argument" or "not_a_directory" => MoatException.Invalid("invalid_command", ex.Message),
        _ => ex,
    };

    /// <summary>Error code of a command whose program does not exist (a shell would exit 127).</summary>
    public const string CommandNotFound = "command_not_found";

    /// <summary>Error code of a command whose program cannot be executed (a shell would exit 126).</summary>
    public const string CommandNotExecutable = "command_not_executable";

    /// <summary>Runs a command to its end, keeping at most the configured amount of output.</summary>
    public async Task<BufferedResult> RunCommandAsync(string id, string tenantId, CommandSpec command, ReadOnlyMemory<byte> stdin, CancellationToken cancellationToken)
    {
        await using var running = await StartCommandAsync(id, tenantId, command with { Stdin = command.Stdin || !stdin.IsEmpty }, cancellationToken).ConfigureAwait(false);
        if (command.Stdin || !stdin.IsEmpty)
        {
            await running.WriteStdinAsync(stdin, cancellationToken).ConfigureAwait(false);
            await running.CloseStdinAsync(cancellationToken).ConfigureAwait(false);
        }
        int cap = _options.MaxBufferedOutputBytes;
        using var stdout = new MemoryStream();
        using var stderr = new MemoryStream();
        bool outCut = false, errCut = false;
        try
        {
            await foreach (var chunk in running.ReadOutputAsync(cancellationToken).ConfigureAwait(false))
            {
                var sink = chunk.Stream == OutputStream.Stdout ? stdout : stderr;
                int room = (int)Math.Max(0, cap - sink.Length);
                if (chunk.Data.Length > room)
                {
                    if (chunk.Stream == OutputStream.Stdout)
                        outCut = true;
                    else
                        errCut = true;
                }
                if (room > 0)
                    sink.Write(chunk.Data.Span[..Math.Min(room, chunk.Data.Length)]);
            }
        }
        catch (OperationCanceledException)
        {
            // The caller went away: the command is not left running behind it.
            await running.KillAsync().ConfigureAwait(false);
            throw;
        }
        var exit = await running.WaitExitAsync(cancellationToken).ConfigureAwait(false);
        return new BufferedResult(exit, stdout.ToArray(), stderr.ToArray(), outCut, errCut);
    }

    /// <summary>
    /// Starts a command that outlives its request: the agent keeps its output (bounded ring)
    /// until someone attaches. Returns its pid.
    /// </summary>
    public async Task<int> StartBackgroundAsync(string id, string tenantId, CommandSpec command, CancellationToken cancellationToken)
    {
        // Started detached: the agent keeps every byte of output from the first for a later attach.
        var running = await StartCommandAsync(id, tenantId, command with { KeepOutput = true, Stdin = false }, cancellationToken, detached: true).ConfigureAwait(false);
        int pid = running.Pid;
        await running.DisposeAsync().ConfigureAwait(false);
        return pid;
    }

    /// <summary>Re-attaches to a background command by pid or tag.</summary>
    public async Task<SandboxCommand> AttachCommandAsync(string id, string tenantId, int pid, string? tag, bool replay, CancellationToken cancellationToken)
    {
        var live = await RunningAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        var agent = live.Agent ?? throw NotRunning(live.Record);
        long oomBefore = await OomKillsAsync(live, cancellationToken).ConfigureAwait(false);
        var process = await agent.AttachAsync(new AttachRequest { Pid = pid, Tag = tag ?? "", Replay = replay }, cancellationToken).ConfigureAwait(false);
        IReadOnlyList<string> argv = live.BackgroundArgv.TryGetValue(process.Pid, out var known) ? known : [];
        return new SandboxCommand(process, null, () => OomKillsAsync(live, CancellationToken.None), oomBefore, OutputObserver(live, process.Pid, argv));
    }

    /// <summary>Commands the sandbox's agent tracks.</summary>
    public async Task<IReadOnlyList<ProcessInfo>> ListCommandsAsync(string id, string tenantId, CancellationToken cancellationToken) =>
        await (await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false)).ProcessListAsync(cancellationToken).ConfigureAwait(false);

    /// <summary>Signals a process in the sandbox.</summary>
    public async Task SignalCommandAsync(string id, string tenantId, int pid, int signal, CancellationToken cancellationToken)
    {
        if (pid <= 1)
            throw MoatException.Invalid("invalid_pid", "pid must be a process of the sandbox other than its init (pid 1)");
        if (signal is < 1 or > 64)
            throw MoatException.Invalid("invalid_signal", $"signal must be 1-64, got {signal}");
        await (await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false)).SignalAsync(pid, signal, group: true, cancellationToken).ConfigureAwait(false);
    }

    // ---- files ----

    /// <summary>Opens a file in the sandbox for reading.</summary>
    public async Task<AgentFileReadStream> OpenFileAsync(string id, string tenantId, string path, string? user, CancellationToken cancellationToken)
    {
        var agent = await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        user = FileUser(user);
        return await agent.OpenReadAsync(ResolvePath(path, user), 0, 0, user, _options.MaxFileReadBytes, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Writes a file in the sandbox (parents created, atomic replace).</summary>
    public async Task<FileInfo> WriteFileAsync(string id, string tenantId, string path, Stream content, string? user, uint mode, CancellationToken cancellationToken)
    {
        var agent = await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        user = FileUser(user);
        if (mode > 0xFFF)
            throw MoatException.Invalid("invalid_mode", "mode must be permission bits (at most 07777)");
        var resolved = ResolvePath(path, user);
        using var hashed = new HashingReadStream(content);
        var written = await agent.WriteFileAsync(resolved, hashed, new FileWriteOptions { User = user, Mode = mode, CreateParents = true, MaxBytes = _options.MaxFileWriteBytes }, cancellationToken).ConfigureAwait(false);
        NotifyFileWritten(id, tenantId, resolved, hashed.BytesRead, hashed.Sha256Hex(), user);
        return written;
    }

    /// <summary>Lists a directory in the sandbox.</summary>
    public async Task<(IReadOnlyList<FileInfo> Entries, bool Truncated)> ListFilesAsync(string id, string tenantId, string path, int depth, string? user, CancellationToken cancellationToken)
    {
        if (depth is < 1 or > 32)
            throw MoatException.Invalid("invalid_depth", $"depth must be 1-32, got {depth}");
        var agent = await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        user = FileUser(user);
        return await agent.ListDirAsync(ResolvePath(path, user), depth, 10000, user, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Metadata of a path in the sandbox.</summary>
    public async Task<FileInfo> StatFileAsync(string id, string tenantId, string path, string? user, CancellationToken cancellationToken)
    {
        var agent = await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        user = FileUser(user);
        return await agent.StatAsync(ResolvePath(path, user), user, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Creates a directory (and its parents) in the sandbox.</summary>
    public async Task<FileInfo> MakeDirectoryAsync(string id, string tenantId, string path, string? user, CancellationToken cancellationToken)
    {
        var agent = await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        user = FileUser(user);
        return await agent.MakeDirAsync(ResolvePath(path, user), parents: true, user, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Removes a file or directory tree in the sandbox.</summary>
    public async Task RemoveFileAsync(string id, string tenantId, string path, string? user, CancellationToken cancellationToken)
    {
        var agent = await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        user = FileUser(user);
        await agent.RemoveAsync(ResolvePath(path, user), recursive: true, user, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Renames a path in the sandbox.</summary>
    public async Task RenameFileAsync(string id, string tenantId, string from, string to, string? user, CancellationToken cancellationToken)
    {
        var agent = await AgentOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        user = FileUser(user);
        await agent.RenameAsync(ResolvePath(from, user), ResolvePath(to, user), overwrite: true, user, cancellationToken).ConfigureAwait(false);
    }

    private async Task<AgentClient> AgentOfAsync(string id, string tenantId, CancellationToken cancellationToken)
    {
        var live = await RunningAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        return live.Agent ?? throw NotRunning(live.Record);
    }

    private static string FileUser(string? user)
    {
        user = string.IsNullOrEmpty(user) ? DefaultUser : user;
        if (!CommandSpec.ValidUser(user))
            throw MoatException.Invalid("invalid_user", $"'{user}' is not a valid user name or uid");
        return user;
    }

    /// <summary>
    /// Checks a path from the API. Relative paths are taken from the user's home, as E2B does.
    /// Resolution itself (symlinks, "..") happens inside the sandbox, where it cannot leave the root.
    /// </summary>
    internal static string ResolvePath(string path, string user)
    {
        if (string.IsNullOrEmpty(path))
            throw MoatException.Invalid("invalid_path", "path is required");
        if (path.Length > 4096 || path.Contains('\0'))
            throw MoatException.Invalid("invalid_path", "path is longer than 4096 characters or contains a NUL byte");
        if (path[0] == '/')
            return path;
        string home = user switch
        {
            "root" or "0" => "/root",
            DefaultUser or "1000" => "/home/user",
            _ => throw MoatException.Invalid("invalid_path", $"give an absolute path for user '{user}'"),
        };
        return path == "~" ? home : home + "/" + (path.StartsWith("~/", StringComparison.Ordinal) ? path[2..] : path);
    }

    private static string DefaultCwd(LiveSandbox live) => live.Template?.Config.WorkingDir is { Length: > 1 } dir ? dir : "";

    private static string DefaultUserOf(LiveSandbox live)
    {
        // OCI's empty User means root; Moat's hardened default is the unprivileged "user".
        var user = live.Template?.Config.User ?? "";
        int colon = user.IndexOf(':');
        if (colon >= 0)
            user = user[..colon];
        return string.IsNullOrEmpty(user) ? DefaultUser : user;
    }

    private static List<KeyValuePair<string, string>> ComposeEnv(LiveSandbox live, IReadOnlyDictionary<string, string>? extra)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in live.Template?.Config.Env ?? [])
        {
            int eq = entry.IndexOf('=');
            if (eq > 0)
                env[entry[..eq]] = entry[(eq + 1)..];
        }
        // The image's HOME belongs to the image's user; the agent sets the right one for the command's user.
        env.Remove("HOME");
        foreach (var (k, v) in live.Record.Spec.Env)
            env[k] = v;
        if (extra is not null)
        {
            foreach (var (k, v) in extra)
                env[k] = v;
        }
        return env.ToList();
    }

    private static async Task<long> OomKillsAsync(LiveSandbox live, CancellationToken cancellationToken)
    {
        if (live.Runtime is null || live.Record.Instance is not { } instance)
            return 0;
        try
        {
            return (await live.Runtime.ReadUsageAsync(instance, cancellationToken).ConfigureAwait(false))?.OomKills ?? 0;
        }
        catch (IOException)
        {
            return 0;
        }
    }
}

/// <summary>
/// A command started through the manager: the agent's process plus what only the host knows —
/// whether the memory cgroup killed something, and a backstop for the command's timeout.
/// </summary>
public sealed class SandboxCommand : IAsyncDisposable
{
    private readonly AgentProcess _process;
    private readonly Func<Task<long>> _oomKills;
    private readonly long _oomBefore;
    private readonly Timer? _backstop;
    private readonly Action<CommandOutputKind, ReadOnlyMemory<byte>, int>? _observe;
    private int _exitObserved;

    internal SandboxCommand(AgentProcess process, TimeSpan? timeout, Func<Task<long>> oomKills, long oomBefore, Action<CommandOutputKind, ReadOnlyMemory<byte>, int>? observe = null)
    {
        _process = process;
        _observe = observe;
        _oomKills = oomKills;
        _oomBefore = oomBefore;
        // The agent enforces the timeout; if it cannot (it is starved, or lying), the host does.
        if (timeout is { } t)
            _backstop = new Timer(_ => _ = KillAsync(), null, t + TimeSpan.FromSeconds(5), Timeout.InfiniteTimeSpan);
    }

    /// <summary>Process id inside the sandbox.</summary>
    public int Pid => _process.Pid;

    /// <summary>Output as it is produced; ends after the exit.</summary>
    public IAsyncEnumerable<ProcessOutput> ReadOutputAsync(CancellationToken cancellationToken = default) =>
        _observe is null ? _process.ReadOutputAsync(cancellationToken) : ObservedOutputAsync(cancellationToken);

    /// <summary>The output, shown to the observer (the command history) as it passes, then the exit.</summary>
    private async IAsyncEnumerable<ProcessOutput> ObservedOutputAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await foreach (var chunk in _process.ReadOutputAsync(cancellationToken).ConfigureAwait(false))
        {
            _observe!(chunk.Stream == OutputStream.Stderr ? CommandOutputKind.Stderr : CommandOutputKind.Stdout, chunk.Data, 0);
            yield return chunk;
        }
        if (_process.Exit.IsCompletedSuccessfully && Interlocked.Exchange(ref _exitObserved, 1) == 0)
            _observe!(CommandOutputKind.Exit, ReadOnlyMemory<byte>.Empty, _process.Exit.Result.ExitCode);
    }

    /// <summary>Writes to stdin.</summary>
    public ValueTask WriteStdinAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => _process.WriteStdinAsync(data, cancellationToken);

    /// <summary>Closes stdin.</summary>
    public ValueTask CloseStdinAsync(CancellationToken cancellationToken = default) => _process.CloseStdinAsync(cancellationToken);

    /// <summary>Signals the command's process group.</summary>
    public ValueTask SignalAsync(int signal, CancellationToken cancellationToken = default) => _process.SignalAsync(signal, cancellationToken);

    /// <summary>Resizes the command's terminal.</summary>
    public ValueTask ResizeAsync(int cols, int rows, CancellationToken cancellationToken = default) => _process.ResizeAsync(cols, rows, cancellationToken);

    /// <summary>Kills the command's process group, ignoring a channel that is already gone.</summary>
    public async Task KillAsync()
    {
        try
        {
            await _process.SignalAsync(9, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is MoatException or InvalidOperationException)
        {
        }
    }

    /// <summary>The exit, once the output has been read; reports an OOM kill the host saw in the meantime.</summary>
    public async Task<ProcessExit> WaitExitAsync(CancellationToken cancellationToken = default)
    {
        if (!_process.Exit.IsCompleted)
        {
            await foreach (var _ in ReadOutputAsync(cancellationToken).ConfigureAwait(false))
            {
            }
        }
        var exit = await _process.Exit.ConfigureAwait(false);
        if (exit.Signal == 9 && !exit.TimedOut && await _oomKills().ConfigureAwait(false) > _oomBefore)
            exit = exit with { OomKilled = true };
        return exit;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_backstop is not null)
            await _backstop.DisposeAsync().ConfigureAwait(false);
        await _process.DisposeAsync().ConfigureAwait(false);
    }
}
