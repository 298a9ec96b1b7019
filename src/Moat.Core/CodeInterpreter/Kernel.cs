using System.Text;
using System.Threading.Channels;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Core.CodeInterpreter;

/// <summary>
/// One interpreter process inside a sandbox, kept alive between executions: a command started
/// through the sandbox's agent with stdin open. It runs one execution at a time; its output is
/// turned into <see cref="CodeEvent"/>s by the subclass that knows how the interpreter talks
/// (<see cref="JsonLineKernel"/> for Moat's Python and JavaScript kernel scripts,
/// <see cref="ShellKernel"/> for bash).
/// </summary>
internal abstract class Kernel : IAsyncDisposable
{
    private const int EventBuffer = 256;
    private readonly SandboxCommand _command;
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task _reader;
    private Channel<CodeEvent>? _sink;
    private int _disposed;

    protected Kernel(SandboxCommand command)
    {
        _command = command;
        _reader = Task.Run(ReadAsync);
    }

    /// <summary>Process id of the interpreter inside the sandbox.</summary>
    public int Pid => _command.Pid;

    /// <summary>Completes when the interpreter has exited (or its stream broke).</summary>
    public Task Completion => _reader;

    /// <summary>How the interpreter ended, once it has.</summary>
    public string? ExitDescription { get; private set; }

    /// <summary>Executions run so far.</summary>
    public int ExecutionCount { get; protected set; }

    /// <summary>Starts the interpreter for a language and waits until it is ready for code.</summary>
    public static async Task<Kernel> StartAsync(SandboxManager sandboxes, string sandboxId, string tenantId, CodeLanguage language, string cwd, string tag, CancellationToken cancellationToken)
    {
        var spec = new CommandSpec
        {
            Argv = language switch
            {
                CodeLanguage.Python => ["python3", "-u", "-c", KernelScripts.Python],
                CodeLanguage.JavaScript => ["node", "-e", KernelScripts.JavaScript],
                _ => ["bash", "--noprofile", "--norc", "-s"],
            },
            Cwd = cwd,
            User = SandboxManager.DefaultUser,
            Stdin = true,
            Tag = tag,
            Env = language == CodeLanguage.Python ? new Dictionary<string, string> { ["PYTHONDONTWRITEBYTECODE"] = "1" } : null,
        };
        SandboxCommand command;
        try
        {
            command = await sandboxes.StartCommandAsync(sandboxId, tenantId, spec, cancellationToken).ConfigureAwait(false);
        }
        catch (MoatException ex) when (ex.Code == SandboxManager.CommandNotFound)
        {
            throw MoatException.Invalid("interpreter_not_found", $"{language.Program()} is not installed in sandbox {sandboxId}; create it from a template that has it (code-interpreter-v1 has python3 and node)");
        }
        Kernel kernel = language == CodeLanguage.Bash ? new ShellKernel(command) : new JsonLineKernel(command);
        try
        {
            await kernel.StartupAsync(cancellationToken).ConfigureAwait(false);
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            deadline.CancelAfter(TimeSpan.FromSeconds(60));
            await kernel._ready.Task.WaitAsync(deadline.Token).ConfigureAwait(false);
            return kernel;
        }
        catch (Exception ex)
        {
            await kernel.DisposeAsync().ConfigureAwait(false);
            if (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested)
                throw new MoatException(ErrorKind.Timeout, "interpreter_start_timeout", $"the {language.Name()} interpreter of sandbox {sandboxId} did not start within 60 s");
            if (ex is InvalidOperationException && kernel.ExitDescription is { } how)
                throw MoatException.Invalid("interpreter_failed", $"the {language.Name()} interpreter of sandbox {sandboxId} exited at start ({how})");
            throw;
        }
    }

    /// <summary>Sends whatever the interpreter needs before it can say it is ready.</summary>
    protected virtual Task StartupAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Marks the interpreter ready for code.</summary>
    protected void SetReady() => _ready.TrySetResult();

