using System.Buffers.Binary;
using System.IO.Pipes;
using System.Net.Sockets;
using Google.Protobuf;
using Microsoft.Extensions.Logging.Abstractions;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Tests;

/// <summary>
/// The host side of the agent protocol against a lying agent: frame validation, flow control,
/// stalls — and a deterministic randomized run that throws thousands of malformed and mutated
/// frames at the host's decoder. The "agent" here is a scripted peer on a socket pair: a fake
/// beside the real-agent tests, to reach byte sequences a real agent never sends.
/// </summary>
public sealed class ProtocolTests
{
    private static byte[] Frame(FrameType type, FrameFlags flags, uint stream, ReadOnlySpan<byte> payload)
    {
        var bytes = new byte[FrameHeader.Size + payload.Length];
        new FrameHeader(type, flags, stream, payload.Length).Write(bytes);
        payload.CopyTo(bytes.AsSpan(FrameHeader.Size));
        return bytes;
    }

    private static byte[] Frame(FrameType type, FrameFlags flags, uint stream, IMessage message) => Frame(type, flags, stream, message.ToByteArray());

    private static byte[] HelloAck() => Frame(FrameType.HelloAck, FrameFlags.None, 0, new HelloAck
    {
        ProtocolVersion = ProtocolConstants.Version,
        MaxFramePayload = ProtocolConstants.DefaultMaxFramePayload,
        StreamWindow = ProtocolConstants.DefaultStreamWindow,
        ConnectionWindow = ProtocolConstants.DefaultConnectionWindow,
    });

