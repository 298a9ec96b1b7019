using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests;

public sealed class FlowControlTests
{
    [Fact]
    public async Task A_fast_producer_with_a_slow_reader_never_exceeds_the_credit_granted()
    {
        await using var agent = await AgentProcess.StartAsync();
        const int streamWindow = 128 * 1024, connectionWindow = 512 * 1024;
        await using var client = await AgentClient.ConnectAsync(agent.SocketPath, autoGrant: false, streamWindow: streamWindow, connectionWindow: connectionWindow);
        const long total = 50L << 20;
        var exec = new ExecRequest { User = "root" };
        exec.Argv.AddRange(["head", "-c", total.ToString(), "/dev/zero"]);
        var stream = await client.ExecAsync(exec);
        Assert.NotNull((await stream.ResponseAsync()).Started);

        long received = 0;
        long outstanding = 0; // bytes received since the last grant: must never exceed the window
        int slowRounds = 0;
        ExitStatus? exit = null;
        while (exit is null)
        {
            var f = await stream.NextAsync(TimeSpan.FromSeconds(30)) ?? throw new InvalidOperationException("stream ended");
            if (f.Type == FrameType.Stdout)
            {
                received += f.Payload.Length;
                outstanding += f.Payload.Length;
                Assert.True(outstanding <= streamWindow, $"{outstanding} bytes outstanding with a {streamWindow}-byte window");
                if (outstanding >= streamWindow / 2)
                {
                    // Read slowly for a while: the producer must simply wait.
                    if (slowRounds++ < 10)
                        await Task.Delay(30);
                    await client.GrantAsync(stream.Id, (int)outstanding);
                    await client.GrantAsync(0, (int)outstanding);
                    outstanding = 0;
                }
            }
            else if (f.Type == FrameType.Response)
            {
                exit = f.AsResponse().Exit;
            }
        }
        Assert.Equal(total, received);
        Assert.Equal(0, exit.ExitCode);
        Assert.Null(client.Violation);
    }

    [Fact]
    public async Task Without_credit_the_producer_blocks_after_exactly_one_window()
    {
        await using var agent = await AgentProcess.StartAsync();
        const int streamWindow = 64 * 1024;
        await using var client = await AgentClient.ConnectAsync(agent.SocketPath, autoGrant: false, streamWindow: streamWindow);
        var exec = new ExecRequest { User = "root" };
        exec.Argv.AddRange(["/bin/sh", "-c", "head -c 10000000 /dev/zero; echo finished >&2"]);
        var stream = await client.ExecAsync(exec);
        Assert.NotNull((await stream.ResponseAsync()).Started);
        long received = 0;
        while (received < streamWindow)
        {
            var f = await stream.NextAsync(TimeSpan.FromSeconds(10));
            received += f!.Payload.Length;
        }
        Assert.Equal(streamWindow, received);
        // Nothing more arrives while no credit is granted, and the command has not finished.
        var more = stream.NextAsync(TimeSpan.FromMilliseconds(700));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => more);
        var list = await client.RequestAsync(new Request { ProcessList = new ProcessListRequest() });
        Assert.True(list.Final.Processes.Processes.Single().Running);
        // Granting lets it finish.
        client.AutoGrant = true;
        await client.GrantAsync(stream.Id, 16 << 20);
        await client.GrantAsync(0, 16 << 20);
        var r = await stream.CollectAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(10_000_000 - streamWindow, r.StdoutBytes.Length);
        Assert.Equal("finished\n", r.Stderr);
        Assert.Null(client.Violation);
    }

    [Fact]
    public async Task The_connection_window_is_shared_by_all_streams()
    {
        await using var agent = await AgentProcess.StartAsync();
        const int connectionWindow = 96 * 1024;
        await using var client = await AgentClient.ConnectAsync(agent.SocketPath, autoGrant: false, streamWindow: 64 * 1024, connectionWindow: connectionWindow);
        var streams = new List<TestStream>();
        for (int i = 0; i < 3; i++)
        {
            var exec = new ExecRequest { User = "root" };
            exec.Argv.AddRange(["head", "-c", "1000000", "/dev/zero"]);
            streams.Add(await client.ExecAsync(exec));
        }
        await Task.Delay(800);
        long total = 0;
        foreach (var s in streams)
        {
            while (s.Frames.Reader.TryRead(out var f))
                total += f.Type == FrameType.Stdout ? f.Payload.Length : 0;
        }
        Assert.Equal(connectionWindow, total);
        Assert.Null(client.Violation);
    }

    [Fact]
    public async Task A_host_that_overruns_the_agents_window_is_cut_off()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = new ExecRequest { User = "root", Stdin = true };
        exec.Argv.AddRange(["sleep", "30"]); // never reads: the agent's window is all the host may send
        exec.KeepOutput = true;
        var stream = await client.ExecAsync(exec);
        int pid = (await stream.ResponseAsync()).Started.Pid;
        var chunk = new byte[ProtocolConstants.DataChunk];
        int frames = (int)(client.Ack!.StreamWindow / chunk.Length) + 2;
        for (int i = 0; i < frames && client.GoAway is null; i++)
        {
            try
            {
                await client.SendFrameAsync(FrameType.Stdin, FrameFlags.None, stream.Id, chunk);
            }
            catch (IOException)
            {
                break;
            }
        }
        await client.Closed.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal("flow_control", client.GoAway?.Code);
        // The command is unaffected and the agent serves the next connection.
        await using var again = await agent.ConnectAsync();
        var list = await again.RequestAsync(new Request { ProcessList = new ProcessListRequest() });
        Assert.Contains(list.Final.Processes.Processes, p => p.Pid == pid && p.Running);
    }

    [Fact]
    public async Task The_host_may_not_send_oversized_data_frames()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = new ExecRequest { User = "root", Stdin = true };
        exec.Argv.Add("cat");
        var stream = await client.ExecAsync(exec);
        await stream.ResponseAsync();
        await client.SendFrameAsync(FrameType.Stdin, FrameFlags.None, stream.Id, new byte[ProtocolConstants.DataChunk + 1]);
        await client.Closed.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal("frame_too_large", client.GoAway?.Code);
    }
}
