using System.Net;
using System.Text;
using System.Text.Json;
using Moat.Client.Http;
using Moat.Client.Tests.Infrastructure;

namespace Moat.Client.Tests.Unit;

/// <summary>Streamed commands: NDJSON decoded line by line as it arrives, callbacks in order, cancellation that reaches the server.</summary>
public sealed class CommandStreamTests
{
    // Raw UTF-8 in the JSON strings, so a split can fall inside a multi-byte character.
    private const string Text = "héllo wörld ✓ 🎉 ok";
    private static readonly string Ndjson =
        "{\"start\":{\"pid\":42}}\n" +
        $"{{\"stdout\":\"{Text}\"}}\n" +
        "{\"stderr\":\"warn: ∆\\n\"}\r\n" +
        "\n" +
        $"{{\"stdout\":\"{Text}\"}}\n" +
        "{\"exit\":{\"exitCode\":3,\"timedOut\":false,\"oomKilled\":false,\"durationMs\":1500}}\n";

    public static TheoryData<int> SplitPoints()
    {
        var data = new TheoryData<int>();
        int length = Encoding.UTF8.GetByteCount(Ndjson);
        for (int i = 1; i < length; i++)
            data.Add(i);
        return data;
    }

    [Theory]
    [MemberData(nameof(SplitPoints))]
    public async Task Events_decode_the_same_wherever_the_bytes_are_split(int split)
    {
        var bytes = Encoding.UTF8.GetBytes(Ndjson);
        var events = await ReadAllAsync([bytes[..split], bytes[split..]]);
        AssertExpected(events);
    }

    [Fact]
    public async Task Events_decode_when_every_byte_arrives_alone()
    {
        var bytes = Encoding.UTF8.GetBytes(Ndjson);
        var events = await ReadAllAsync(bytes.Select(b => new[] { b }).ToArray());
        AssertExpected(events);
    }

    [Fact]
    public async Task Line_reader_splits_inside_a_multibyte_character_without_breaking_it()
    {
        var line = Encoding.UTF8.GetBytes("{\"stdout\":\"🎉\"}\n");
        int inside = Array.IndexOf(line, (byte)0xF0) + 2; // in the middle of the 4-byte emoji
        var stream = new ScriptedStream();
        stream.Feed(line[..inside]);
        stream.Feed(line[inside..]);
        stream.End();
        var reader = new NdjsonLineReader(stream);

        var first = await reader.ReadLineAsync(CancellationToken.None);

        Assert.Equal(new CommandEvent.Stdout("🎉"), SandboxCommands.Decode(first!.Value.Span));
        Assert.Null(await reader.ReadLineAsync(CancellationToken.None));
    }

    [Fact]
    public async Task Line_reader_keeps_a_last_line_without_newline_and_grows_for_long_lines()
    {
        var longText = new string('x', 100_000);
        var stream = new ScriptedStream();
        stream.Feed($"{{\"stdout\":\"{longText}\"}}\n{{\"stderr\":\"tail\"}}");
        stream.End();
        var reader = new NdjsonLineReader(stream);

        Assert.Equal(new CommandEvent.Stdout(longText), SandboxCommands.Decode((await reader.ReadLineAsync(CancellationToken.None))!.Value.Span));
        Assert.Equal(new CommandEvent.Stderr("tail"), SandboxCommands.Decode((await reader.ReadLineAsync(CancellationToken.None))!.Value.Span));
        Assert.Null(await reader.ReadLineAsync(CancellationToken.None));
    }

    [Fact]
    public async Task Line_reader_refuses_an_endless_line()
    {
        var stream = new ScriptedStream();
        stream.Feed(new string('x', 5000));
        var reader = new NdjsonLineReader(stream, maxLineBytes: 1024);

        var ex = await Assert.ThrowsAsync<MoatStreamException>(() => reader.ReadLineAsync(CancellationToken.None).AsTask());
        Assert.Equal("stream_line_too_long", ex.Code);
    }

