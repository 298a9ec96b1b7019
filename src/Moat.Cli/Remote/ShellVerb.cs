using System.CommandLine;
using System.Net.WebSockets;
using System.Runtime.InteropServices;
using System.Text.Json;
using Moat.Contracts;

namespace Moat.Cli.Remote;

/// <summary>
/// <c>moat sandbox shell ID [-- COMMAND...]</c>: an interactive terminal in a sandbox over the
/// server's terminal WebSocket. The local terminal is put in raw mode (every key, Ctrl+C
/// included, goes to the sandbox) and restored on exit; window resizes follow (SIGWINCH). The exit
/// code is the remote program's.
/// </summary>
internal static class ShellVerb
{
    public static Command Create()
    {
        var id = new Argument<string>("id") { Description = "Sandbox id" };
        var program = new Argument<string[]>("command") { Description = "Program and arguments to run instead of a login shell (after --)", Arity = ArgumentArity.ZeroOrMore };
        var user = new Option<string?>("--user") { Description = "User to run as (default: user)" };
        var cwd = new Option<string?>("--cwd") { Description = "Working directory (default: the user's home)" };
        var command = new Command("shell", "Open an interactive terminal in a running sandbox (a login shell, or COMMAND); exits with its exit code.\nExample: moat sandbox shell sb... -- python3")
        {
            id, program, user, cwd,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var sandboxId = parse.GetValue(id)!;
            // Fails early, with the API's message, for a sandbox that does not exist or has ended.
            await client.GetSandboxAsync(sandboxId, ct).ConfigureAwait(false);
            var options = Connection.Options(parse.GetValue<string?>(Connection.UrlName), parse.GetValue<string?>(Connection.ApiKeyName));
            return await RunAsync(client.BaseUrl, options.ApiKey, sandboxId, parse.GetValue(program) ?? [], parse.GetValue(user), parse.GetValue(cwd), ct).ConfigureAwait(false);
        }, ct));
        return command;
    }

    private static async Task<int> RunAsync(Uri server, string? apiKey, string sandboxId, string[] program, string? user, string? cwd, CancellationToken cancellationToken)
    {
        bool interactive = !Console.IsInputRedirected && !Console.IsOutputRedirected;
        var (cols, rows) = interactive ? (Math.Max(1, Console.WindowWidth), Math.Max(1, Console.WindowHeight)) : (80, 24);
        var query = new List<string> { $"cols={cols}", $"rows={rows}" };
        query.AddRange(program.Select(a => "cmd=" + Uri.EscapeDataString(a)));
        if (!string.IsNullOrEmpty(user))
            query.Add("user=" + Uri.EscapeDataString(user));
        if (!string.IsNullOrEmpty(cwd))
            query.Add("cwd=" + Uri.EscapeDataString(cwd));
        if (Environment.GetEnvironmentVariable("TERM") is { Length: > 0 } term)
            query.Add("term=" + Uri.EscapeDataString(term));
        var url = new UriBuilder(new Uri(server, $"v1/sandboxes/{Uri.EscapeDataString(sandboxId)}/terminal"))
        {
            Scheme = server.Scheme == "https" ? "wss" : "ws",
            Query = string.Join('&', query),
        }.Uri;

        using var socket = new ClientWebSocket();
        if (!string.IsNullOrEmpty(apiKey))
            socket.Options.SetRequestHeader("Authorization", "Bearer " + apiKey);
        socket.Options.KeepAliveInterval = TimeSpan.FromSeconds(20);
        try
        {
            await socket.ConnectAsync(url, cancellationToken).ConfigureAwait(false);
        }
        catch (WebSocketException ex)
        {
            throw new UsageException($"could not open a terminal in {sandboxId}: {ex.Message}");
        }

        using var raw = interactive ? RawTerminal.Enter() : null;
        using var sendLock = new SemaphoreSlim(1, 1);
        using var resize = interactive ? PosixSignalRegistration.Create(PosixSignal.SIGWINCH, signal =>
        {
            _ = SendControlAsync(socket, sendLock, new TerminalMessage { Resize = new TerminalSize(Math.Max(1, Console.WindowWidth), Math.Max(1, Console.WindowHeight)) });
        }) : null;
        _ = Task.Run(() => CopyInputAsync(socket, sendLock, interactive, cancellationToken), CancellationToken.None);

        await using var stdout = Console.OpenStandardOutput();
        var buffer = new byte[65536];
        using var text = new MemoryStream();
        int exitCode = 255;
        try
        {
            while (socket.State is WebSocketState.Open or WebSocketState.CloseSent)
            {
                var received = await socket.ReceiveAsync(buffer, cancellationToken).ConfigureAwait(false);
                if (received.MessageType == WebSocketMessageType.Close)
                    break;
                if (received.MessageType == WebSocketMessageType.Binary)
                {
                    await stdout.WriteAsync(buffer.AsMemory(0, received.Count), cancellationToken).ConfigureAwait(false);
                    await stdout.FlushAsync(cancellationToken).ConfigureAwait(false);
                    continue;
                }
                text.Write(buffer, 0, received.Count);
                if (!received.EndOfMessage)
                    continue;
                var message = JsonSerializer.Deserialize(text.ToArray(), MoatJson.Default.TerminalMessage);
                text.SetLength(0);
                if (message?.Exit is { } exit)
                    exitCode = exit.ExitCode;
                else if (message?.Error is { } error)
                {
                    raw?.Dispose();
                    await Console.Error.WriteLineAsync($"moat: {error.Message} ({error.Code})").ConfigureAwait(false);
                    return RemoteCommands.ApiError;
                }
            }
        }
        catch (WebSocketException ex)
        {
            raw?.Dispose();
            await Console.Error.WriteLineAsync($"\r\nmoat: the terminal connection broke: {ex.Message}").ConfigureAwait(false);
            return RemoteCommands.ApiError;
        }
        return exitCode;
    }

    private static async Task CopyInputAsync(ClientWebSocket socket, SemaphoreSlim sendLock, bool interactive, CancellationToken cancellationToken)
    {
        try
        {
            // On a terminal, fd 0 itself: .NET's console stream would read through its own line
            // editor (echoing locally, turning Ctrl+C into a signal for this process) and undo raw mode.
            await using var stdin = interactive
                ? new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, ownsHandle: false), FileAccess.Read, bufferSize: 0)
                : Console.OpenStandardInput();
            var buffer = new byte[4096];
            int n;
            while ((n = await stdin.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                await SendAsync(socket, sendLock, buffer.AsMemory(0, n), WebSocketMessageType.Binary).ConfigureAwait(false);
            // Piped input ran out: the terminal gets an end-of-file, as a user typing Ctrl+D.
            if (!interactive)
                await SendAsync(socket, sendLock, new byte[] { 4 }, WebSocketMessageType.Binary).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is WebSocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    private static Task SendControlAsync(ClientWebSocket socket, SemaphoreSlim sendLock, TerminalMessage message) =>
        SendAsync(socket, sendLock, JsonSerializer.SerializeToUtf8Bytes(message, MoatJson.Default.TerminalMessage), WebSocketMessageType.Text);

    private static async Task SendAsync(ClientWebSocket socket, SemaphoreSlim sendLock, ReadOnlyMemory<byte> data, WebSocketMessageType type)
    {
        await sendLock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (socket.State == WebSocketState.Open)
                await socket.SendAsync(data, type, endOfMessage: true, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is WebSocketException or ObjectDisposedException)
        {
        }
        finally
        {
            sendLock.Release();
        }
    }

    /// <summary>The local terminal in raw mode (no echo, no line editing, no signals from keys) until disposed.</summary>
    private sealed class RawTerminal : IDisposable
    {
        // struct termios is 60 bytes with glibc on Linux; a larger buffer is safe.
        private const int TermiosSize = 128;
        private readonly byte[] _saved;
        private bool _restored;

        private RawTerminal(byte[] saved) => _saved = saved;

        public static RawTerminal? Enter()
        {
            var saved = new byte[TermiosSize];
            if (tcgetattr(0, saved) != 0)
                return null;
            var raw = (byte[])saved.Clone();
            cfmakeraw(raw);
            return tcsetattr(0, 0 /* TCSANOW */, raw) == 0 ? new RawTerminal(saved) : null;
        }

        public void Dispose()
        {
            if (_restored)
                return;
            _restored = true;
            _ = tcsetattr(0, 0, _saved);
        }

        [DllImport("libc", SetLastError = true)]
        private static extern int tcgetattr(int fd, [Out] byte[] termios);

        [DllImport("libc", SetLastError = true)]
        private static extern int tcsetattr(int fd, int optionalActions, byte[] termios);

        [DllImport("libc")]
        private static extern void cfmakeraw([In, Out] byte[] termios);
    }
}
