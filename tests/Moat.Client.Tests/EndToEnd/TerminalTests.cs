using System.Net;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// Interactive terminals: <c>GET /v1/sandboxes/{id}/terminal</c> as a WebSocket (bytes both ways,
/// resize, signals, the exit code at the end) and <c>moat sandbox shell</c> on top of it.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class TerminalTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private readonly ITestOutputHelper _output = output;

    [SkippableFact]
    public async Task A_terminal_runs_a_shell_on_a_pty_that_follows_resizes()
    {
        var sandbox = await CreateAsync();
        await using var terminal = await Terminal.OpenAsync(Server, Server.AdminKey, sandbox.Id, "cols=80&rows=24", Timeout);
        await terminal.TypeAsync("tty; stty size; echo \"sum=$((40+2))\"\n");
        await terminal.WaitForAsync("sum=42");
        Assert.Matches(@"/dev/pts/\d+", terminal.Screen);
        Assert.Contains("24 80", terminal.Screen);

        await terminal.SendControlAsync(new TerminalMessage { Resize = new TerminalSize(132, 40) });
        await terminal.TypeAsync("stty size\n");
        await terminal.WaitForAsync("40 132");

        // Ctrl+C's signal interrupts the foreground program, the shell stays.
        await terminal.TypeAsync("sleep 30; echo not-interrupted\n");
        await Task.Delay(500, Timeout);
        await terminal.SendControlAsync(new TerminalMessage { Signal = 2 });
        await terminal.TypeAsync("echo after=$?\n");
        await terminal.WaitForAsync("after=130");
        // The terminal echoes the typed line ("...; echo not-interrupted"); the echo's own output would start a line.
        Assert.DoesNotContain("\nnot-interrupted", terminal.Screen);

        await terminal.TypeAsync("exit 3\n");
        var exit = await terminal.WaitExitAsync();
        Assert.Equal(3, exit.ExitCode);
    }

    [SkippableFact]
    public async Task A_given_command_runs_as_the_given_user_and_its_exit_code_ends_the_session()
    {
        var sandbox = await CreateAsync();
        var query = "cols=40&rows=10&user=root&cwd=/tmp&cmd=/bin/sh&cmd=-c&cmd=" + Uri.EscapeDataString("whoami; pwd; read line; echo got:$line; exit 7");
        await using var terminal = await Terminal.OpenAsync(Server, Server.AdminKey, sandbox.Id, query, Timeout);
        await terminal.WaitForAsync("/tmp");
        await terminal.TypeAsync("hello\r");
        var exit = await terminal.WaitExitAsync();
        Assert.Equal(7, exit.ExitCode);
        Assert.Contains("root\r\n/tmp\r\n", terminal.Screen);
        Assert.Contains("got:hello", terminal.Screen);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, terminal.CloseStatus);
    }

    [SkippableFact]
    public async Task Another_tenant_and_a_missing_sandbox_get_404_and_plain_http_gets_400()
    {
        var sandbox = await CreateAsync();
        var keys = (Moat.Server.Auth.ApiKeyService)Server.Services.GetService(typeof(Moat.Server.Auth.ApiKeyService))!;
        var (_, otherKey) = await keys.CreateAsync("tenant-terminal-other", "admin", "other tenant", cancellationToken: Timeout);

        var refused = await Assert.ThrowsAsync<WebSocketException>(() => Terminal.OpenAsync(Server, otherKey, sandbox.Id, "", Timeout));
        Assert.Equal(HttpStatusCode.NotFound, refused.Data["status"]);
        var missing = await Assert.ThrowsAsync<WebSocketException>(() => Terminal.OpenAsync(Server, Server.AdminKey, "sb000000000000000000", "", Timeout));
        Assert.Equal(HttpStatusCode.NotFound, missing.Data["status"]);
        var anonymous = await Assert.ThrowsAsync<WebSocketException>(() => Terminal.OpenAsync(Server, null, sandbox.Id, "", Timeout));
        Assert.Equal(HttpStatusCode.Unauthorized, anonymous.Data["status"]);

        using var http = new HttpClient { BaseAddress = Server.Url };
        http.DefaultRequestHeaders.Authorization = new("Bearer", Server.AdminKey);
        using var plain = await http.GetAsync($"/v1/sandboxes/{sandbox.Id}/terminal", Timeout);
        Assert.Equal(HttpStatusCode.BadRequest, plain.StatusCode);
        Assert.Contains("websocket_required", await plain.Content.ReadAsStringAsync(Timeout));

        // The owner's sandbox is untouched and its terminal opens.
        await using var own = await Terminal.OpenAsync(Server, Server.AdminKey, sandbox.Id, "cmd=/bin/true", Timeout);
        Assert.Equal(0, (await own.WaitExitAsync()).ExitCode);
    }

    [SkippableFact]
    public async Task Closing_the_socket_hangs_up_the_terminal_and_ends_its_program()
    {
        var sandbox = await CreateAsync();
        var terminal = await Terminal.OpenAsync(Server, Server.AdminKey, sandbox.Id, "cmd=/bin/sh&cmd=-c&cmd=" + Uri.EscapeDataString("echo started; exec sleep 600"), Timeout);
        await terminal.WaitForAsync("started");
        await terminal.DisposeAsync();
        // The program is gone soon after the client left (SIGHUP, then a kill).
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        string left;
        do
        {
            await Task.Delay(300, Timeout);
            left = (await sandbox.Commands.RunAsync(["sh", "-c", "pgrep -x sleep || true"], cancellationToken: Timeout)).Stdout;
        }
        while (left.Length > 0 && DateTime.UtcNow < deadline);
        Assert.Equal("", left);
    }

    [SkippableFact]
    public async Task Moat_sandbox_shell_passes_input_and_output_through_and_exits_with_the_remote_code()
    {
        var sandbox = await CreateAsync();
        var env = new Dictionary<string, string> { ["MOAT_URL"] = Server.Url.AbsoluteUri, ["MOAT_API_KEY"] = Server.AdminKey };
        var result = await MoatCli.RunAsync(env, "hello from stdin\n", TimeSpan.FromMinutes(2), _output.WriteLine,
            "sandbox", "shell", sandbox.Id, "--", "/bin/sh", "-c", "read line; echo \"got:$line\"; stty size; exit 5");
        Assert.Equal(5, result.Exit);
        Assert.Contains("got:hello from stdin", result.Stdout);
        // Not a terminal here, so the CLI asks for 80x24.
        Assert.Contains("24 80", result.Stdout);

        // A login shell reads commands from piped input and ends at its end (Ctrl+D).
        var shell = await MoatCli.RunAsync(env, "echo \"shell-$((6*7))\"\n", TimeSpan.FromMinutes(2), _output.WriteLine, "sandbox", "shell", sandbox.Id);
        Assert.Equal(0, shell.Exit);
        Assert.Contains("shell-42", shell.Stdout);

        var gone = await MoatCli.RunAsync(env, "", TimeSpan.FromMinutes(1), _output.WriteLine, "sandbox", "shell", "sb000000000000000000");
        Assert.NotEqual(0, gone.Exit);
        Assert.Contains("sb000000000000000000", gone.Stderr);
    }

    [SkippableFact]
    public async Task Moat_sandbox_shell_on_a_terminal_is_raw_and_follows_window_resizes()
    {
        Skip.If(!File.Exists("/usr/bin/python3"), "python3 (which drives the CLI on a pseudo-terminal) is not installed");
        var sandbox = await CreateAsync();
        var script = Path.Combine(Repo.Root, "tests", "Moat.Client.Tests", "EndToEnd", "Scripts", "shell_on_a_tty.py");
        var start = new System.Diagnostics.ProcessStartInfo("/usr/bin/python3")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { script, MoatCli.Path(), sandbox.Id })
            start.ArgumentList.Add(arg);
        start.Environment["MOAT_URL"] = Server.Url.AbsoluteUri;
        start.Environment["MOAT_API_KEY"] = Server.AdminKey;
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["TERM"] = "xterm";
        using var process = System.Diagnostics.Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(Timeout);
        var stderr = process.StandardError.ReadToEndAsync(Timeout);
        try
        {
            await process.WaitForExitAsync(Timeout);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }
        _output.WriteLine(await stdout);
        _output.WriteLine(await stderr);
        Assert.True(process.ExitCode == 0, $"the terminal session failed:\n{await stdout}\n{await stderr}");
    }

    /// <summary>A client end of the terminal WebSocket that collects what the terminal shows.</summary>
    private sealed class Terminal : IAsyncDisposable
    {
        private readonly ClientWebSocket _socket;
        private readonly StringBuilder _screen = new();
        private readonly TaskCompletionSource<ExecExitDto> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly CancellationToken _timeout;
        private readonly Task _reader;

        private Terminal(ClientWebSocket socket, CancellationToken timeout)
        {
            _socket = socket;
            _timeout = timeout;
            _reader = Task.Run(ReadAsync, CancellationToken.None);
        }

        public string Screen
        {
            get
            {
                lock (_screen)
                    return _screen.ToString();
            }
        }

        public WebSocketCloseStatus? CloseStatus => _socket.CloseStatus;

        public static async Task<Terminal> OpenAsync(ServerFixture server, string? key, string sandboxId, string query, CancellationToken timeout)
        {
            var socket = new ClientWebSocket();
            socket.Options.CollectHttpResponseDetails = true;
            if (key is not null)
                socket.Options.SetRequestHeader("Authorization", "Bearer " + key);
            var url = new UriBuilder(new Uri(server.Url, $"v1/sandboxes/{sandboxId}/terminal")) { Scheme = "ws", Query = query }.Uri;
            try
            {
                await socket.ConnectAsync(url, timeout);
            }
            catch (WebSocketException ex)
            {
                ex.Data["status"] = socket.HttpStatusCode;
                socket.Dispose();
                throw;
            }
            return new Terminal(socket, timeout);
        }

        public Task TypeAsync(string text) => _socket.SendAsync(Encoding.UTF8.GetBytes(text), WebSocketMessageType.Binary, true, _timeout);

        public Task SendControlAsync(TerminalMessage message) =>
            _socket.SendAsync(JsonSerializer.SerializeToUtf8Bytes(message, MoatJson.Default.TerminalMessage), WebSocketMessageType.Text, true, _timeout);

        public async Task WaitForAsync(string text)
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (!Screen.Contains(text, StringComparison.Ordinal))
            {
                if (DateTime.UtcNow > deadline || _reader.IsCompleted)
                    Assert.Fail($"the terminal did not show '{text}'; it shows: {JsonSerializer.Serialize(Screen)}");
                await Task.Delay(50, _timeout);
            }
        }

        public async Task<ExecExitDto> WaitExitAsync() => await _exit.Task.WaitAsync(TimeSpan.FromSeconds(30), _timeout);

        private async Task ReadAsync()
        {
            var buffer = new byte[16384];
            var text = new MemoryStream();
            var decoder = Encoding.UTF8.GetDecoder();
            try
            {
                while (_socket.State == WebSocketState.Open)
                {
                    var received = await _socket.ReceiveAsync(buffer, _timeout);
                    if (received.MessageType == WebSocketMessageType.Close)
                        break;
                    if (received.MessageType == WebSocketMessageType.Binary)
                    {
                        var chars = new char[decoder.GetCharCount(buffer, 0, received.Count)];
                        decoder.GetChars(buffer, 0, received.Count, chars, 0);
                        lock (_screen)
                            _screen.Append(chars);
                        continue;
                    }
                    text.Write(buffer, 0, received.Count);
                    if (!received.EndOfMessage)
                        continue;
                    var message = JsonSerializer.Deserialize(text.ToArray(), MoatJson.Default.TerminalMessage);
                    text.SetLength(0);
                    if (message?.Exit is { } exit)
                        _exit.TrySetResult(exit);
                    else if (message?.Error is { } error)
                        _exit.TrySetException(new InvalidOperationException($"terminal error {error.Code}: {error.Message}"));
                }
            }
            catch (Exception ex) when (ex is WebSocketException or OperationCanceledException)
            {
            }
            _exit.TrySetException(new InvalidOperationException($"the terminal closed without an exit message; it showed: {JsonSerializer.Serialize(Screen)}"));
        }

        public async ValueTask DisposeAsync()
        {
            if (_socket.State == WebSocketState.Open)
            {
                try
                {
                    await _socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);
                }
                catch (WebSocketException)
                {
                }
            }
            await Task.WhenAny(_reader, Task.Delay(TimeSpan.FromSeconds(5)));
            _socket.Dispose();
        }
    }
}