    [Fact]
    public async Task Callbacks_fire_in_output_order_and_the_result_collects_everything()
    {
        var calls = new List<string>();
        var handler = Streaming(_ => Bytes(
            "{\"start\":{\"pid\":7}}\n{\"stdout\":\"a\"}\n{\"stderr\":\"b\"}\n{\"stdout\":\"c\"}\n{\"stderr\":\"d\"}\n" +
            "{\"exit\":{\"exitCode\":0,\"durationMs\":12}}\n"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        var result = await sandbox.Commands.RunAsync(["python3", "-c", "x"], new CommandOptions
        {
            OnStdout = s => calls.Add("out:" + s),
            OnStderr = s => calls.Add("err:" + s),
        });

        Assert.Equal(["out:a", "err:b", "out:c", "err:d"], calls);
        Assert.Equal("ac", result.Stdout);
        Assert.Equal("bd", result.Stderr);
        Assert.Equal(0, result.ExitCode);
        Assert.Equal(7, result.Pid);
        Assert.Equal(TimeSpan.FromMilliseconds(12), result.Duration);
        var request = handler.Single();
        Assert.Equal("application/x-ndjson", request.Accept);
        Assert.Equal("/v1/sandboxes/sb0123456789abcdefgh/exec", request.Uri.AbsolutePath);
    }

    [Fact]
    public async Task Callbacks_fire_as_output_arrives_not_at_the_end()
    {
        var body = new ScriptedStream();
        var handler = StubHandler.WithSandbox(_ => StubHandler.Stream(body));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        var firstChunk = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);

        body.Feed("{\"start\":{\"pid\":1}}\n{\"stdout\":\"early\"}\n");
        var run = sandbox.Commands.RunAsync("sleep 1; echo late", new CommandOptions { OnStdout = s => firstChunk.TrySetResult(s) });

        Assert.Equal("early", await firstChunk.Task.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.False(run.IsCompleted);
        body.Feed("{\"stdout\":\"late\"}\n{\"exit\":{\"exitCode\":0}}\n");
        var result = await run.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal("earlylate", result.Stdout);
    }

    [Fact]
    public async Task Stream_yields_each_event_as_it_arrives()
    {
        var body = new ScriptedStream();
        var handler = StubHandler.WithSandbox(_ => StubHandler.Stream(body));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        body.Feed("{\"start\":{\"pid\":9}}\n");

        await using var events = sandbox.Commands.StreamAsync("cat").GetAsyncEnumerator();

        Assert.True(await events.MoveNextAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(new CommandEvent.Started(9), events.Current);
        var pending = events.MoveNextAsync().AsTask();
        await Task.Delay(50);
        Assert.False(pending.IsCompleted);
        body.Feed("{\"stdout\":\"x\"}\n");
        Assert.True(await pending.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(new CommandEvent.Stdout("x"), events.Current);
        body.Feed("{\"exit\":{\"exitCode\":137,\"signal\":9,\"oomKilled\":true}}\n");
        Assert.True(await events.MoveNextAsync());
        Assert.Equal(new CommandEvent.Exited(137, 9, false, true, TimeSpan.Zero), events.Current);
        Assert.False(await events.MoveNextAsync());
    }

    [Fact]
    public async Task Error_event_throws_with_the_servers_code()
    {
        var handler = Streaming(_ => Bytes("{\"start\":{\"pid\":1}}\n{\"stdout\":\"partial\"}\n{\"error\":{\"code\":\"sandbox_unavailable\",\"message\":\"the agent of sandbox sb went away\"}}\n"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        var seen = new List<CommandEvent>();

        var ex = await Assert.ThrowsAsync<MoatStreamException>(async () =>
        {
            await foreach (var e in sandbox.Commands.StreamAsync("x"))
                seen.Add(e);
        });

        Assert.Equal("sandbox_unavailable", ex.Code);
        Assert.Equal("the agent of sandbox sb went away", ex.Message);
        Assert.Equal([new CommandEvent.Started(1), new CommandEvent.Stdout("partial")], seen);
    }

    [Fact]
    public async Task Stream_that_ends_before_exit_throws()
    {
        var handler = Streaming(_ => Bytes("{\"start\":{\"pid\":1}}\n{\"stdout\":\"par"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        var ex = await Assert.ThrowsAsync<MoatStreamException>(() => sandbox.Commands.RunAsync("x", new CommandOptions { OnStdout = _ => { } }));
        Assert.Equal("invalid_stream", ex.Code);

        var handler2 = Streaming(_ => Bytes("{\"start\":{\"pid\":1}}\n"));
        using var client2 = StubHandler.Client(handler2);
        var sandbox2 = await client2.ConnectAsync(StubHandler.SandboxId);
        var ex2 = await Assert.ThrowsAsync<MoatStreamException>(() => sandbox2.Commands.RunAsync("x", new CommandOptions { OnStdout = _ => { } }));
        Assert.Equal("stream_incomplete", ex2.Code);
    }

    [Fact]
    public async Task Unknown_event_kinds_from_a_newer_server_are_skipped()
    {
        var handler = Streaming(_ => Bytes("{\"start\":{\"pid\":1}}\n{\"progress\":{\"pct\":50}}\n{\"exit\":{\"exitCode\":0}}\n"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        var events = new List<CommandEvent>();
        await foreach (var e in sandbox.Commands.StreamAsync("x"))
            events.Add(e);

        Assert.Equal(2, events.Count);
    }

    [Fact]
    public async Task Cancelling_a_stream_aborts_the_response_and_throws_cancellation()
    {
        var body = new ScriptedStream();
        var handler = StubHandler.WithSandbox(_ => StubHandler.Stream(body));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        using var cts = new CancellationTokenSource();
        body.Feed("{\"start\":{\"pid\":1}}\n{\"stdout\":\"tick\"}\n");

        var run = sandbox.Commands.RunAsync("while true; do echo tick; sleep 1; done", new CommandOptions { OnStdout = _ => cts.Cancel() }, cts.Token);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(TimeSpan.FromSeconds(10)));
        await body.Disposed.Task.WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task Leaving_a_stream_early_releases_the_response()
    {
        var body = new ScriptedStream();
        var handler = StubHandler.WithSandbox(_ => StubHandler.Stream(body));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        body.Feed("{\"start\":{\"pid\":1}}\n");

        await foreach (var e in sandbox.Commands.StreamAsync("yes"))
        {
            Assert.IsType<CommandEvent.Started>(e);
            break;
        }

        await body.Disposed.Task.WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task Cancelled_token_stops_a_buffered_run()
    {
        var handler = StubHandler.WithSandbox(async (_, ct) =>
        {
            await Task.Delay(Timeout.Infinite, ct);
            throw new InvalidOperationException("unreachable");
        });
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => sandbox.Commands.RunAsync("sleep 100", cts.Token));
    }

    private static StubHandler Streaming(Func<HttpRequestMessage, byte[]> body) =>
        StubHandler.WithSandbox(r => StubHandler.Stream(new MemoryStream(body(r))));

    private static byte[] Bytes(string text) => Encoding.UTF8.GetBytes(text);

    private static async Task<List<CommandEvent>> ReadAllAsync(byte[][] chunks)
    {
        var body = new ScriptedStream();
        foreach (var chunk in chunks)
            body.Feed(chunk);
        body.End();
        var handler = StubHandler.WithSandbox(_ => StubHandler.Stream(body));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        var events = new List<CommandEvent>();
        await foreach (var e in sandbox.Commands.StreamAsync(["echo"]))
            events.Add(e);
        return events;
    }

    private static void AssertExpected(List<CommandEvent> events) => Assert.Equal(
        [
            new CommandEvent.Started(42),
            new CommandEvent.Stdout(Text),
            new CommandEvent.Stderr("warn: ∆\n"),
            new CommandEvent.Stdout(Text),
            new CommandEvent.Exited(3, null, false, false, TimeSpan.FromMilliseconds(1500)),
        ],
        events);

    [Fact]
    public void Server_style_escaped_json_decodes_too()
    {
        // The server's serializer escapes non-ASCII as \uXXXX; both forms must decode alike.
        var escaped = JsonSerializer.SerializeToUtf8Bytes(new Moat.Contracts.ExecEvent { Stdout = Text }, Moat.Contracts.MoatJson.Default.ExecEvent);
        Assert.Equal(new CommandEvent.Stdout(Text), SandboxCommands.Decode(escaped));
    }

    [Fact]
    public async Task Raw_output_asks_for_base64_and_yields_exact_bytes_while_callbacks_get_whole_characters()
    {
        var emoji = Encoding.UTF8.GetBytes("🎉");
        byte[] first = [0xFF, 0x00, .. emoji[..2]], second = [.. emoji[2..], (byte)'\n'];
        var handler = Streaming(_ => Bytes(
            "{\"start\":{\"pid\":1}}\n" +
            $"{{\"stdout\":\"{Convert.ToBase64String(first)}\"}}\n" +
            $"{{\"stdout\":\"{Convert.ToBase64String(second)}\"}}\n" +
            $"{{\"stderr\":\"{Convert.ToBase64String("e"u8.ToArray())}\"}}\n" +
            "{\"exit\":{\"exitCode\":0}}\n"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        var texts = new List<string>();
        var bytes = new List<byte>();

        await foreach (var e in sandbox.Commands.StreamAsync(["cat"], new CommandOptions { RawOutput = true, OnStdout = texts.Add }))
        {
            if (e is CommandEvent.StdoutBytes o)
                bytes.AddRange(o.Data);
            Assert.IsNotType<CommandEvent.Stdout>(e);
        }

        Assert.Equal([.. first, .. second], bytes.ToArray());
        Assert.Equal("\uFFFD\0🎉\n", string.Concat(texts));
        Assert.DoesNotContain("\uFFFD", texts[^1]);
        Assert.Contains("\"encoding\":\"base64\"", handler.Single().BodyText);
    }
}
