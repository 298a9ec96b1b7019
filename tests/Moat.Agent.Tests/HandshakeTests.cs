using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests;

public sealed class HandshakeTests
{
    [Fact]
    public async Task Hello_is_answered_with_the_agents_limits()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var ack = client.Ack!;
        Assert.Equal(ProtocolConstants.Version, ack.ProtocolVersion);
        Assert.Equal("unix", ack.Transport);
        Assert.True(ack.MaxFramePayload >= 64 * 1024);
        Assert.True(ack.StreamWindow > 0 && ack.ConnectionWindow >= ack.StreamWindow);
        Assert.False(string.IsNullOrEmpty(ack.KernelRelease));
        Assert.InRange(ack.StartedUnixMs, DateTimeOffset.UtcNow.AddMinutes(-5).ToUnixTimeMilliseconds(), DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() + 1000);
    }

    [Fact]
    public async Task Another_protocol_version_is_refused_with_GoAway_version()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await AgentClient.ConnectAsync(agent.SocketPath, handshake: false);
        var ack = await client.HelloAsync(new Hello { ProtocolVersion = ProtocolConstants.Version + 1 });
        Assert.Null(ack);
        Assert.Equal("version", client.GoAway!.Code);
        await client.Closed.WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task A_request_before_Hello_is_a_protocol_error()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await AgentClient.ConnectAsync(agent.SocketPath, handshake: false);
        await client.SendMessageAsync(FrameType.Request, FrameFlags.None, 1, new Request { Usage = new UsageRequest() });
        var frame = await client.NextConnectionFrameAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(FrameType.GoAway, frame.Type);
        await client.Closed.WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Ping_is_echoed()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        byte[] payload = [1, 2, 3, 4, 5, 6, 7, 8];
        await client.SendFrameAsync(FrameType.Ping, FrameFlags.None, 0, payload);
        var pong = await client.NextConnectionFrameAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(FrameType.Pong, pong.Type);
        Assert.Equal(payload, pong.Payload);
    }

    [Fact]
    public async Task A_new_connection_replaces_the_old_one()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var first = await agent.ConnectAsync();
        await using var second = await agent.ConnectAsync();
        await first.Closed.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal("replaced", first.GoAway?.Code);
        var r = await second.ShellAsync("echo still-here");
        Assert.Equal("still-here\n", r.Stdout);
    }
}
