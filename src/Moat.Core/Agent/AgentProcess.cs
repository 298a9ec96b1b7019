using System.Runtime.CompilerServices;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Core.Agent;

/// <summary>Which output channel a chunk came from.</summary>
public enum OutputStream
{
    /// <summary>Standard output (or a terminal's output).</summary>
    Stdout,
    /// <summary>Standard error.</summary>
    Stderr,
}

/// <summary>A piece of a command's output, in the order the agent read it.</summary>
public readonly record struct ProcessOutput(OutputStream Stream, ReadOnlyMemory<byte> Data);

/// <summary>How a command ended.</summary>
/// <param name="ExitCode">Exit status, or 128 + signal when a signal ended it (shell convention).</param>
/// <param name="Signal">The terminating signal, 0 if none.</param>
/// <param name="TimedOut">The command's own timeout killed it.</param>
/// <param name="Duration">Wall time from start to exit, as the agent measured it.</param>
/// <param name="OutputTruncated">The agent dropped output while nobody was attached.</param>
public sealed record ProcessExit(int ExitCode, int Signal, bool TimedOut, TimeSpan Duration, bool OutputTruncated)
{
    /// <summary>Set by the host when the sandbox's memory cgroup killed something during the command.</summary>
    public bool OomKilled { get; init; }

    /// <summary>The exit an agent reported.</summary>
    public static ProcessExit From(ExitStatus status) => new(
        status.Signal > 0 ? 128 + status.Signal : status.ExitCode,
        status.Signal,
        status.TimedOut,
        TimeSpan.FromMilliseconds(status.DurationMs),
        status.OutputTruncated) { OomKilled = status.OomKilled };
}

/// <summary>
/// A command running in a sandbox. Read its output with <see cref="ReadOutputAsync"/> (one reader),
/// feed its stdin, signal it. Disposing without reading to the end abandons the stream; the
/// command itself keeps running unless it was signalled.
/// </summary>
public sealed class AgentProcess : AgentStream, IAsyncDisposable
{
    private readonly TaskCompletionSource<ProcessExit> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _stdinClosed;

    internal AgentProcess(uint id) : base(id)
    {
    }

    /// <summary>Process id inside the sandbox.</summary>
    public int Pid { get; private set; }

    /// <summary>Whether retained output was cut before an attach replayed it.</summary>
    public bool ReplayTruncated { get; private set; }

    /// <summary>Completes with the exit once the output has been read to its end.</summary>
    public Task<ProcessExit> Exit => _exit.Task;

    internal async Task StartAsync(CancellationToken cancellationToken)
    {
        var item = await NextAsync(cancellationToken).ConfigureAwait(false);
        if (item is not Response response)
            throw new Errors.AgentUnavailableException("the agent sent data before saying the command started");
        ThrowIfError(response);
        if (response.KindCase != Response.KindOneofCase.Started)
            throw new Errors.AgentUnavailableException($"the agent answered exec with {response.KindCase}");
        Pid = response.Started.Pid;
        ReplayTruncated = response.Started.OutputTruncated;
    }

    /// <summary>
    /// Streams the command's output as the agent delivers it and completes after the exit, which
    /// is then in <see cref="Exit"/>.
    /// </summary>
    public async IAsyncEnumerable<ProcessOutput> ReadOutputAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (true)
        {
            object? item;
            try
            {
                item = await NextAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                _exit.TrySetException(ex);
                throw;
            }
            switch (item)
            {
                case null:
                    var missing = new Errors.AgentUnavailableException("the agent ended the command stream without an exit status");
                    _exit.TrySetException(missing);
                    throw missing;
                case StreamChunk chunk:
                    if (chunk.Data.Length > 0)
                        yield return new ProcessOutput(chunk.Channel == FrameType.Stderr ? OutputStream.Stderr : OutputStream.Stdout, chunk.Data);
                    break;
                case Response response when response.KindCase == Response.KindOneofCase.Exit:
                    _exit.TrySetResult(ProcessExit.From(response.Exit));
                    yield break;
                case Response response:
                    try
                    {
                        ThrowIfError(response);
                    }
                    catch (Exception ex)
                    {
                        _exit.TrySetException(ex);
                        throw;
                    }
                    break;
            }
        }
    }

    /// <summary>Reads and discards the output, then returns the exit.</summary>
    public async Task<ProcessExit> WaitAsync(CancellationToken cancellationToken = default)
    {
        await foreach (var _ in ReadOutputAsync(cancellationToken).ConfigureAwait(false))
        {
        }
        return await Exit.ConfigureAwait(false);
    }

    /// <summary>Writes to the command's stdin (it must have been started with stdin).</summary>
    public ValueTask WriteStdinAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        if (_stdinClosed)
            throw new InvalidOperationException("stdin is already closed");
        return data.IsEmpty ? ValueTask.CompletedTask : Client.SendDataAsync(this, FrameType.Stdin, data, final: false, cancellationToken);
    }

    /// <summary>Closes the command's stdin (EOF for the reader inside).</summary>
    public ValueTask CloseStdinAsync(CancellationToken cancellationToken = default)
    {
        if (_stdinClosed)
            return ValueTask.CompletedTask;
        _stdinClosed = true;
        return Client.SendDataAsync(this, FrameType.Stdin, ReadOnlyMemory<byte>.Empty, final: true, cancellationToken);
    }

    /// <summary>Sends a signal to the command's process group.</summary>
    public ValueTask SignalAsync(int signal, CancellationToken cancellationToken = default) =>
        Client.SendFrameAsync(FrameType.Control, FrameFlags.None, Id, new StreamControl { Signal = signal }, cancellationToken);

    /// <summary>Resizes the command's terminal.</summary>
    public ValueTask ResizeAsync(int cols, int rows, CancellationToken cancellationToken = default) =>
        Client.SendFrameAsync(FrameType.Control, FrameFlags.None, Id, new StreamControl { Resize = new PtySize { Cols = (uint)cols, Rows = (uint)rows } }, cancellationToken);

    /// <summary>Abandons the stream if the exit has not been read.</summary>
    public async ValueTask DisposeAsync()
    {
        if (!_exit.Task.IsCompleted)
        {
            _exit.TrySetCanceled();
            await AbandonAsync().ConfigureAwait(false);
        }
    }
}