    /// <summary>A connected pair: the host's AgentClient on one end, the scripted agent's stream on the other.</summary>
    private static async Task<(AgentClient Client, NetworkStream Agent)> ConnectAsync(AgentClientOptions? options = null)
    {
        var pair = new[] { new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified), new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) };
        var path = Path.Combine(Path.GetTempPath(), $"moat-proto-{Guid.NewGuid():N}.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        var accept = listener.AcceptAsync();
        await pair[0].ConnectAsync(new UnixDomainSocketEndPoint(path));
        var agentSocket = await accept;
        File.Delete(path);
        pair[1].Dispose();
        var agent = new NetworkStream(agentSocket, ownsSocket: true);
        var hostStream = new NetworkStream(pair[0], ownsSocket: true);
        var clientTask = AgentClient.OverStreamAsync(hostStream, options ?? new AgentClientOptions { HandshakeTimeout = TimeSpan.FromSeconds(5) }, NullLogger.Instance, CancellationToken.None);
        // Read the host's Hello and answer.
        var reader = new FrameReader(agent);
        var hello = await reader.ReadAsync();
        Assert.Equal(FrameType.Hello, hello!.Value.Type);
        await agent.WriteAsync(HelloAck());
        return (await clientTask, agent);
    }

    [Fact]
    public void Headers_are_validated_before_any_allocation()
    {
        Span<byte> header = stackalloc byte[FrameHeader.Size];
        new FrameHeader(FrameType.Stdout, FrameFlags.Final, 7, 100).Write(header);
        var parsed = FrameHeader.Parse(header, 1024);
        Assert.Equal((FrameType.Stdout, 7u, 100, true), (parsed.Type, parsed.StreamId, parsed.PayloadLength, parsed.IsFinal));

        byte[] Bad(Action<byte[]> mutate)
        {
            var b = new byte[FrameHeader.Size];
            new FrameHeader(FrameType.Stdout, FrameFlags.None, 1, 10).Write(b);
            mutate(b);
            return b;
        }
        Assert.Equal("frame_too_large", Assert.Throws<ProtocolException>(() => FrameHeader.Parse(Bad(b => BinaryPrimitives.WriteUInt32LittleEndian(b, uint.MaxValue)), 1024)).Code);
        Assert.Equal("bad_length", Assert.Throws<ProtocolException>(() => FrameHeader.Parse(Bad(b => BinaryPrimitives.WriteUInt32LittleEndian(b, 3)), 1024)).Code);
        Assert.Equal("bad_flags", Assert.Throws<ProtocolException>(() => FrameHeader.Parse(Bad(b => b[5] = 0x40), 1024)).Code);
        Assert.Equal("bad_reserved", Assert.Throws<ProtocolException>(() => FrameHeader.Parse(Bad(b => b[6] = 1), 1024)).Code);
        Assert.Equal("unknown_frame", Assert.Throws<ProtocolException>(() => FrameHeader.Parse(Bad(b => b[4] = 0x77), 1024)).Code);
        // An unknown but ignorable frame is accepted (for newer peers).
        Assert.Equal((FrameType)0x77, FrameHeader.Parse(Bad(b => { b[4] = 0x77; b[5] = 0x80; }), 1024).Type);
        Assert.Equal("truncated_header", Assert.Throws<ProtocolException>(() => FrameHeader.Parse(new byte[5], 1024)).Code);
    }

    [Fact]
    public async Task Credit_windows_refuse_overruns_and_wake_waiters()
    {
        var window = new CreditWindow(100);
        Assert.True(window.Consume(60));
        Assert.False(window.Consume(41));
        Assert.True(window.Consume(40));
        var take = window.TakeAsync(10, CancellationToken.None).AsTask();
        Assert.False(take.IsCompleted);
        window.Grant(5);
        Assert.Equal(5, await take);
        // Credit piled up past any sane window is a lie, not a bigger window.
        Assert.Throws<ProtocolException>(() =>
        {
            for (int i = 0; i < 3; i++)
                window.Grant(ProtocolConstants.MaxWindow);
        });
        var closed = new CreditWindow(0);
        var waiting = closed.TakeAsync(1, CancellationToken.None).AsTask();
        closed.Close();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
    }

    [Fact]
    public async Task A_frame_that_starts_and_stalls_fails_the_read()
    {
        using var pipe = new AnonymousPipeServerStream(PipeDirection.Out);
        using var client = new AnonymousPipeClientStream(PipeDirection.In, pipe.ClientSafePipeHandle);
        var header = new byte[FrameHeader.Size];
        new FrameHeader(FrameType.Stdout, FrameFlags.None, 1, 1000).Write(header);
        await pipe.WriteAsync(header);
        await pipe.WriteAsync(new byte[10]);
        var reader = new FrameReader(client) { PayloadTimeout = TimeSpan.FromMilliseconds(300) };
        var ex = await Assert.ThrowsAsync<ProtocolException>(async () => await reader.ReadAsync());
        Assert.Equal("frame_stalled", ex.Code);
    }

    [Fact]
    public async Task An_agent_that_overruns_its_window_fails_only_its_connection()
    {
        var (client, agent) = await ConnectAsync();
        await using var _ = client;
        var exec = client.ExecAsync(new ExecRequest { Argv = { "true" } });
        // Reply "started", then pour data without waiting for credit.
        var reader = new FrameReader(agent);
        var request = await reader.ReadAsync();
        uint stream = request!.Value.StreamId;
        await agent.WriteAsync(Frame(FrameType.Response, FrameFlags.None, stream, new Response { Started = new ExecStarted { Pid = 9 } }));
        var process = await exec;
        var chunk = new byte[ProtocolConstants.DataChunk];
        try
        {
            for (int i = 0; i < ProtocolConstants.DefaultStreamWindow / chunk.Length + 2; i++)
                await agent.WriteAsync(Frame(FrameType.Stdout, FrameFlags.None, stream, chunk));
        }
        catch (IOException)
        {
            // The host hung up on us: exactly the point.
        }
        var reason = await client.Completion.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Contains("window", reason!.Message);
        await Assert.ThrowsAnyAsync<MoatException>(async () => await process.WaitAsync());
    }

    [Fact]
    public async Task Data_for_a_stream_the_host_never_opened_is_a_violation()
    {
        var (client, agent) = await ConnectAsync();
        await using var _ = client;
        await agent.WriteAsync(Frame(FrameType.Stdout, FrameFlags.None, 4242, new byte[10]));
        var reason = await client.Completion.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Contains("never opened", reason!.Message);
    }

    [Fact]
    public async Task A_silent_agent_is_declared_dead()
    {
        var (client, agent) = await ConnectAsync(new AgentClientOptions { HandshakeTimeout = TimeSpan.FromSeconds(5), PingInterval = TimeSpan.FromMilliseconds(200), DeadAfter = TimeSpan.FromSeconds(1) });
        await using var _ = client;
        await using var __ = agent;
        var reason = await client.Completion.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Contains("not answered", reason!.Message);
    }

    [Fact]
    public async Task A_deterministic_storm_of_hostile_frames_never_crashes_or_hangs_the_host()
    {
        var random = new Random(20261202);
        int violations = 0;
        for (int round = 0; round < 300; round++)
        {
            var (client, agent) = await ConnectAsync();
            await using var _ = client;
            // Open a few real streams so that some garbage lands on live ones.
            var pending = new List<Task>
            {
                client.ExecAsync(new ExecRequest { Argv = { "x" } }),
                client.StatAsync("/", null),
                client.UsageAsync(),
            };
            try
            {
                for (int f = 0; f < 20; f++)
                    await agent.WriteAsync(Mutant(random));
            }
            catch (IOException)
            {
                // The host closed the connection mid-storm: it noticed.
            }
            // Either the connection failed with a reason, or every frame was acceptable; in no case may
            // the host hang: requests still pending are failed by closing the connection.
            var done = await Task.WhenAny(client.Completion, Task.Delay(200));
            if (done == client.Completion)
                violations++;
            await client.DisposeAsync();
            foreach (var task in pending)
                await Assert.ThrowsAnyAsync<Exception>(() => task.WaitAsync(TimeSpan.FromSeconds(5)));
            await agent.DisposeAsync();
        }
        // Most mutants are violations; the run is deterministic, so this number is stable.
        Assert.InRange(violations, 200, 300);
    }

    /// <summary>A random frame: mostly well-formed headers around garbage, sometimes garbage headers, sometimes valid messages on wrong streams.</summary>
    private static byte[] Mutant(Random random)
    {
        var type = (FrameType)new byte[] { 0x01, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x23, 0x24, 0x99 }[random.Next(15)];
        uint stream = (uint)random.Next(0, 6);
        switch (random.Next(6))
        {
            case 0: // raw noise
                var noise = new byte[random.Next(1, 64)];
                random.NextBytes(noise);
                return noise;
            case 1: // a header that lies about its length
                var lie = new byte[FrameHeader.Size];
                new FrameHeader(type, FrameFlags.None, stream, 0).Write(lie);
                BinaryPrimitives.WriteUInt32LittleEndian(lie, (uint)random.Next(int.MaxValue));
                return lie;
            case 2: // a valid message of the wrong kind
                return Frame(type, random.Next(2) == 0 ? FrameFlags.Final : FrameFlags.None, stream, new Response { Error = new ErrorReply { Code = new string('x', random.Next(0, 5000)), Message = "\u001b[31mred\u0007" } });
            case 3: // window frames with absurd increments
                var window = new byte[4];
                BinaryPrimitives.WriteInt32LittleEndian(window, random.Next(int.MinValue, int.MaxValue));
                return Frame(FrameType.Window, FrameFlags.None, stream, window);
            case 4: // a mutated valid response
                var valid = new Response { Exit = new ExitStatus { ExitCode = random.Next(), Signal = random.Next(100) } }.ToByteArray();
                for (int i = 0; i < valid.Length; i++)
                    if (random.Next(4) == 0)
                        valid[i] ^= (byte)random.Next(256);
                return Frame(FrameType.Response, FrameFlags.Final, stream, valid);
            default: // random payload under a random well-formed header
                var payload = new byte[random.Next(0, 2000)];
                random.NextBytes(payload);
                return Frame(type, (FrameFlags)(random.Next(2) == 0 ? 0 : 1), stream, payload);
        }
    }
}
