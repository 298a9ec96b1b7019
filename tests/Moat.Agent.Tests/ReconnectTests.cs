using System.Text;
using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests;

public sealed class ReconnectTests
{
    private static ExecRequest Kept(string script, string tag = "")
    {
        var e = new ExecRequest { User = "root", KeepOutput = true, Tag = tag };
        e.Argv.AddRange(["/bin/sh", "-c", script]);
        return e;
    }

    [Fact]
    public async Task A_process_outlives_its_connection_and_is_reattached_by_pid_with_its_output()
    {
        await using var agent = await AgentProcess.StartAsync();
        int pid;
        await using (var first = await agent.ConnectAsync())
        {
            var stream = await first.ExecAsync(Kept("echo early; sleep 2; echo done"));
            pid = (await stream.ResponseAsync()).Started.Pid;
            var early = await stream.NextAsync();
            Assert.Equal("early\n", Encoding.UTF8.GetString(early!.Payload));
        }
        await using var second = await agent.ConnectAsync();
        Assert.Equal(1u, second.Ack!.TrackedProcesses);
        var attached = await second.StartAsync(new Request { Attach = new AttachRequest { Pid = pid, Replay = true } });
        var r = await attached.CollectAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(pid, r.Started!.Pid);
        Assert.Equal("done\n", r.Stdout);
        Assert.Equal(0, r.Exit!.ExitCode);
        Assert.Equal(1, r.StdoutFinals);
    }

    [Fact]
    public async Task Output_produced_while_detached_is_replayed_in_order_then_live()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using (var first = await agent.ConnectAsync())
        {
            var stream = await first.ExecAsync(Kept("sleep 0.5; for i in 1 2 3; do echo out$i; echo err$i >&2; done; sleep 1; echo live", "job-1"));
            await stream.ResponseAsync();
            await first.CancelAsync(stream); // detach without dropping the connection
            await Task.Delay(800);
            var attached = await first.StartAsync(new Request { Attach = new AttachRequest { Tag = "job-1", Replay = true } });
            var r = await attached.CollectAsync(TimeSpan.FromSeconds(10));
            Assert.Equal("out1\nout2\nout3\nlive\n", r.Stdout);
            Assert.Equal("err1\nerr2\nerr3\n", r.Stderr);
            Assert.False(r.Started!.OutputTruncated);
            var order = r.Frames.Where(f => f.Payload.Length > 0 && f.Type != FrameType.Response).Select(f => f.Type).ToList();
            Assert.Equal(FrameType.Stdout, order[0]);
        }
    }

    [Fact]
    public async Task An_exited_process_is_still_retained_for_a_late_attach()
    {
        await using var agent = await AgentProcess.StartAsync();
        int pid;
        await using (var first = await agent.ConnectAsync())
        {
            var stream = await first.ExecAsync(Kept("sleep 0.3; echo finished; exit 7"));
            pid = (await stream.ResponseAsync()).Started.Pid;
        }
        await Task.Delay(1000);
        await using var second = await agent.ConnectAsync();
        var r = await (await second.StartAsync(new Request { Attach = new AttachRequest { Pid = pid, Replay = true } })).CollectAsync();
        Assert.Equal("finished\n", r.Stdout);
        Assert.Equal(7, r.Exit!.ExitCode);
    }

    [Fact]
    public async Task Retained_output_is_bounded_and_marked_truncated()
    {
        await using var agent = await AgentProcess.StartAsync();
        int pid;
        await using (var first = await agent.ConnectAsync())
        {
            var stream = await first.ExecAsync(Kept("head -c 3000000 /dev/zero | tr '\\0' a; echo; echo tail"));
            pid = (await stream.ResponseAsync()).Started.Pid;
        }
        await Task.Delay(1500);
        await using var second = await agent.ConnectAsync();
        var r = await (await second.StartAsync(new Request { Attach = new AttachRequest { Pid = pid, Replay = true } })).CollectAsync();
        Assert.True(r.Started!.OutputTruncated);
        Assert.True(r.Exit!.OutputTruncated);
        Assert.InRange(r.StdoutBytes.Length, 100_000, 1 << 20);
        Assert.EndsWith("tail\n", r.Stdout);
    }

    [Fact]
    public async Task A_second_attach_detaches_the_first_stream()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var stream = await client.ExecAsync(Kept("sleep 2; echo bye", "twice"));
        int pid = (await stream.ResponseAsync()).Started.Pid;
        var other = await client.StartAsync(new Request { Attach = new AttachRequest { Pid = pid } });
        var old = await stream.CollectAsync(TimeSpan.FromSeconds(5));
        Assert.Equal("detached", old.Error!.Code);
        var r = await other.CollectAsync(TimeSpan.FromSeconds(10));
        Assert.Equal("bye\n", r.Stdout);
        Assert.Equal(0, r.Exit!.ExitCode);
    }

    [Fact]
    public async Task Attach_to_an_unknown_process_answers_not_found()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        Assert.Equal("not_found", (await client.RequestAsync(new Request { Attach = new AttachRequest { Pid = 999_999 } })).Error!.Code);
        Assert.Equal("not_found", (await client.RequestAsync(new Request { Attach = new AttachRequest { Tag = "nope" } })).Error!.Code);
        Assert.Equal("invalid_argument", (await client.RequestAsync(new Request { Attach = new AttachRequest() })).Error!.Code);
    }

    [Fact]
    public async Task Attached_with_stdin_the_new_stream_can_feed_the_process()
    {
        await using var agent = await AgentProcess.StartAsync();
        int pid;
        await using (var first = await agent.ConnectAsync())
        {
            var exec = Kept("read a; echo got:$a");
            exec.Stdin = true;
            var stream = await first.ExecAsync(exec);
            pid = (await stream.ResponseAsync()).Started.Pid;
        }
        await using var second = await agent.ConnectAsync();
        var attached = await second.StartAsync(new Request { Attach = new AttachRequest { Pid = pid, Stdin = true, Replay = true } });
        await second.SendStdinAsync(attached, "xyz\n", final: true);
        var r = await attached.CollectAsync(TimeSpan.FromSeconds(10));
        Assert.Equal("got:xyz\n", r.Stdout);
    }

    [Fact]
    public async Task A_process_without_keep_output_keeps_running_detached_and_its_output_is_dropped()
    {
        await using var agent = await AgentProcess.StartAsync();
        int pid;
        await using (var first = await agent.ConnectAsync())
        {
            var exec = new ExecRequest { User = "root" };
            exec.Argv.AddRange(["/bin/sh", "-c", "head -c 5000000 /dev/zero; sleep 2; echo end"]);
            var stream = await first.ExecAsync(exec);
            pid = (await stream.ResponseAsync()).Started.Pid;
        }
        await Task.Delay(1000); // the 5 MB are produced (and dropped) meanwhile
        await using var second = await agent.ConnectAsync();
        var attached = await second.StartAsync(new Request { Attach = new AttachRequest { Pid = pid } });
        var r = await attached.CollectAsync(TimeSpan.FromSeconds(10));
        Assert.Equal("end\n", r.Stdout);
        Assert.Equal(0, r.Exit!.ExitCode);
    }
}
