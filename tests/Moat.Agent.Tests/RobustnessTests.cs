using System.Buffers.Binary;
using Google.Protobuf;
using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests;

/// <summary>A hostile or broken host must cost only its own connection: the agent keeps serving.</summary>
public sealed class RobustnessTests
{
    private static byte[] Header(uint length, byte type, byte flags, ushort reserved, uint stream)
    {
        var b = new byte[12];
        BinaryPrimitives.WriteUInt32LittleEndian(b, length);
        b[4] = type;
        b[5] = flags;
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(6), reserved);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), stream);
        return b;
    }

    private static async Task AssertStillServesAsync(AgentProcess agent)
    {
        await using var client = await agent.ConnectAsync();
        var r = await client.ShellAsync("echo alive");
        Assert.Equal("alive\n", r.Stdout);
        Assert.False(agent.HasExited);
    }

    public static TheoryData<string, byte[]> MalformedFrames => new()
    {
        { "bad_reserved", Header(8, (byte)FrameType.Ping, 0, 1, 0) },
        { "bad_flags", Header(8, (byte)FrameType.Ping, 0x02, 0, 0) },
        { "bad_length", Header(3, (byte)FrameType.Ping, 0, 0, 0) },
        { "frame_too_large", Header(64 << 20, (byte)FrameType.Stdin, 0, 0, 1) },
        { "unknown_frame", Header(8, 0x7e, 0, 0, 0) },
    };

    [Theory]
    [MemberData(nameof(MalformedFrames))]
    public async Task A_malformed_frame_gets_GoAway_and_the_agent_serves_a_new_connection(string code, byte[] bytes)
    {
        await using var agent = await AgentProcess.StartAsync();
        await using (var client = await agent.ConnectAsync())
        {
            await client.WriteRawAsync(bytes);
            await client.Closed.WaitAsync(TimeSpan.FromSeconds(5));
            Assert.Equal(code, client.GoAway?.Code);
        }
        await AssertStillServesAsync(agent);
    }

    [Fact]
    public async Task An_unknown_frame_marked_ignorable_is_ignored()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        await client.WriteRawAsync([.. Header(8 + 3, 0x7e, (byte)FrameFlags.Ignorable, 0, 0), 1, 2, 3]);
        Assert.Equal("ok\n", (await client.ShellAsync("echo ok")).Stdout);
    }

    [Fact]
    public async Task Protocol_violations_end_only_that_connection_and_processes_live_on()
    {
        await using var agent = await AgentProcess.StartAsync();
        int pid;
        await using (var client = await agent.ConnectAsync())
        {
            var exec = new ExecRequest { User = "root", KeepOutput = true };
            exec.Argv.AddRange(["/bin/sh", "-c", "sleep 1; echo survived"]);
            var s = await client.ExecAsync(exec);
            pid = (await s.ResponseAsync()).Started.Pid;
            // Reusing an open stream id.
            await client.SendMessageAsync(FrameType.Request, FrameFlags.None, s.Id, new Request { Usage = new UsageRequest() });
            await client.Closed.WaitAsync(TimeSpan.FromSeconds(5));
            Assert.Equal("stream_in_use", client.GoAway?.Code);
        }
        await using var again = await agent.ConnectAsync();
        var r = await (await again.StartAsync(new Request { Attach = new AttachRequest { Pid = pid, Replay = true } })).CollectAsync(TimeSpan.FromSeconds(10));
        Assert.Equal("survived\n", r.Stdout);
    }

    [Theory]
    [InlineData("hello_twice")]
    [InlineData("response_from_host")]
    [InlineData("request_on_stream_zero")]
    [InlineData("garbage_request")]
    [InlineData("bad_window")]
    [InlineData("ping_wrong_size")]
    public async Task Each_kind_of_violation_is_answered_with_GoAway(string kind)
    {
        await using var agent = await AgentProcess.StartAsync();
        await using (var client = await agent.ConnectAsync())
        {
            switch (kind)
            {
                case "hello_twice":
                    await client.SendMessageAsync(FrameType.Hello, FrameFlags.None, 0, new Hello { ProtocolVersion = 1 });
                    break;
                case "response_from_host":
                    await client.SendMessageAsync(FrameType.Response, FrameFlags.Final, 5, new Response { Ok = new Ok() });
                    break;
                case "request_on_stream_zero":
                    await client.SendMessageAsync(FrameType.Request, FrameFlags.None, 0, new Request { Usage = new UsageRequest() });
                    break;
                case "garbage_request":
                    await client.SendFrameAsync(FrameType.Request, FrameFlags.None, 3, new byte[] { 0xff, 0xff, 0xff, 0xff, 0x0f });
                    break;
                case "bad_window":
                    await client.SendFrameAsync(FrameType.Window, FrameFlags.None, 0, new byte[] { 0, 0, 0, 0 });
                    break;
                case "ping_wrong_size":
                    await client.SendFrameAsync(FrameType.Ping, FrameFlags.None, 0, new byte[] { 1, 2, 3 });
                    break;
            }
            await client.Closed.WaitAsync(TimeSpan.FromSeconds(5));
            Assert.NotNull(client.GoAway);
        }
        await AssertStillServesAsync(agent);
    }

    [Fact]
    public async Task A_request_naming_no_known_operation_is_refused_but_the_connection_lives()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        // An empty Request parses; so does one with only a field number from the future.
        var stream = await client.StartAsync(new Request());
        Assert.Equal("unsupported", (await stream.CollectAsync()).Error!.Code);
        var future = Request.Parser.ParseFrom([0xC2, 0x3E, 0x00]); // field 1000 (length-delimited, empty)
        Assert.Equal(Request.KindOneofCase.None, future.KindCase);
        Assert.Equal("unsupported", (await client.RequestAsync(future)).Error!.Code);
        Assert.Equal("alive\n", (await client.ShellAsync("echo alive")).Stdout);
        Assert.Null(client.GoAway);
    }

    [Fact]
    public async Task Bad_requests_are_answered_with_errors_not_crashes()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var empty = await client.RequestAsync(new Request { Exec = new ExecRequest() });
        Assert.Equal("invalid_argument", empty.Error!.Code);
        var nul = new ExecRequest();
        nul.Argv.Add("ec\0ho");
        Assert.Equal("invalid_argument", (await client.RequestAsync(new Request { Exec = nul })).Error!.Code);
        Assert.Equal("invalid_argument", (await client.RequestAsync(new Request { Stat = new StatRequest { Path = "" } })).Error!.Code);
        Assert.Equal("invalid_argument", (await client.RequestAsync(new Request { Stat = new StatRequest { Path = new string('a', 5000) } })).Error!.Code);
        Assert.Equal("no_such_user", (await client.RequestAsync(new Request { Stat = new StatRequest { Path = "/", User = "ghost" } })).Error!.Code);
        Assert.Equal("alive\n", (await client.ShellAsync("echo alive")).Stdout);
    }

    [Fact]
    public async Task More_than_the_stream_limit_is_answered_busy()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var streams = new List<TestStream>();
        for (int i = 0; i < 1030; i++)
        {
            var exec = new ExecRequest { User = "root" };
            exec.Argv.AddRange(["sleep", "20"]);
            streams.Add(await client.ExecAsync(exec));
        }
        var busy = new List<string>();
        foreach (var s in streams.Skip(1000))
        {
            var r = await s.ResponseAsync(TimeSpan.FromSeconds(30));
            if (r.Error is not null)
                busy.Add(r.Error.Code);
        }
        Assert.Equal(6, busy.Count);
        Assert.All(busy, c => Assert.Equal("busy", c));
        foreach (var s in streams.Take(10))
            await client.SendMessageAsync(FrameType.Control, FrameFlags.None, s.Id, new StreamControl { Signal = 9 });
    }

    [Fact]
    public async Task Thousands_of_random_and_mutated_frames_do_not_break_the_agent()
    {
        await using var agent = await AgentProcess.StartAsync();
        var random = new Random(20261202);
        var valid = ValidFrames(agent.Dir);
        int connections = 0, goAways = 0;
        for (int round = 0; round < 60; round++)
        {
            await using var client = await AgentClient.ConnectAsync(agent.SocketPath, handshake: round % 5 != 0);
            connections++;
            for (int i = 0; i < 60; i++)
            {
                byte[] frame = random.Next(4) switch
                {
                    0 => RandomBytes(random, random.Next(1, 64)),
                    1 => Mutate(random, valid[random.Next(valid.Count)]),
                    2 => Mutate(random, Mutate(random, valid[random.Next(valid.Count)])),
                    _ => valid[random.Next(valid.Count)],
                };
                try
                {
                    await client.WriteRawAsync(frame);
                }
                catch (IOException)
                {
                    break;
                }
                if (client.Closed.IsCompleted)
                    break;
            }
            await Task.WhenAny(client.Closed, Task.Delay(50));
            if (client.GoAway is not null)
                goAways++;
        }
        Assert.True(goAways > 0);
        Assert.False(agent.HasExited, agent.Stderr);
        await AssertStillServesAsync(agent);
        var usage = await (await agent.ConnectAsync()).RequestAsync(new Request { Usage = new UsageRequest() });
        Assert.NotNull(usage.Final.Usage);
    }

    private static List<byte[]> ValidFrames(string dir)
    {
        static byte[] Encode(FrameType type, FrameFlags flags, uint stream, IMessage? message, byte[]? raw = null)
        {
            byte[] payload = message?.ToByteArray() ?? raw ?? [];
            var b = new byte[12 + payload.Length];
            new FrameHeader(type, flags, stream, payload.Length).Write(b);
            payload.CopyTo(b, 12);
            return b;
        }
        var echo = new ExecRequest { User = "root", TimeoutMs = 2000 };
        echo.Argv.AddRange(["/bin/echo", "fuzz"]);
        var sleeper = new ExecRequest { User = "root", TimeoutMs = 500, Stdin = true };
        sleeper.Argv.AddRange(["sleep", "1"]);
        return
        [
            Encode(FrameType.Hello, FrameFlags.None, 0, new Hello { ProtocolVersion = 1, MaxFramePayload = 1 << 20, StreamWindow = 65536, ConnectionWindow = 1 << 20 }),
            Encode(FrameType.Ping, FrameFlags.None, 0, null, [1, 2, 3, 4, 5, 6, 7, 8]),
            Encode(FrameType.Request, FrameFlags.None, 7, new Request { Exec = echo }),
            Encode(FrameType.Request, FrameFlags.None, 8, new Request { Exec = sleeper }),
            Encode(FrameType.Stdin, FrameFlags.None, 8, null, [1, 2, 3]),
            Encode(FrameType.Stdin, FrameFlags.Final, 8, null, []),
            Encode(FrameType.Control, FrameFlags.None, 8, new StreamControl { Signal = 15 }),
            Encode(FrameType.Control, FrameFlags.None, 8, new StreamControl { Resize = new PtySize { Cols = 10, Rows = 10 } }),
            Encode(FrameType.Window, FrameFlags.None, 0, null, [0, 0, 1, 0]),
            Encode(FrameType.Window, FrameFlags.None, 7, null, [0, 0, 1, 0]),
            Encode(FrameType.Request, FrameFlags.None, 9, new Request { Stat = new StatRequest { Path = "/tmp" } }),
            Encode(FrameType.Request, FrameFlags.None, 10, new Request { ListDir = new ListDirRequest { Path = "/proc/self", Depth = 2, MaxEntries = 50 } }),
            Encode(FrameType.Request, FrameFlags.None, 11, new Request { FileRead = new FileReadRequest { Path = "/etc/hostname" } }),
            Encode(FrameType.Request, FrameFlags.None, 12, new Request { Usage = new UsageRequest() }),
            Encode(FrameType.Request, FrameFlags.None, 13, new Request { Attach = new AttachRequest { Pid = 1, Replay = true } }),
            Encode(FrameType.Request, FrameFlags.None, 14, new Request { ProcessList = new ProcessListRequest() }),
            Encode(FrameType.Request, FrameFlags.None, 15, new Request { FileWrite = new FileWriteRequest { Path = Path.Combine(dir, "fuzz.txt") } }),
            Encode(FrameType.FileData, FrameFlags.Final, 15, null, [65, 66, 67]),
            Encode(FrameType.Cancel, FrameFlags.None, 8, null),
            Encode(FrameType.GoAway, FrameFlags.None, 0, new GoAway { Code = "bye" }),
        ];
    }

    private static byte[] RandomBytes(Random random, int n)
    {
        var b = new byte[n];
        random.NextBytes(b);
        return b;
    }

    private static byte[] Mutate(Random random, byte[] frame)
    {
        var b = (byte[])frame.Clone();
        if (b.Length < FrameHeader.Size)
            return b;
        switch (random.Next(5))
        {
            case 0: // flip bits
                for (int i = 0; i < 1 + random.Next(4); i++)
                    b[random.Next(b.Length)] ^= (byte)(1 << random.Next(8));
                return b;
            case 1: // truncate (the rest of the frame arrives as the next frame's start)
                return b[..random.Next(1, b.Length)];
            case 2: // lie about the length
                BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)random.Next(8, 2 * b.Length + 16));
                return b;
            case 3: // another stream id
                BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), (uint)random.Next(0, 20));
                return b;
            default: // random type
                b[4] = (byte)random.Next(256);
                return b;
        }
    }
}
