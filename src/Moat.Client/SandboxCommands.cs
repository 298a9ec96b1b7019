using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Moat.Client.Http;
using Moat.Contracts;

namespace Moat.Client;

/// <summary>
/// Runs commands in one sandbox (<see cref="Sandbox.Commands"/>). A command is either a shell
/// line (run with <c>/bin/sh -c</c>) or an argv list (run directly, no shell).
/// </summary>
public sealed class SandboxCommands
{
    private const string NdJson = "application/x-ndjson";
    private readonly MoatTransport _transport;
    private readonly string _execPath;

    internal SandboxCommands(MoatTransport transport, string sandboxId)
    {
        _transport = transport;
        SandboxId = sandboxId;
        _execPath = $"v1/sandboxes/{QueryString.Segment(sandboxId)}/exec";
    }

    /// <summary>The sandbox these commands run in.</summary>
    public string SandboxId { get; }

    /// <summary>Runs a shell command line and waits for it to finish.</summary>
    /// <param name="shell">The command line, e.g. <c>"ls -la | wc -l"</c>.</param>
    /// <param name="cancellationToken">Cancels the wait; the server then kills the command.</param>
    /// <returns>Its exit code and output.</returns>
    public Task<CommandResult> RunAsync(string shell, CancellationToken cancellationToken = default) =>
        RunAsync(shell, null, cancellationToken);

    /// <summary>
    /// Runs a shell command line and waits for it to finish. With <see cref="CommandOptions.OnStdout"/>
    /// or <see cref="CommandOptions.OnStderr"/> set, output is streamed to them as it is produced.
    /// </summary>
    /// <param name="shell">The command line.</param>
    /// <param name="options">Working directory, environment, user, stdin, timeout, callbacks.</param>
    /// <param name="cancellationToken">Cancels the wait; the server then kills the command.</param>
    /// <returns>Its exit code and output.</returns>
    /// <exception cref="CommandExitException">It exited non-zero and <see cref="CommandOptions.ThrowOnNonZero"/> is set.</exception>
    public Task<CommandResult> RunAsync(string shell, CommandOptions? options, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(shell);
        return RunCoreAsync(Build(null, shell, options), options, cancellationToken);
    }

    /// <summary>Runs a program with arguments (no shell) and waits for it to finish.</summary>
    /// <param name="argv">The program and its arguments, e.g. <c>["python3", "-c", "print(1)"]</c>.</param>
    /// <param name="cancellationToken">Cancels the wait; the server then kills the command.</param>
    /// <returns>Its exit code and output.</returns>
    public Task<CommandResult> RunAsync(IReadOnlyList<string> argv, CancellationToken cancellationToken = default) =>
        RunAsync(argv, null, cancellationToken);

    /// <summary>Runs a program with arguments (no shell) and waits for it to finish; see <see cref="RunAsync(string, CommandOptions?, CancellationToken)"/>.</summary>
    /// <param name="argv">The program and its arguments.</param>
    /// <param name="options">Working directory, environment, user, stdin, timeout, callbacks.</param>
    /// <param name="cancellationToken">Cancels the wait; the server then kills the command.</param>
    /// <returns>Its exit code and output.</returns>
    /// <exception cref="CommandExitException">It exited non-zero and <see cref="CommandOptions.ThrowOnNonZero"/> is set.</exception>
    public Task<CommandResult> RunAsync(IReadOnlyList<string> argv, CommandOptions? options, CancellationToken cancellationToken = default)
    {
        CheckArgv(argv);
        return RunCoreAsync(Build(argv, null, options), options, cancellationToken);
    }

    /// <summary>Runs a shell command line and yields its events as they happen.</summary>
    /// <param name="shell">The command line.</param>
    /// <param name="cancellationToken">Stops reading; the server then kills the command.</param>
    /// <returns>Started, then Stdout/Stderr chunks, then Exited.</returns>
    public IAsyncEnumerable<CommandEvent> StreamAsync(string shell, CancellationToken cancellationToken = default) =>
        StreamAsync(shell, null, cancellationToken);

    /// <summary>
    /// Runs a shell command line and yields its events as they happen. The callbacks of
    /// <paramref name="options"/>, if any, also fire. Leaving the loop early kills the command.
    /// </summary>
    /// <param name="shell">The command line.</param>
    /// <param name="options">Working directory, environment, user, stdin, timeout.</param>
    /// <param name="cancellationToken">Stops reading; the server then kills the command.</param>
    /// <returns>Started, then Stdout/Stderr chunks, then Exited.</returns>
    /// <exception cref="MoatStreamException">The stream failed after the command started.</exception>
    public IAsyncEnumerable<CommandEvent> StreamAsync(string shell, CommandOptions? options, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(shell);
        return StreamCoreAsync(Build(null, shell, options), options, cancellationToken);
    }

