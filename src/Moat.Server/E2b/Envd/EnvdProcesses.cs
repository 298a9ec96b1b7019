using System.Collections.Concurrent;
using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.E2b.Connect;

namespace Moat.Server.E2b.Envd;

/// <summary>
/// The processes envd's process.Process knows: those started through it, and those re-attached to
/// by pid or tag. Moat's agent gives one stream per process; envd lets any number of clients watch
/// the same process (the Start stream, Connect streams) and feed it input by pid. So each process
/// has one reader here that fans its output out to every subscriber, and input, resizes and stdin
/// closing go through the one stream the agent has. Subscribers see output from when they
/// subscribe (as with envd); a slow subscriber slows the process's output, it never loses any.
/// An exited process is kept a minute for a late Connect, then forgotten.
/// </summary>
internal sealed class EnvdProcesses(SandboxManager manager, IHostApplicationLifetime lifetime)
{
    private static readonly TimeSpan RetainExited = TimeSpan.FromSeconds(60);
    private readonly ConcurrentDictionary<(string Sandbox, int Pid), EnvdProcess> _processes = new();

    /// <summary>Starts a process and subscribes the caller before any of its output can be lost.</summary>
    public async Task<(EnvdProcess Process, EnvdSubscription Subscription)> StartAsync(SandboxRecord sandbox, CommandSpec spec, ProcessConfig config, CancellationToken cancellationToken)
    {
        var command = await manager.StartCommandAsync(sandbox.Id, sandbox.TenantId, spec, cancellationToken).ConfigureAwait(false);
        var process = new EnvdProcess(this, sandbox.Id, command, config, spec.Tag, spec.Pty is not null, spec.Stdin);
        var subscription = process.Subscribe();
        _processes[(sandbox.Id, process.Pid)] = process;
        process.Run(lifetime.ApplicationStopping);
        return (process, subscription);
    }

    /// <summary>Subscribes to a process by pid or tag: one this registry knows, else one the agent still tracks.</summary>
    public async Task<(EnvdProcess Process, EnvdSubscription Subscription)> ConnectAsync(SandboxRecord sandbox, ProcessSelector selector, CancellationToken cancellationToken)
    {
        if (Find(sandbox.Id, selector) is { } known)
            return (known, known.Subscribe());
        SandboxCommand command;
        try
        {
            command = await manager.AttachCommandAsync(sandbox.Id, sandbox.TenantId, (int)(selector.Pid ?? 0), selector.Pid is null ? selector.Tag : null, replay: false, cancellationToken).ConfigureAwait(false);
        }
        catch (AgentOperationException ex) when (ex.Code == "not_found")
        {
            throw NotFound(selector);
        }
        var config = new ProcessConfig { Cmd = "", Args = [] };
        var process = new EnvdProcess(this, sandbox.Id, command, config, selector.Tag, pty: false, stdin: false);
        var subscription = process.Subscribe();
        if (!_processes.TryAdd((sandbox.Id, process.Pid), process))
        {
            // Someone attached at the same moment: theirs wins, ours goes.
            await command.DisposeAsync().ConfigureAwait(false);
            var winner = _processes[(sandbox.Id, process.Pid)];
            return (winner, winner.Subscribe());
        }
        process.Run(lifetime.ApplicationStopping);
        return (process, subscription);
    }

    /// <summary>A process of the sandbox by pid or tag, or null.</summary>
    public EnvdProcess? Find(string sandboxId, ProcessSelector? selector)
    {
        if (selector?.Pid is { } pid)
            return _processes.TryGetValue((sandboxId, (int)pid), out var p) ? p : null;
        if (selector?.Tag is { Length: > 0 } tag)
        {
            return _processes.Values.Where(p => p.SandboxId == sandboxId && p.Tag == tag)
                .OrderBy(p => p.Exited ? 1 : 0).ThenByDescending(p => p.Pid).FirstOrDefault();
        }
        return null;
    }

