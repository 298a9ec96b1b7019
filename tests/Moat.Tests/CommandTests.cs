using System.Text;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>Running commands: output, exit status, stdin, env, cwd, users, timeouts — on every tier.</summary>
public sealed class CommandTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Python_hello_world(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var ran = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "print('hello from moat')"] });
        Assert.Equal(0, ran.ExitCode);
        Assert.Equal("hello from moat\n", ran.Stdout);
        Assert.Equal("", ran.Stderr);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Output_arrives_in_order_and_interleaved_as_produced(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        await using var cmd = await Manager.StartCommandAsync(sb.Id, Tenant, new CommandSpec
        {
            Argv = ["python3", "-u", "-c", "import sys,time\nfor i in range(5):\n  print(f'out{i}', flush=True); time.sleep(0.05)\n  print(f'err{i}', file=sys.stderr, flush=True); time.sleep(0.05)"],
        }, CancellationToken.None);
        var seen = new List<string>();
        await foreach (var chunk in cmd.ReadOutputAsync())
        {
            foreach (var line in Encoding.UTF8.GetString(chunk.Data.Span).Split('\n', StringSplitOptions.RemoveEmptyEntries))
                seen.Add($"{chunk.Stream}:{line}");
        }
        var exit = await cmd.WaitExitAsync();
        Assert.Equal(0, exit.ExitCode);
        var expected = Enumerable.Range(0, 5).SelectMany(i => new[] { $"Stdout:out{i}", $"Stderr:err{i}" }).ToList();
        Assert.Equal(expected, seen);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Exit_codes_and_signals_are_reported(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        Assert.Equal(3, (await ShAsync(sb.Id, "exit 3")).ExitCode);
        var killed = await ShAsync(sb.Id, "kill -TERM $$; sleep 5");
        Assert.Equal(15, killed.Raw.Exit.Signal);
        Assert.Equal(128 + 15, killed.ExitCode);
        var segv = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "import os,signal; os.kill(os.getpid(), signal.SIGSEGV)"] });
        Assert.Equal(11, segv.Raw.Exit.Signal);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_missing_program_is_a_clear_error(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var ex = await Assert.ThrowsAsync<MoatException>(() => RunAsync(sb.Id, new CommandSpec { Argv = ["no-such-program-xyz"] }));
        Assert.Equal(SandboxManager.CommandNotFound, ex.Code);
        Assert.Equal(ErrorKind.InvalidArgument, ex.Kind);
        Assert.Contains("no-such-program-xyz", ex.Message);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Stdin_is_streamed_and_closed(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var ran = await RunAsync(sb.Id, new CommandSpec { Argv = ["sh", "-c", "tr a-z A-Z; echo done"] }, stdin: "hello\nworld\n");
        Assert.Equal("HELLO\nWORLD\ndone\n", ran.Stdout);

        // Interactive: write, read the answer, write again, close.
        await using var cmd = await Manager.StartCommandAsync(sb.Id, Tenant, new CommandSpec { Argv = ["python3", "-u", "-c", "import sys\nfor l in sys.stdin: print('got', l.strip(), flush=True)\nprint('eof')"], Stdin = true }, CancellationToken.None);
        var output = cmd.ReadOutputAsync().GetAsyncEnumerator();
        await cmd.WriteStdinAsync("one\n"u8.ToArray());
        // The answer to the first line arrives before the second line is even sent.
        var first = new StringBuilder();
        while (!first.ToString().EndsWith('\n') && await output.MoveNextAsync())
            first.Append(Encoding.UTF8.GetString(output.Current.Data.Span));
        Assert.Equal("got one\n", first.ToString());
        await cmd.WriteStdinAsync("two\n"u8.ToArray());
        await cmd.CloseStdinAsync();
        var rest = new StringBuilder();
        while (await output.MoveNextAsync())
            rest.Append(Encoding.UTF8.GetString(output.Current.Data.Span));
        Assert.Equal("got two\neof\n", rest.ToString());
        await output.DisposeAsync();
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Env_comes_from_template_sandbox_and_command(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, env: new Dictionary<string, string> { ["SANDBOX_VAR"] = "from-sandbox", ["OVERRIDE"] = "sandbox" });
        var ran = await ShAsync(sb.Id, "echo $SANDBOX_VAR $CMD_VAR $OVERRIDE $LANG; echo $HOME $USER", env: new Dictionary<string, string> { ["CMD_VAR"] = "from-command", ["OVERRIDE"] = "command" });
        Assert.Equal("from-sandbox from-command command C.UTF-8\n/home/user user\n", ran.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Cwd_defaults_to_home_and_can_be_set(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        Assert.Equal("/home/user\n", (await ShAsync(sb.Id, "pwd")).Stdout);
        Assert.Equal("/tmp\n", (await ShAsync(sb.Id, "pwd", cwd: "/tmp")).Stdout);
        var ex = await Assert.ThrowsAsync<MoatException>(() => ShAsync(sb.Id, "pwd", cwd: "/does/not/exist"));
        Assert.Equal("invalid_cwd", ex.Code);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Commands_run_as_user_by_default_and_root_only_when_asked(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        Assert.Equal("uid=1000(user) gid=1000(user) groups=1000(user)\n", (await ShAsync(sb.Id, "id")).Stdout);
        Assert.StartsWith("uid=0(root) gid=0(root)", (await ShAsync(sb.Id, "id", user: "root")).Stdout);
        var ex = await Assert.ThrowsAsync<MoatException>(() => ShAsync(sb.Id, "id", user: "nobody-such"));
        Assert.Equal("no_such_user", ex.Code);
        Assert.Equal(ErrorKind.InvalidArgument, ex.Kind);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_command_timeout_kills_its_whole_process_group(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var ran = await ShAsync(sb.Id, "sleep 300 & sleep 300 & echo started; wait", timeout: TimeSpan.FromSeconds(1));
        Assert.True(ran.Raw.Exit.TimedOut);
        Assert.Equal("started\n", ran.Stdout);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");
        // The background sleeps were in the group: none survives.
        var ps = await ShAsync(sb.Id, "ps -eo comm | grep -c '^sleep$' || true");
        Assert.Equal("0\n", ps.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Many_commands_run_concurrently(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var runs = Enumerable.Range(0, 16).Select(i => ShAsync(sb.Id, $"sleep 1; echo {i}")).ToList();
        var results = await Task.WhenAll(runs);
        for (int i = 0; i < results.Length; i++)
            Assert.Equal($"{i}\n", results[i].Stdout);
        // Sixteen one-second sleeps at once, not one after the other.
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(12), $"took {clock.Elapsed}");
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Buffered_output_is_capped_and_marked_truncated(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var ran = await ShAsync(sb.Id, "head -c 10000000 /dev/zero | tr '\\0' x; echo; echo tail >&2");
        Assert.Equal(Manager.Options.MaxBufferedOutputBytes, ran.Raw.Stdout.Length);
        Assert.True(ran.Raw.StdoutTruncated);
        Assert.False(ran.Raw.StderrTruncated);
        Assert.Equal("tail\n", ran.Stderr);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Invalid_commands_are_refused_before_reaching_the_sandbox(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        await Assert.ThrowsAsync<MoatException>(() => RunAsync(sb.Id, new CommandSpec { Argv = [] }));
        await Assert.ThrowsAsync<MoatException>(() => RunAsync(sb.Id, new CommandSpec { Argv = ["a\0b"] }));
        await Assert.ThrowsAsync<MoatException>(() => RunAsync(sb.Id, new CommandSpec { Argv = ["true"], Cwd = "relative" }));
        await Assert.ThrowsAsync<MoatException>(() => RunAsync(sb.Id, new CommandSpec { Argv = ["true"], User = "../etc" }));
        await Assert.ThrowsAsync<MoatException>(() => RunAsync(sb.Id, new CommandSpec { Argv = ["true"], Shell = "true" }));
    }
}
