using System.Text;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>Against a real server: commands buffered and streamed, with their exit status, stdin, env, user and timeout.</summary>
[Collection(ServerCollection.Name)]
public sealed class CommandTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [SkippableFact]
    public async Task Python_prints_hello()
    {
        var sandbox = await CreateAsync();

        var result = await sandbox.Commands.RunAsync(["python3", "-c", "print('hello from moat')"], Timeout);

        Assert.Equal(0, result.ExitCode);
        Assert.Equal("hello from moat\n", result.Stdout);
        Assert.Equal("", result.Stderr);
        Assert.False(result.TimedOut);
        Assert.True(result.Duration > TimeSpan.Zero);
    }

    [SkippableFact]
    public async Task Streaming_callbacks_fire_in_order_as_output_is_produced()
    {
        var sandbox = await CreateAsync();
        var seen = new List<(string Stream, string Text, DateTime At)>();
        var script = "import sys,time\nfor i in range(4):\n  print(f'out{i}', flush=True); time.sleep(0.3)\n  print(f'err{i}', file=sys.stderr, flush=True); time.sleep(0.3)";

        var result = await sandbox.Commands.RunAsync(["python3", "-u", "-c", script], new CommandOptions
        {
            OnStdout = s => { lock (seen) seen.Add(("out", s, DateTime.UtcNow)); },
            OnStderr = s => { lock (seen) seen.Add(("err", s, DateTime.UtcNow)); },
        }, Timeout);
        var done = DateTime.UtcNow;

        var lines = seen.SelectMany(c => c.Text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => $"{c.Stream}:{l}")).ToList();
        Assert.Equal(Enumerable.Range(0, 4).SelectMany(i => new[] { $"out:out{i}", $"err:err{i}" }), lines);
        Assert.Equal("out0\nout1\nout2\nout3\n", result.Stdout);
        Assert.Equal("err0\nerr1\nerr2\nerr3\n", result.Stderr);
        // The first chunk arrived long before the command finished (about 2.4 s of sleeps).
        Assert.True(done - seen[0].At > TimeSpan.FromSeconds(1.5), $"first output {(done - seen[0].At).TotalSeconds:0.00}s before the end");
    }

    [SkippableFact]
    public async Task Stream_yields_start_output_and_exit()
    {
        var sandbox = await CreateAsync();
        var events = new List<CommandEvent>();

        await foreach (var e in sandbox.Commands.StreamAsync("echo one; echo two >&2; exit 7", Timeout))
            events.Add(e);

        Assert.IsType<CommandEvent.Started>(events[0]);
        Assert.True(((CommandEvent.Started)events[0]).Pid > 0);
        var exit = Assert.IsType<CommandEvent.Exited>(events[^1]);
        Assert.Equal(7, exit.ExitCode);
        Assert.Equal("one\n", string.Concat(events.OfType<CommandEvent.Stdout>().Select(o => o.Text)));
        Assert.Equal("two\n", string.Concat(events.OfType<CommandEvent.Stderr>().Select(o => o.Text)));
    }

    [SkippableFact]
    public async Task Multibyte_output_survives_streaming_chunk_by_chunk()
    {
        var sandbox = await CreateAsync();
        // Written one byte at a time, so every character is split across chunks.
        var script = "import sys,time\ndata='héllo ✓ 🎉\\n'.encode()\nfor b in data:\n  sys.stdout.buffer.write(bytes([b])); sys.stdout.flush(); time.sleep(0.01)";
        var text = new StringBuilder();

        var result = await sandbox.Commands.RunAsync(["python3", "-c", script], new CommandOptions { OnStdout = s => text.Append(s) }, Timeout);

        Assert.Equal("héllo ✓ 🎉\n", text.ToString());
        Assert.Equal("héllo ✓ 🎉\n", result.Stdout);
    }

    [SkippableFact]
    public async Task Raw_output_is_byte_exact()
    {
        var sandbox = await CreateAsync();
        var bytes = new List<byte>();

        await foreach (var e in sandbox.Commands.StreamAsync(["python3", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"], new CommandOptions { RawOutput = true }, Timeout))
        {
            if (e is CommandEvent.StdoutBytes o)
                bytes.AddRange(o.Data);
        }

        Assert.Equal(Enumerable.Range(0, 256).Select(i => (byte)i), bytes);
    }

    [SkippableFact]
    public async Task Stdin_env_cwd_and_user_are_applied()
    {
        var sandbox = await CreateAsync();

        var upper = await sandbox.Commands.RunAsync(["tr", "a-z", "A-Z"], new CommandOptions { Stdin = "hello\n" }, Timeout);
        var env = await sandbox.Commands.RunAsync("echo $A-$B; pwd; id -un", new CommandOptions { Env = { ["A"] = "1", ["B"] = "two" }, Cwd = "/tmp" }, Timeout);
        var root = await sandbox.Commands.RunAsync("id -u", new CommandOptions { User = "root" }, Timeout);
        var streamedStdin = await sandbox.Commands.RunAsync(["wc", "-c"], new CommandOptions { StdinBytes = new byte[1000], OnStdout = _ => { } }, Timeout);

        Assert.Equal("HELLO\n", upper.Stdout);
        Assert.Equal("1-two\n/tmp\nuser\n", env.Stdout);
        Assert.Equal("0\n", root.Stdout);
        Assert.Equal("1000", streamedStdin.Stdout.Trim());
    }

    [SkippableFact]
    public async Task A_command_timeout_kills_it_and_says_so()
    {
        var sandbox = await CreateAsync();

        var buffered = await sandbox.Commands.RunAsync("sleep 30", new CommandOptions { Timeout = TimeSpan.FromSeconds(1) }, Timeout);
        var streamed = await sandbox.Commands.RunAsync("echo started; sleep 30", new CommandOptions { Timeout = TimeSpan.FromSeconds(1), OnStdout = _ => { } }, Timeout);

        Assert.True(buffered.TimedOut);
        Assert.NotEqual(0, buffered.ExitCode);
        Assert.True(buffered.Duration < TimeSpan.FromSeconds(20));
        Assert.True(streamed.TimedOut);
        Assert.Equal("started\n", streamed.Stdout);
    }

    [SkippableFact]
    public async Task A_failing_command_throws_only_when_asked()
    {
        var sandbox = await CreateAsync();

        var plain = await sandbox.Commands.RunAsync("echo oops >&2; exit 3", Timeout);
        var ex = await Assert.ThrowsAsync<CommandExitException>(() => sandbox.Commands.RunAsync("echo oops >&2; exit 3", new CommandOptions { ThrowOnNonZero = true }, Timeout));

        Assert.Equal(3, plain.ExitCode);
        Assert.Equal(3, ex.ExitCode);
        Assert.Contains("oops", ex.Message);
    }

    [SkippableFact]
    public async Task A_missing_program_is_an_api_error_naming_it()
    {
        var sandbox = await CreateAsync();

        var ex = await Assert.ThrowsAnyAsync<MoatApiException>(() => sandbox.Commands.RunAsync(["no-such-program-xyz"], Timeout));

        Assert.Contains("no-such-program-xyz", ex.Message);
    }

    [SkippableFact]
    public async Task Cancelling_a_stream_stops_the_command()
    {
        var sandbox = await CreateAsync();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Timeout);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => sandbox.Commands.RunAsync(
            "echo $$ > /tmp/pid; while true; do echo tick; sleep 0.2; done",
            new CommandOptions { OnStdout = _ => cts.Cancel() }, cts.Token));

        // The server kills a command whose client went away.
        var deadline = DateTime.UtcNow.AddSeconds(15);
        string alive;
        do
        {
            await Task.Delay(200);
            alive = (await sandbox.Commands.RunAsync("kill -0 $(cat /tmp/pid) 2>/dev/null && echo alive || echo gone", Timeout)).Stdout.Trim();
        }
        while (alive == "alive" && DateTime.UtcNow < deadline);
        Assert.Equal("gone", alive);
    }

    [SkippableFact]
    public async Task One_shot_run_creates_runs_and_destroys()
    {
        var one = await Client.RunAsync(new Moat.Contracts.RunRequest { Language = "python", Code = "print(6 * 7)", Isolation = "container" }, Timeout);

        Assert.Equal(0, one.ExitCode);
        Assert.Equal("42\n", one.Stdout);
        var after = await Client.GetSandboxAsync(one.SandboxId, Timeout);
        Assert.NotEqual("running", after.State);
    }
}