    /// <summary>Runs a program with arguments (no shell) and yields its events as they happen.</summary>
    /// <param name="argv">The program and its arguments.</param>
    /// <param name="cancellationToken">Stops reading; the server then kills the command.</param>
    /// <returns>Started, then Stdout/Stderr chunks, then Exited.</returns>
    public IAsyncEnumerable<CommandEvent> StreamAsync(IReadOnlyList<string> argv, CancellationToken cancellationToken = default) =>
        StreamAsync(argv, null, cancellationToken);

    /// <summary>Runs a program with arguments (no shell) and yields its events as they happen; see <see cref="StreamAsync(string, CommandOptions?, CancellationToken)"/>.</summary>
    /// <param name="argv">The program and its arguments.</param>
    /// <param name="options">Working directory, environment, user, stdin, timeout.</param>
    /// <param name="cancellationToken">Stops reading; the server then kills the command.</param>
    /// <returns>Started, then Stdout/Stderr chunks, then Exited.</returns>
    /// <exception cref="MoatStreamException">The stream failed after the command started.</exception>
    public IAsyncEnumerable<CommandEvent> StreamAsync(IReadOnlyList<string> argv, CommandOptions? options, CancellationToken cancellationToken = default)
    {
        CheckArgv(argv);
        return StreamCoreAsync(Build(argv, null, options), options, cancellationToken);
    }

    private static void CheckArgv(IReadOnlyList<string> argv)
    {
        ArgumentNullException.ThrowIfNull(argv);
        if (argv.Count == 0 || string.IsNullOrEmpty(argv[0]))
            throw new ArgumentException("argv needs at least a program name", nameof(argv));
    }

    internal static ExecRequestDto Build(IReadOnlyList<string>? argv, string? shell, CommandOptions? options)
    {
        if (options is { Stdin: not null, StdinBytes: not null })
            throw new ArgumentException("set CommandOptions.Stdin or CommandOptions.StdinBytes, not both", nameof(options));
        if (options?.Timeout is { } t && t <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(options), t, "CommandOptions.Timeout must be positive");
        return new ExecRequestDto
        {
            Cmd = argv is null ? null : [.. argv],
            Shell = shell,
            Cwd = options?.Cwd,
            Env = options is { Env.Count: > 0 } ? new Dictionary<string, string>(options.Env, StringComparer.Ordinal) : null,
            User = options?.User,
            Stdin = options?.Stdin,
            StdinBase64 = options?.StdinBytes is { } bytes ? Convert.ToBase64String(bytes.Span) : null,
            TimeoutSeconds = options?.Timeout?.TotalSeconds,
            Encoding = options is { RawOutput: true } ? "base64" : null,
        };
    }

    private async Task<CommandResult> RunCoreAsync(ExecRequestDto request, CommandOptions? options, CancellationToken cancellationToken)
    {
        CommandResult result;
        if (options is { OnStdout: null, OnStderr: null } or null)
        {
            var dto = await _transport.SendAsync(HttpMethod.Post, _execPath, MoatTransport.Json(request, MoatJson.Default.ExecRequestDto), MoatJson.Default.ExecResultDto, bounded: false, cancellationToken).ConfigureAwait(false);
            result = new CommandResult
            {
                ExitCode = dto.ExitCode,
                Signal = dto.Signal,
                TimedOut = dto.TimedOut,
                OomKilled = dto.OomKilled,
                Stdout = request.Encoding is null ? dto.Stdout : Utf8(dto.Stdout),
                Stderr = request.Encoding is null ? dto.Stderr : Utf8(dto.Stderr),
                StdoutTruncated = dto.StdoutTruncated,
                StderrTruncated = dto.StderrTruncated,
                Duration = TimeSpan.FromMilliseconds(dto.DurationMs),
                Pid = dto.Pid == 0 ? null : dto.Pid,
            };
        }
        else
        {
            var stdout = new StringBuilder();
            var stderr = new StringBuilder();
            int? pid = null;
            CommandEvent.Exited? exit = null;
            await foreach (var evt in StreamCoreAsync(request, options, cancellationToken).ConfigureAwait(false))
            {
                switch (evt)
                {
                    case CommandEvent.Started s:
                        pid = s.Pid;
                        break;
                    case CommandEvent.Stdout o:
                        stdout.Append(o.Text);
                        break;
                    case CommandEvent.Stderr e:
                        stderr.Append(e.Text);
                        break;
                    case CommandEvent.StdoutBytes ob:
                        stdout.Append(Encoding.UTF8.GetString(ob.Data));
                        break;
                    case CommandEvent.StderrBytes eb:
                        stderr.Append(Encoding.UTF8.GetString(eb.Data));
                        break;
                    case CommandEvent.Exited x:
                        exit = x;
                        break;
                }
            }
            // StreamCoreAsync always ends with an exit event or throws.
            if (exit is null)
                throw new MoatStreamException("stream_incomplete", "the command's stream ended without an exit event");
            result = new CommandResult
            {
                ExitCode = exit.ExitCode,
                Signal = exit.Signal,
                TimedOut = exit.TimedOut,
                OomKilled = exit.OomKilled,
                Stdout = stdout.ToString(),
                Stderr = stderr.ToString(),
                Duration = exit.Duration,
                Pid = pid,
            };
        }
        if (options is { ThrowOnNonZero: true } && result.ExitCode != 0)
            throw new CommandExitException(result);
        return result;
    }