    /// <summary>A running process this registry knows, or a not-found error that names the selector.</summary>
    public EnvdProcess Require(string sandboxId, ProcessSelector? selector) =>
        Find(sandboxId, selector) is { Exited: false } p ? p : throw NotFound(selector);

    /// <summary>What the registry remembers of a sandbox's processes (their start config).</summary>
    public IEnumerable<EnvdProcess> Of(string sandboxId) => _processes.Values.Where(p => p.SandboxId == sandboxId);

    public static ConnectException NotFound(ProcessSelector? selector) => new(ConnectCode.NotFound,
        selector?.Pid is { } pid ? $"process with pid {pid} not found" : $"process with tag {selector?.Tag} not found");

    internal void Forget(EnvdProcess process)
    {
        _ = Task.Delay(RetainExited).ContinueWith(_ => _processes.TryRemove(new KeyValuePair<(string, int), EnvdProcess>((process.SandboxId, process.Pid), process)), TaskScheduler.Default);
    }
}

/// <summary>One process: its agent stream, its subscribers, and how it ended.</summary>
internal sealed class EnvdProcess
{
    private readonly EnvdProcesses _owner;
    private readonly SandboxCommand _command;
    private readonly Lock _lock = new();
    private readonly List<EnvdSubscription> _subscribers = [];
    private object? _final;
    private bool _stdinOpen;

    public EnvdProcess(EnvdProcesses owner, string sandboxId, SandboxCommand command, ProcessConfig config, string? tag, bool pty, bool stdin)
    {
        _owner = owner;
        _command = command;
        SandboxId = sandboxId;
        Config = config;
        Tag = string.IsNullOrEmpty(tag) ? null : tag;
        Pty = pty;
        _stdinOpen = stdin;
    }

    public string SandboxId { get; }
    public int Pid => _command.Pid;
    public ProcessConfig Config { get; }
    public string? Tag { get; }
    public bool Pty { get; }
    public bool Exited => Volatile.Read(ref _final) is not null;

    /// <summary>A new watcher; one that comes after the exit gets just the end.</summary>
    public EnvdSubscription Subscribe()
    {
        var subscription = new EnvdSubscription();
        lock (_lock)
        {
            if (_final is { } final)
                subscription.Complete(final);
            else
                _subscribers.Add(subscription);
        }
        return subscription;
    }

    internal void Run(CancellationToken stopping) => _ = Task.Run(() => PumpAsync(stopping), CancellationToken.None);

    private async Task PumpAsync(CancellationToken stopping)
    {
        object final;
        try
        {
            await foreach (var chunk in _command.ReadOutputAsync(stopping).ConfigureAwait(false))
            {
                var data = Pty ? new DataEvent { Pty = chunk.Data.ToArray() }
                    : chunk.Stream == OutputStream.Stderr ? new DataEvent { Stderr = chunk.Data.ToArray() }
                    : new DataEvent { Stdout = chunk.Data.ToArray() };
                await BroadcastAsync(data).ConfigureAwait(false);
            }
            final = EndOf(await _command.WaitExitAsync(stopping).ConfigureAwait(false));
        }
        catch (Exception ex)
        {
            // The stream broke (the sandbox ended, another client took the process over): watchers are told.
            final = new ConnectException(ConnectCode.Unavailable, $"lost the process {Pid}: {ex.Message}");
        }
        List<EnvdSubscription> subscribers;
        lock (_lock)
        {
            _final = final;
            subscribers = [.. _subscribers];
            _subscribers.Clear();
        }
        foreach (var s in subscribers)
            s.Complete(final);
        await _command.DisposeAsync().ConfigureAwait(false);
        _owner.Forget(this);
    }

    private async Task BroadcastAsync(DataEvent data)
    {
        EnvdSubscription[] subscribers;
        lock (_lock)
            subscribers = [.. _subscribers];
        foreach (var s in subscribers)
        {
            if (!await s.TryWriteAsync(data).ConfigureAwait(false))
            {
                lock (_lock)
                    _subscribers.Remove(s);
            }
        }
    }