    /// <summary>Writes to the interpreter's stdin.</summary>
    protected ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken) => _command.WriteStdinAsync(data, cancellationToken);

    /// <summary>Sends a request that starts an execution.</summary>
    protected abstract ValueTask SendExecutionAsync(CodeRequest request, CancellationToken cancellationToken);

    /// <summary>Turns a piece of the interpreter's output into events (through <see cref="EmitAsync"/>).</summary>
    protected abstract ValueTask OnOutputAsync(OutputStream stream, ReadOnlyMemory<byte> data);

    /// <summary>Hands an event to the running execution; dropped when none runs.</summary>
    protected ValueTask EmitAsync(CodeEvent evt) =>
        Volatile.Read(ref _sink) is { } sink ? WriteToSinkAsync(sink, evt) : ValueTask.CompletedTask;

    private static async ValueTask WriteToSinkAsync(Channel<CodeEvent> sink, CodeEvent evt)
    {
        try
        {
            await sink.Writer.WriteAsync(evt).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
        }
    }

    private async Task ReadAsync()
    {
        try
        {
            await foreach (var chunk in _command.ReadOutputAsync().ConfigureAwait(false))
                await OnOutputAsync(chunk.Stream, chunk.Data).ConfigureAwait(false);
            var exit = await _command.WaitExitAsync().ConfigureAwait(false);
            ExitDescription = exit.Signal > 0 ? $"killed by signal {exit.Signal}" : $"exit status {exit.ExitCode}";
        }
        catch (Exception ex)
        {
            ExitDescription = ex.Message;
        }
        finally
        {
            _ready.TrySetException(new InvalidOperationException("the interpreter exited"));
            Volatile.Read(ref _sink)?.Writer.TryComplete(new InvalidOperationException(ExitDescription));
        }
    }

    /// <summary>
    /// Runs one execution and yields its events, ending with <see cref="CodeExecutionEnd"/>. The
    /// caller serialises executions. Past the request's timeout the execution is interrupted
    /// (SIGINT); one that does not stop within a few seconds of that costs the interpreter (the
    /// caller restarts it). A caller that stops listening interrupts the execution the same way.
    /// </summary>
    public async IAsyncEnumerable<CodeEvent> ExecuteAsync(CodeRequest request, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var sink = Channel.CreateBounded<CodeEvent>(new BoundedChannelOptions(EventBuffer) { SingleReader = true, SingleWriter = true, FullMode = BoundedChannelFullMode.Wait });
        Volatile.Write(ref _sink, sink);
        if (Completion.IsCompleted)
            sink.Writer.TryComplete(new InvalidOperationException(ExitDescription));
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        var run = new ExecutionRun(this, sink, request.Timeout);
        bool ended = false;
        try
        {
            await SendExecutionAsync(request, cancellationToken).ConfigureAwait(false);
            while (true)
            {
                var (evt, done) = await run.NextAsync(cancellationToken).ConfigureAwait(false);
                if (evt is CodeExecutionEnd end)
                    evt = end with { Duration = System.Diagnostics.Stopwatch.GetElapsedTime(started), TimedOut = run.TimedOut };
                if (evt is not null)
                    yield return evt;
                if (done)
                {
                    ended = true;
                    yield break;
                }
            }
        }
        finally
        {
            if (!ended)
                await run.AbandonAsync().ConfigureAwait(false);
            Interlocked.CompareExchange(ref _sink, null, sink);
        }
    }

    /// <summary>Interrupts the running execution (SIGINT to the interpreter's process group).</summary>
    public async Task InterruptAsync()
    {
        try
        {
            await _command.SignalAsync(2, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is MoatException or InvalidOperationException)
        {
        }
    }

    /// <summary>Kills the interpreter and everything it started.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        if (!Completion.IsCompleted)
            await _command.KillAsync().ConfigureAwait(false);
        try
        {
            await Completion.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        await _command.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>The reading side of one execution: deadlines, interrupts, and a kernel that dies under it.</summary>
    private sealed class ExecutionRun(Kernel kernel, Channel<CodeEvent> sink, TimeSpan? timeout)
    {
        private static readonly TimeSpan InterruptGrace = TimeSpan.FromSeconds(5);
        private readonly long _deadline = timeout is { } t ? Environment.TickCount64 + (long)t.TotalMilliseconds : long.MaxValue;
        private long _killAt = long.MaxValue;
        private bool _reportedDeath;

        public bool TimedOut { get; private set; }

        public async Task<(CodeEvent? Event, bool Done)> NextAsync(CancellationToken cancellationToken)
        {
            while (true)
            {
                long now = Environment.TickCount64;
                long until = Math.Min(_deadline, _killAt);
                using var wait = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                if (until != long.MaxValue)
                    wait.CancelAfter(TimeSpan.FromMilliseconds(Math.Max(1, until - now)));
                try
                {
                    var evt = await sink.Reader.ReadAsync(wait.Token).ConfigureAwait(false);
                    return (evt, evt is CodeExecutionEnd);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    if (_killAt != long.MaxValue && Environment.TickCount64 >= _killAt)
                    {
                        // The interpreter ignored the interrupt: it goes, and the caller starts a new one.
                        _reportedDeath = true;
                        await kernel.DisposeAsync().ConfigureAwait(false);
                        return (new CodeError("TimeoutError", $"the execution did not stop within {InterruptGrace.TotalSeconds:0} s of being interrupted; the interpreter was restarted and its state is lost", ""), false);
                    }
                    TimedOut = true;
                    _killAt = Environment.TickCount64 + (long)InterruptGrace.TotalMilliseconds;
                    await kernel.InterruptAsync().ConfigureAwait(false);
                }
                catch (ChannelClosedException ex)
                {
                    if (_reportedDeath)
                        return (new CodeExecutionEnd(kernel.ExecutionCount, TimeSpan.Zero), true);
                    _reportedDeath = true;
                    string how = ex.InnerException?.Message ?? kernel.ExitDescription ?? "it exited";
                    return (new CodeError("KernelDied", $"the interpreter exited during the execution ({how}); the next execution starts a new one", ""), false);
                }
            }
        }

        /// <summary>The caller stopped listening: interrupt, and let the execution finish unseen.</summary>
        public async Task AbandonAsync()
        {
            if (sink.Reader.Completion.IsCompleted)
                return;
            await kernel.InterruptAsync().ConfigureAwait(false);
            using var grace = new CancellationTokenSource(InterruptGrace);
            try
            {
                while (true)
                {
                    var evt = await sink.Reader.ReadAsync(grace.Token).ConfigureAwait(false);
                    if (evt is CodeExecutionEnd)
                        return;
                }
            }
            catch (OperationCanceledException)
            {
                await kernel.DisposeAsync().ConfigureAwait(false);
            }
            catch (ChannelClosedException)
            {
            }
        }
    }
}

/// <summary>Moat's kernel scripts, embedded in this assembly.</summary>
internal static class KernelScripts
{
    public static readonly string Python = Load("python_kernel.py");
    public static readonly string JavaScript = Load("javascript_kernel.js");

    private static string Load(string name)
    {
        using var stream = typeof(KernelScripts).Assembly.GetManifestResourceStream("Moat.Kernels." + name)
            ?? throw new InvalidOperationException($"the kernel script {name} is not embedded in {typeof(KernelScripts).Assembly.GetName().Name}");
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }
}