    private async IAsyncEnumerable<CommandEvent> StreamCoreAsync(ExecRequestDto request, CommandOptions? options, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        using var message = _transport.Request(HttpMethod.Post, _execPath, MoatTransport.Json(request, MoatJson.Default.ExecRequestDto));
        message.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue(NdJson));
        using var response = await _transport.SendCheckedAsync(message, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        await using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        // Some streams only notice cancellation between reads; disposing the response aborts a pending one.
        await using var abort = cancellationToken.Register(static state => ((HttpResponseMessage)state!).Dispose(), response);
        var lines = new NdjsonLineReader(body);
        bool raw = request.Encoding is not null;
        // In raw mode the callbacks still get text: one decoder per stream keeps split characters whole.
        var outText = raw ? Encoding.UTF8.GetDecoder() : null;
        var errText = raw ? Encoding.UTF8.GetDecoder() : null;
        bool exited = false;
        while (!exited)
        {
            ReadOnlyMemory<byte>? line;
            try
            {
                line = await lines.ReadLineAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (cancellationToken.IsCancellationRequested && ex is IOException or ObjectDisposedException or HttpRequestException)
            {
                throw new OperationCanceledException("the command's stream was cancelled", ex, cancellationToken);
            }
            if (line is not { } bytes)
            {
                // An aborted response can look like a clean end of stream.
                cancellationToken.ThrowIfCancellationRequested();
                throw new MoatStreamException("stream_incomplete", $"the stream of the command in sandbox {SandboxId} ended before the command exited");
            }
            var evt = Decode(bytes.Span, raw);
            if (evt is null)
                continue;
            switch (evt)
            {
                case CommandEvent.Stdout o:
                    options?.OnStdout?.Invoke(o.Text);
                    break;
                case CommandEvent.Stderr e:
                    options?.OnStderr?.Invoke(e.Text);
                    break;
                case CommandEvent.StdoutBytes ob when options?.OnStdout is { } onStdout:
                    onStdout(DecodeChunk(outText!, ob.Data));
                    break;
                case CommandEvent.StderrBytes eb when options?.OnStderr is { } onStderr:
                    onStderr(DecodeChunk(errText!, eb.Data));
                    break;
                case CommandEvent.Exited:
                    exited = true;
                    break;
            }
            yield return evt;
        }
    }

    private static string Utf8(string base64) => Encoding.UTF8.GetString(FromBase64(base64));

    private static byte[] FromBase64(string base64)
    {
        try
        {
            return Convert.FromBase64String(base64);
        }
        catch (FormatException)
        {
            throw new MoatStreamException("invalid_stream", "the server sent output that is not valid base64");
        }
    }

    private static string DecodeChunk(Decoder decoder, byte[] data)
    {
        var chars = new char[decoder.GetCharCount(data, flush: false)];
        int n = decoder.GetChars(data, chars, flush: false);
        return new string(chars, 0, n);
    }

    /// <summary>One NDJSON line as an event; null for an event kind this client does not know (newer servers may add some).</summary>
    /// <param name="line">The line's bytes.</param>
    /// <param name="raw">Output is base64 (the request asked for <c>encoding: base64</c>).</param>
    internal static CommandEvent? Decode(ReadOnlySpan<byte> line, bool raw = false)
    {
        ExecEvent? evt;
        try
        {
            evt = JsonSerializer.Deserialize(line, MoatJson.Default.ExecEvent);
        }
        catch (JsonException ex)
        {
            throw new MoatStreamException("invalid_stream", $"the server sent a stream line that is not a valid event: {ex.Message}");
        }
        return evt switch
        {
            null => throw new MoatStreamException("invalid_stream", "the server sent a null stream event"),
            { Error: { } error } => throw new MoatStreamException(error.Code, error.Message),
            { Start: { } start } => new CommandEvent.Started(start.Pid),
            { Stdout: { } text } => raw ? new CommandEvent.StdoutBytes(FromBase64(text)) : new CommandEvent.Stdout(text),
            { Stderr: { } text } => raw ? new CommandEvent.StderrBytes(FromBase64(text)) : new CommandEvent.Stderr(text),
            { Exit: { } exit } => new CommandEvent.Exited(exit.ExitCode, exit.Signal, exit.TimedOut, exit.OomKilled, TimeSpan.FromMilliseconds(exit.DurationMs)),
            _ => null,
        };
    }
}