    /// <summary>envd's end event for an exit: Go's exit code (-1 for a signal), whether it exited, and Go's status text.</summary>
    private static EndEvent EndOf(ProcessExit exit)
    {
        if (exit.Signal > 0)
        {
            return new EndEvent
            {
                ExitCode = -1,
                Exited = false,
                Status = "signal: " + SignalName(exit.Signal),
                Error = exit.TimedOut ? "the process exceeded its timeout and was killed" : exit.OomKilled ? "the sandbox's memory limit killed the process" : null,
            };
        }
        return new EndEvent { ExitCode = exit.ExitCode, Exited = true, Status = $"exit status {exit.ExitCode}" };
    }

    private static string SignalName(int signal) => signal switch
    {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        6 => "aborted",
        9 => "killed",
        11 => "segmentation fault",
        13 => "broken pipe",
        15 => "terminated",
        _ => $"signal {signal}",
    };

    public async Task WriteInputAsync(byte[]? stdin, byte[]? pty, CancellationToken cancellationToken)
    {
        var data = pty ?? stdin ?? [];
        if (pty is not null && !Pty)
            throw new ConnectException(ConnectCode.FailedPrecondition, $"process {Pid} has no terminal; send stdin input");
        if (stdin is not null && Pty)
            throw new ConnectException(ConnectCode.FailedPrecondition, $"process {Pid} runs on a terminal; send pty input");
        if (!Pty && !_stdinOpen)
            throw new ConnectException(ConnectCode.FailedPrecondition, $"process {Pid} was not started with stdin: true (or its stdin is closed)");
        await _command.WriteStdinAsync(data, cancellationToken).ConfigureAwait(false);
    }

    public async Task CloseStdinAsync(CancellationToken cancellationToken)
    {
        if (!_stdinOpen && !Pty)
            return;
        _stdinOpen = false;
        await _command.CloseStdinAsync(cancellationToken).ConfigureAwait(false);
    }

    public async Task ResizeAsync(int cols, int rows, CancellationToken cancellationToken)
    {
        if (!Pty)
            throw new ConnectException(ConnectCode.FailedPrecondition, $"process {Pid} has no terminal to resize");
        await _command.ResizeAsync(Math.Clamp(cols, 1, 1000), Math.Clamp(rows, 1, 1000), cancellationToken).ConfigureAwait(false);
    }
}

/// <summary>What one watcher of a process receives: <see cref="DataEvent"/>s, then an <see cref="EndEvent"/> or a <see cref="ConnectException"/>.</summary>
internal sealed class EnvdSubscription : IDisposable
{
    private readonly Channel<object> _events = Channel.CreateBounded<object>(new BoundedChannelOptions(64) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
    private readonly CancellationTokenSource _gone = new();

    public IAsyncEnumerable<object> ReadAllAsync(CancellationToken cancellationToken) => _events.Reader.ReadAllAsync(cancellationToken);

    public ValueTask<object> ReadAsync(CancellationToken cancellationToken) => _events.Reader.ReadAsync(cancellationToken);

    internal async Task<bool> TryWriteAsync(DataEvent data)
    {
        try
        {
            await _events.Writer.WriteAsync(data, _gone.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is OperationCanceledException or ChannelClosedException)
        {
            return false;
        }
    }

    internal void Complete(object final)
    {
        // The end always fits: a watcher that is not reading loses nothing it would have read.
        _ = Task.Run(async () =>
        {
            try
            {
                await _events.Writer.WriteAsync(final, _gone.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ChannelClosedException)
            {
            }
            _events.Writer.TryComplete();
        });
    }

    /// <summary>The watcher went away: the process stops waiting for it.</summary>
    public void Dispose()
    {
        _gone.Cancel();
        _events.Writer.TryComplete();
    }
}
