using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests;

public sealed class ExecTests
{
    private static ExecRequest Exec(string user, params string[] argv)
    {
        var e = new ExecRequest { User = user };
        e.Argv.AddRange(argv);
        return e;
    }

    private static ExecRequest Shell(string script, string user = "root") => Exec(user, "/bin/sh", "-c", script);

    [Fact]
    public async Task Argv_runs_and_its_output_and_exit_come_back()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.RunAsync("echo", "hello", "world");
        Assert.NotNull(r.Started);
        Assert.True(r.Started!.Pid > 0);
        Assert.Equal("hello world\n", r.Stdout);
        Assert.Equal(0, r.Exit!.ExitCode);
        Assert.Equal(1, r.StdoutFinals);
        Assert.Equal(1, r.StderrFinals);
        Assert.Null(client.Violation);
    }

    [Fact]
    public async Task A_shell_command_line_runs_through_sh()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.ShellAsync("a=21; echo $((a * 2)) | tr 4 X");
        Assert.Equal("X2\n", r.Stdout);
    }

    [Fact]
    public async Task The_exec_sequence_is_started_then_output_then_finals_then_exit()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.ShellAsync("echo out; echo err >&2");
        var kinds = r.Frames.Select(f => f.Type).ToList();
        Assert.Equal(FrameType.Response, kinds[0]);
        Assert.NotNull(r.Frames[0].AsResponse().Started);
        Assert.Equal(FrameType.Response, kinds[^1]);
        Assert.True(r.Frames[^1].IsFinal);
        int lastData = kinds.FindLastIndex(k => k is FrameType.Stdout or FrameType.Stderr);
        Assert.Equal(lastData, kinds.Count - 2);
        // Each channel's Final comes after all of its data.
        foreach (var type in new[] { FrameType.Stdout, FrameType.Stderr })
        {
            int final = r.Frames.FindIndex(f => f.Type == type && f.IsFinal);
            Assert.True(final > r.Frames.FindLastIndex(f => f.Type == type && f.Payload.Length > 0));
        }
        Assert.Equal("out\n", r.Stdout);
        Assert.Equal("err\n", r.Stderr);
    }

    [Fact]
    public async Task Stdout_and_stderr_arrive_separately_and_in_the_order_produced()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.ShellAsync("for i in 1 2 3 4 5; do echo out$i; sleep 0.02; echo err$i >&2; sleep 0.02; done");
        Assert.Equal("out1\nout2\nout3\nout4\nout5\n", r.Stdout);
        Assert.Equal("err1\nerr2\nerr3\nerr4\nerr5\n", r.Stderr);
        var sequence = r.Frames.Where(f => f.Payload.Length > 0 && f.Type is FrameType.Stdout or FrameType.Stderr)
            .Select(f => Encoding.UTF8.GetString(f.Payload).Trim()).ToList();
        Assert.Equal(["out1", "err1", "out2", "err2", "out3", "err3", "out4", "err4", "out5", "err5"], sequence);
    }

    [Fact]
    public async Task Output_is_streamed_while_the_command_runs()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var stream = await client.ExecAsync(Shell("echo first; sleep 1; echo second"));
        var sw = Stopwatch.StartNew();
        Assert.NotNull((await stream.ResponseAsync()).Started);
        var first = await stream.NextAsync();
        Assert.Equal(FrameType.Stdout, first!.Type);
        Assert.Equal("first\n", Encoding.UTF8.GetString(first.Payload));
        Assert.True(sw.ElapsedMilliseconds < 800, $"first line after {sw.ElapsedMilliseconds} ms");
        var rest = await stream.CollectAsync();
        Assert.Equal("second\n", rest.Stdout);
    }

    [Theory]
    [InlineData("exit 0", 0)]
    [InlineData("exit 3", 3)]
    [InlineData("exit 255", 255)]
    public async Task Exit_codes_are_reported(string script, int code)
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.ShellAsync(script);
        Assert.Equal(code, r.Exit!.ExitCode);
        Assert.Equal(0, r.Exit.Signal);
        Assert.False(r.Exit.TimedOut);
    }

    [Fact]
    public async Task A_terminating_signal_is_reported()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.ShellAsync("kill -TERM $$");
        Assert.Equal(-1, r.Exit!.ExitCode);
        Assert.Equal(15, r.Exit.Signal);
    }

    [Fact]
    public async Task Control_signal_reaches_the_process_group()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var stream = await client.ExecAsync(Shell("sleep 30 & sleep 30; echo never"));
        Assert.NotNull((await stream.ResponseAsync()).Started);
        await client.SendMessageAsync(FrameType.Control, FrameFlags.None, stream.Id, new StreamControl { Signal = 9 });
        var r = await stream.CollectAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(9, r.Exit!.Signal);
    }

    [Fact]
    public async Task Stdin_is_streamed_and_closed_with_a_Final_frame()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Exec("root", "cat");
        exec.Stdin = true;
        var stream = await client.ExecAsync(exec);
        Assert.NotNull((await stream.ResponseAsync()).Started);
        await client.SendStdinAsync(stream, "line one\n");
        var echoed = await stream.NextAsync();
        Assert.Equal("line one\n", Encoding.UTF8.GetString(echoed!.Payload));
        await client.SendStdinAsync(stream, "line two\n", final: true);
        var r = await stream.CollectAsync();
        Assert.Equal("line two\n", r.Stdout);
        Assert.Equal(0, r.Exit!.ExitCode);
    }

    [Fact]
    public async Task Control_close_stdin_ends_input()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Exec("root", "wc", "-c");
        exec.Stdin = true;
        var stream = await client.ExecAsync(exec);
        await client.SendStdinAsync(stream, "12345");
        await client.SendMessageAsync(FrameType.Control, FrameFlags.None, stream.Id, new StreamControl { CloseStdin = true });
        var r = await stream.CollectAsync();
        Assert.Equal("5", r.Stdout.Trim());
    }

    [Fact]
    public async Task Large_stdin_is_delivered_whole_within_the_agents_windows()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Exec("root", "sha256sum");
        exec.Stdin = true;
        var stream = await client.ExecAsync(exec);
        var data = new byte[8 << 20];
        new Random(7).NextBytes(data);
        await client.SendDataAsync(stream, FrameType.Stdin, data, final: true);
        var r = await stream.CollectAsync();
        string expected = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(data));
        Assert.StartsWith(expected, r.Stdout);
    }

    [Fact]
    public async Task Stdin_for_a_command_without_stdin_is_dropped_and_the_connection_lives()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var stream = await client.ExecAsync(Exec("root", "/bin/sh", "-c", "sleep 0.3; cat; echo end"));
        await stream.ResponseAsync();
        await client.SendStdinAsync(stream, "ignored\n", final: true);
        var r = await stream.CollectAsync();
        Assert.Equal("end\n", r.Stdout);
        Assert.Null(client.GoAway);
    }

    [Fact]
    public async Task Without_stdin_the_command_reads_dev_null()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.RunAsync(Exec("root", "cat"), TimeSpan.FromSeconds(5));
        Assert.Equal("", r.Stdout);
        Assert.Equal(0, r.Exit!.ExitCode);
    }

    [Fact]
    public async Task The_environment_is_the_hosts_plus_defaults_and_nothing_of_the_agent()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Exec("root", "/usr/bin/env");
        exec.Env.Add(new EnvVar { Name = "GREETING", Value = "hi there" });
        exec.Env.Add(new EnvVar { Name = "HOME", Value = "/custom" });
        var r = await client.RunAsync(exec);
        var env = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).ToDictionary(l => l[..l.IndexOf('=')], l => l[(l.IndexOf('=') + 1)..]);
        Assert.Equal("hi there", env["GREETING"]);
        Assert.Equal("/custom", env["HOME"]);
        Assert.Equal("root", env["USER"]);
        Assert.Equal("root", env["LOGNAME"]);
        Assert.Contains("/usr/bin", env["PATH"]);
        Assert.False(env.ContainsKey("MOAT_AGENT_SECRET"));
    }

    [Fact]
    public async Task A_malformed_environment_variable_is_refused()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Exec("root", "/usr/bin/env");
        exec.Env.Add(new EnvVar { Name = "A=B", Value = "x" });
        var r = await client.RunAsync(exec);
        Assert.Equal("invalid_argument", r.Error!.Code);
    }

    [Fact]
    public async Task Cwd_is_honoured_and_defaults_to_the_users_home()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Exec("root", "pwd");
        exec.Cwd = "/usr/share";
        Assert.Equal("/usr/share\n", (await client.RunAsync(exec)).Stdout);
        var home = await client.RunAsync(Exec("root", "pwd"));
        Assert.Equal(Directory.Exists("/root") ? "/root\n" : "/\n", home.Stdout);
        exec.Cwd = "/does/not/exist";
        var missing = await client.RunAsync(exec);
        Assert.Equal("not_found", missing.Error!.Code);
    }

    [Fact]
    public async Task A_missing_program_answers_not_found()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.RunAsync("definitely-not-a-command-xyz");
        Assert.Equal("not_found", r.Error!.Code);
        Assert.True(r.Final.Error is not null);
        var abs = await client.RunAsync("/no/such/binary");
        Assert.Equal("not_found", abs.Error!.Code);
    }

    [Fact]
    public async Task An_unknown_user_answers_no_such_user()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.RunAsync(Exec("nobody-such-user-xyz", "true"));
        Assert.Equal("no_such_user", r.Error!.Code);
    }

    [Fact]
    public async Task Users_resolve_to_root_numeric_uids_and_the_default_user()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        Assert.Equal("0 0", (await client.RunAsync(Exec("root", "/bin/sh", "-c", "echo $(id -u) $(id -g)"))).Stdout.Trim());
        Assert.Equal("4321 4321", (await client.RunAsync(Exec("4321", "/bin/sh", "-c", "echo $(id -u) $(id -g)"))).Stdout.Trim());
        var user = await client.RunAsync(Exec("", "/bin/sh", "-c", "echo $(id -u) $(id -g) $HOME $USER"));
        Assert.Equal("1000 1000 /home/user user", user.Stdout.Trim());
    }

    [Theory]
    [InlineData("root")]
    [InlineData("user")]
    public async Task Commands_hold_no_capabilities_and_have_no_new_privs(string user)
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Exec(user, "cat", "/proc/self/status");
        exec.Cwd = "/";
        var r = await client.RunAsync(exec);
        var status = r.Stdout.Split('\n').Where(l => l.Contains(':')).ToDictionary(l => l[..l.IndexOf(':')], l => l[(l.IndexOf(':') + 1)..].Trim());
        foreach (var key in new[] { "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb" })
            Assert.Equal("0000000000000000", status[key]);
        Assert.Equal("1", status["NoNewPrivs"]);
    }

    [Fact]
    public async Task The_command_sees_no_descriptor_but_0_1_and_2()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.RunAsync(Exec("root", "ls", "-l", "/proc/self/fd"));
        var fds = new Dictionary<int, string>();
        foreach (Match m in Regex.Matches(r.Stdout, @"\s(\d+) -> (.*)$", RegexOptions.Multiline))
            fds[int.Parse(m.Groups[1].Value)] = m.Groups[2].Value;
        Assert.Contains(0, fds.Keys);
        Assert.Contains(1, fds.Keys);
        Assert.Contains(2, fds.Keys);
        // ls itself holds the /proc/<pid>/fd directory open; anything else leaked from the agent.
        foreach (var (fd, target) in fds.Where(kv => kv.Key > 2))
            Assert.Matches(@"^/proc/\d+/fd$", target);
        Assert.Equal("/dev/null", fds[0]);
        Assert.StartsWith("pipe:", fds[1]);
    }

    [Fact]
    public async Task The_command_leads_its_own_session_and_process_group()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var r = await client.RunAsync(Exec("root", "cat", "/proc/self/stat"));
        var fields = r.Stdout[(r.Stdout.LastIndexOf(')') + 2)..].Split(' ');
        int pid = r.Started!.Pid;
        Assert.Equal(pid, int.Parse(fields[2])); // pgrp
        Assert.Equal(pid, int.Parse(fields[3])); // session
    }

    [Fact]
    public async Task A_timeout_kills_the_whole_command_including_setsid_and_background_children()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Shell("setsid sleep 60 & echo $!; sleep 60 & echo $!; (sleep 60 &) ; sleep 60");
        exec.TimeoutMs = 700;
        var sw = Stopwatch.StartNew();
        var r = await client.RunAsync(exec, TimeSpan.FromSeconds(20));
        Assert.True(r.Exit!.TimedOut);
        Assert.Equal(9, r.Exit.Signal);
        Assert.True(sw.ElapsedMilliseconds < 5000, $"took {sw.ElapsedMilliseconds} ms");
        var pids = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToList();
        Assert.Equal(2, pids.Count);
        await WaitGoneAsync(pids);
        // Nothing with the command's session or group survives either.
        await WaitGoneAsync(ProcessesInSession(r.Started!.Pid));
    }

    [Fact]
    public async Task Exit_is_reported_soon_even_when_a_background_child_holds_the_pipes()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var sw = Stopwatch.StartNew();
        var r = await client.ShellAsync("sleep 3 & echo done");
        Assert.Equal("done\n", r.Stdout);
        Assert.Equal(0, r.Exit!.ExitCode);
        Assert.True(sw.ElapsedMilliseconds < 2000, $"exit after {sw.ElapsedMilliseconds} ms");
    }

    [Fact]
    public async Task Many_commands_run_concurrently()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var runs = Enumerable.Range(0, 40).Select(i => client.ShellAsync($"sleep 0.2; echo {i}")).ToList();
        var results = await Task.WhenAll(runs);
        for (int i = 0; i < results.Length; i++)
            Assert.Equal($"{i}\n", results[i].Stdout);
        Assert.Null(client.Violation);
    }

    [Fact]
    public async Task A_terminal_runs_the_command_with_a_controlling_tty_and_can_be_resized()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Shell("tty; stty size; read line; stty size; echo got:$line");
        exec.Pty = new PtySize { Cols = 100, Rows = 30 };
        exec.Stdin = true;
        var stream = await client.ExecAsync(exec);
        Assert.NotNull((await stream.ResponseAsync()).Started);
        var seen = new StringBuilder();
        while (!seen.ToString().Contains("30 100"))
            seen.Append(Encoding.UTF8.GetString((await stream.NextAsync(TimeSpan.FromSeconds(10)))!.Payload));
        await client.SendMessageAsync(FrameType.Control, FrameFlags.None, stream.Id, new StreamControl { Resize = new PtySize { Cols = 120, Rows = 40 } });
        await client.SendStdinAsync(stream, "hello\r");
        var r = await stream.CollectAsync(TimeSpan.FromSeconds(10));
        string all = seen + r.Stdout;
        Assert.Matches(@"/dev/pts/\d+", all);
        Assert.Contains("40 120", all);
        Assert.Contains("got:hello", all);
        Assert.Equal("", r.Stderr);
        Assert.Equal(0, r.Exit!.ExitCode);
    }

    [Fact]
    public async Task Signal_request_and_process_list_see_running_commands()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = Exec("root", "sleep", "30");
        exec.Tag = "sleeper";
        var stream = await client.ExecAsync(exec);
        int pid = (await stream.ResponseAsync()).Started.Pid;
        var list = await client.RequestAsync(new Request { ProcessList = new ProcessListRequest() });
        var info = list.Final.Processes.Processes.Single(p => p.Pid == pid);
        Assert.True(info.Running);
        Assert.Equal("sleeper", info.Tag);
        Assert.Equal(["sleep", "30"], info.Argv);
        var signal = await client.RequestAsync(new Request { Signal = new SignalRequest { Pid = pid, Signal = 15 } });
        Assert.NotNull(signal.Final.Ok);
        var r = await stream.CollectAsync();
        Assert.Equal(15, r.Exit!.Signal);
        var bad = await client.RequestAsync(new Request { Signal = new SignalRequest { Pid = -1, Signal = 9 } });
        Assert.Equal("invalid_argument", bad.Error!.Code);
    }

    [Fact]
    public async Task Usage_reports_cpu_memory_disk_and_processes()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        await client.ShellAsync("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done");
        var sleeper = await client.ExecAsync(Exec("root", "sleep", "5"));
        await sleeper.ResponseAsync();
        var u = (await client.RequestAsync(new Request { Usage = new UsageRequest() })).Final.Usage;
        Assert.True(u.CpuUsec > 0);
        Assert.True(u.MemoryBytes > 0);
        Assert.True(u.DiskTotalBytes > 0 && u.DiskUsedBytes <= u.DiskTotalBytes);
        Assert.True(u.InodesTotal > 0);
        Assert.True(u.Processes >= 2); // the agent and the sleeper
        Assert.Equal(1u, u.TrackedProcesses);
        Assert.True(u.UptimeMs > 0);
    }

    [Fact]
    public async Task SIGTERM_to_the_agent_ends_its_commands_and_the_agent()
    {
        var agent = await AgentProcess.StartAsync();
        await using (agent)
        {
            var client = await agent.ConnectAsync();
            var stream = await client.ExecAsync(Shell("trap '' TERM; sleep 60 & echo $!; wait"));
            int pid = (await stream.ResponseAsync()).Started.Pid;
            var child = int.Parse(Encoding.UTF8.GetString((await stream.NextAsync())!.Payload).Trim());
            agent.Signal(15);
            Assert.True(await agent.WaitForExitAsync(TimeSpan.FromSeconds(6)), "the agent did not exit");
            await WaitGoneAsync([pid, child]);
            await client.DisposeAsync();
        }
    }

    [Fact]
    public async Task With_exit_on_stdin_eof_the_agent_follows_whoever_started_it()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        int pid = (await (await client.ExecAsync(Shell("sleep 60"))).ResponseAsync()).Started.Pid;
        agent.CloseStdin();
        Assert.True(await agent.WaitForExitAsync(TimeSpan.FromSeconds(6)), "the agent outlived its parent's pipe");
        await WaitGoneAsync([pid]);
    }

    internal static async Task WaitGoneAsync(IEnumerable<int> pids)
    {
        var list = pids.ToList();
        var sw = Stopwatch.StartNew();
        while (list.Any(Alive))
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"still alive: {string.Join(',', list.Where(Alive))}");
            await Task.Delay(20);
        }
    }

    private static bool Alive(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static List<int> ProcessesInSession(int sid)
    {
        var result = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid))
                continue;
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (int.Parse(f[2]) == sid || int.Parse(f[3]) == sid)
                    result.Add(pid);
            }
            catch (IOException)
            {
            }
        }
        return result;
    }
}
