using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;
using Google.Protobuf;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests.Infrastructure;

/// <summary>A frame as received, with its payload copied.</summary>
public sealed record RecvFrame(FrameType Type, FrameFlags Flags, uint StreamId, byte[] Payload)
{
    public bool IsFinal => (Flags & FrameFlags.Final) != 0;

    public Response AsResponse() => FrameDecoding.Response(Payload);
}

/// <summary>
/// A deliberately raw host for tests: Moat.Protocol's FrameReader/FrameWriter over a Unix socket,
/// with the host's side of flow control written out so a test can check that the agent never
/// overruns a window (<see cref="Violation"/>) and can read slowly on purpose.
/// </summary>
public sealed class AgentClient : IAsyncDisposable
{
    private readonly Socket? _socket;
    private readonly Stream _net;
    private readonly FrameReader _reader;
    private readonly FrameWriter _writer;
    private readonly ConcurrentDictionary<uint, TestStream> _streams = new();
    private readonly ConcurrentDictionary<uint, bool> _cancelled = new();
    private readonly Channel<RecvFrame> _connection = Channel.CreateUnbounded<RecvFrame>();
    private readonly object _gate = new();
    private CreditWindow _sendConnection = new(0);
    private long _recvConnection;
    private int _nextId;
    private Task _loop = Task.CompletedTask;
    private volatile string? _violation;

    private AgentClient(Socket? socket, Stream stream, bool autoGrant, int streamWindow, int connectionWindow)
    {
        _socket = socket;
        _net = stream;
        _reader = new FrameReader(_net);
        _writer = new FrameWriter(_net);
        AutoGrant = autoGrant;
        StreamWindow = streamWindow;
        ConnectionWindow = connectionWindow;
        _recvConnection = connectionWindow;
    }

    /// <summary>Grant credit back as soon as data arrives (false: the test grants with <see cref="GrantAsync"/>).</summary>
    public bool AutoGrant { get; set; }

    /// <summary>The per-stream window this host announced.</summary>
    public int StreamWindow { get; }

    /// <summary>The connection window this host announced.</summary>
    public int ConnectionWindow { get; }

    public HelloAck? Ack { get; private set; }

    /// <summary>Set when the agent broke the protocol towards us (overran a window, sent a frame for no stream).</summary>
    public string? Violation => _violation;

    public GoAway? GoAway { get; private set; }

    /// <summary>Completes when the agent closed the connection.</summary>
    public Task Closed => _loop;

    public static async Task<AgentClient> ConnectAsync(string socketPath, bool autoGrant = true, bool handshake = true,
        int streamWindow = ProtocolConstants.DefaultStreamWindow, int connectionWindow = ProtocolConstants.DefaultConnectionWindow)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
        return await OverStreamAsync(socket, new NetworkStream(socket, ownsSocket: false), autoGrant, handshake, streamWindow, connectionWindow);
    }

    /// <summary>A client over any byte stream (a pty standing in for a virtio-serial port).</summary>
    public static async Task<AgentClient> OverStreamAsync(Socket? socket, Stream stream, bool autoGrant = true, bool handshake = true,
        int streamWindow = ProtocolConstants.DefaultStreamWindow, int connectionWindow = ProtocolConstants.DefaultConnectionWindow)
    {
        var client = new AgentClient(socket, stream, autoGrant, streamWindow, connectionWindow);
        client._loop = Task.Run(client.ReadLoop);
        if (handshake)
        {
            var ack = await client.HelloAsync(new Hello
            {
                ProtocolVersion = ProtocolConstants.Version,
                MaxFramePayload = ProtocolConstants.DefaultMaxFramePayload,
                StreamWindow = (uint)streamWindow,
                ConnectionWindow = (uint)connectionWindow,
                Client = "moat-agent-tests",
            });
            if (ack is null)
                throw new InvalidOperationException($"the agent refused the handshake: {client.GoAway}");
        }
        return client;
    }

    /// <summary>Sends Hello; returns HelloAck, or null when the agent answered GoAway.</summary>
    public async Task<HelloAck?> HelloAsync(Hello hello)
    {
        await SendMessageAsync(FrameType.Hello, FrameFlags.None, 0, hello);
        var frame = await NextConnectionFrameAsync(TimeSpan.FromSeconds(10));
        if (frame.Type == FrameType.HelloAck)
        {
            Ack = HelloAck.Parser.ParseFrom(frame.Payload);
            _sendConnection = new CreditWindow((int)Ack.ConnectionWindow);
            return Ack;
        }
        return null;
    }

    /// <summary>The next connection-level frame (HelloAck, Pong, GoAway).</summary>
    public async Task<RecvFrame> NextConnectionFrameAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        return await _connection.Reader.ReadAsync(cts.Token);
    }

    public uint NextStreamId() => (uint)Interlocked.Increment(ref _nextId);

    public Task SendMessageAsync(FrameType type, FrameFlags flags, uint streamId, IMessage message)
        => _writer.WriteAsync(type, flags, streamId, message).AsTask();

    public Task SendFrameAsync(FrameType type, FrameFlags flags, uint streamId, ReadOnlyMemory<byte> payload)
        => _writer.WriteAsync(type, flags, streamId, payload).AsTask();

    /// <summary>Arbitrary bytes on the wire (malformed frames).</summary>
    public async Task WriteRawAsync(byte[] bytes)
    {
        await _net.WriteAsync(bytes);
        await _net.FlushAsync();
    }

    /// <summary>Opens a stream with a Request.</summary>
    public async Task<TestStream> StartAsync(Request request, uint? streamId = null)
    {
        uint id = streamId ?? NextStreamId();
        var stream = new TestStream(id, StreamWindow, (int)(Ack?.StreamWindow ?? ProtocolConstants.DefaultStreamWindow));
        _streams[id] = stream;
        await SendMessageAsync(FrameType.Request, FrameFlags.None, id, request);
        return stream;
    }

    public Task<TestStream> ExecAsync(ExecRequest exec) => StartAsync(new Request { Exec = exec });

    public Task<TestStream> ExecAsync(params string[] argv)
    {
        var exec = new ExecRequest();
        exec.Argv.AddRange(argv);
        return ExecAsync(exec);
    }

    /// <summary>Runs a command to completion.</summary>
    public async Task<StreamResult> RunAsync(ExecRequest exec, TimeSpan? timeout = null)
        => await (await ExecAsync(exec)).CollectAsync(timeout);

    public Task<StreamResult> RunAsync(params string[] argv)
    {
        var exec = new ExecRequest { User = "root" };
        exec.Argv.AddRange(argv);
        return RunAsync(exec);
    }

    /// <summary>A shell command as root, collected.</summary>
    public Task<StreamResult> ShellAsync(string script, string user = "root")
    {
        var exec = new ExecRequest { User = user };
        exec.Argv.AddRange(["/bin/sh", "-c", script]);
        return RunAsync(exec);
    }

    /// <summary>Sends Stdin (or FileData) within the agent's windows, waiting for credit as a correct host must.</summary>
    public async Task SendDataAsync(TestStream stream, FrameType type, ReadOnlyMemory<byte> data, bool final, CancellationToken cancellationToken = default)
    {
        int offset = 0;
        while (offset < data.Length)
        {
            int want = Math.Min(ProtocolConstants.DataChunk, data.Length - offset);
            int s;
            try
            {
                s = await stream.SendWindow.TakeAsync(want, cancellationToken);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                return; // the agent ended the stream (an error, or it already answered)
            }
            int c = await _sendConnection.TakeAsync(s, cancellationToken);
            if (c < s)
                stream.SendWindow.Return(s - c);
            bool last = final && offset + c == data.Length;
            await SendFrameAsync(type, last ? FrameFlags.Final : FrameFlags.None, stream.Id, data.Slice(offset, c));
            offset += c;
        }
        if (final && data.Length == 0)
            await SendFrameAsync(type, FrameFlags.Final, stream.Id, ReadOnlyMemory<byte>.Empty);
    }

    public Task SendStdinAsync(TestStream stream, string text, bool final = false)
        => SendDataAsync(stream, FrameType.Stdin, Encoding.UTF8.GetBytes(text), final);

    /// <summary>Gives the agent <paramref name="increment"/> more credit on a stream (0: the connection).</summary>
    public async Task GrantAsync(uint streamId, int increment)
    {
        lock (_gate)
        {
            if (streamId == 0)
                _recvConnection += increment;
            else if (_streams.TryGetValue(streamId, out var s))
                s.RecvAvailable += increment;
        }
        await _writer.WriteWindowAsync(streamId, increment);
    }

    public Task CancelAsync(TestStream stream)
    {
        _streams.TryRemove(stream.Id, out _);
        _cancelled[stream.Id] = true; // frames already in flight may still arrive
        return SendFrameAsync(FrameType.Cancel, FrameFlags.None, stream.Id, ReadOnlyMemory<byte>.Empty);
    }

    public async Task<StreamResult> RequestAsync(Request request, TimeSpan? timeout = null)
        => await (await StartAsync(request)).CollectAsync(timeout);

    private async Task ReadLoop()
    {
        try
        {
            while (true)
            {
                Frame? read;
                try
                {
                    read = await _reader.ReadAsync();
                }
                catch (ProtocolException ex)
                {
                    _violation ??= "bad frame from the agent: " + ex.Message;
                    return;
                }
                catch (IOException)
                {
                    return;
                }
                catch (ObjectDisposedException)
                {
                    return;
                }
                if (read is null)
                    return;
                var f = read.Value;
                var frame = new RecvFrame(f.Type, f.Header.Flags, f.StreamId, f.Payload.ToArray());
                switch (frame.Type)
                {
                    case FrameType.HelloAck:
                    case FrameType.Pong:
                        await _connection.Writer.WriteAsync(frame);
                        continue;
                    case FrameType.GoAway:
                        GoAway = GoAway.Parser.ParseFrom(frame.Payload);
                        await _connection.Writer.WriteAsync(frame);
                        continue;
                    case FrameType.Window:
                    {
                        int increment = FrameDecoding.WindowIncrement(frame.Payload);
                        if (frame.StreamId == 0)
                            _sendConnection.Grant(increment);
                        else if (_streams.TryGetValue(frame.StreamId, out var ws))
                            ws.SendWindow.Grant(increment);
                        continue;
                    }
                }
                if (!_streams.TryGetValue(frame.StreamId, out var stream))
                {
                    if (!_cancelled.ContainsKey(frame.StreamId))
                        _violation ??= $"{frame.Type} for stream {frame.StreamId} that is not open";
                    continue;
                }
                if (frame.Type is FrameType.Stdout or FrameType.Stderr or FrameType.FileData && frame.Payload.Length > 0)
                {
                    int n = frame.Payload.Length;
                    lock (_gate)
                    {
                        if (n > stream.RecvAvailable || n > _recvConnection)
                            _violation ??= $"the agent overran a window: {n} bytes with {stream.RecvAvailable} stream / {_recvConnection} connection credit";
                        stream.RecvAvailable -= n;
                        _recvConnection -= n;
                        if (n > ProtocolConstants.DataChunk)
                            _violation ??= $"a data frame of {n} bytes";
                    }
                    if (AutoGrant)
                    {
                        await GrantAsync(stream.Id, n);
                        await GrantAsync(0, n);
                    }
                }
                if (frame.Type == FrameType.Response && frame.IsFinal)
                {
                    _streams.TryRemove(frame.StreamId, out _);
                    stream.SendWindow.Close(); // a correct host stops sending on an ended stream
                }
                await stream.Frames.Writer.WriteAsync(frame);
                if (frame.Type == FrameType.Response && frame.IsFinal)
                    stream.Frames.Writer.TryComplete();
            }
        }
        finally
        {
            _connection.Writer.TryComplete();
            foreach (var s in _streams.Values)
                s.Frames.Writer.TryComplete();
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            _socket?.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        _socket?.Dispose();
        if (_socket is null)
            await _net.DisposeAsync();
        try
        {
            await _loop.WaitAsync(TimeSpan.FromSeconds(5));
        }
        catch (Exception)
        {
        }
        await _writer.DisposeAsync();
    }
}

/// <summary>The host's view of one stream.</summary>
public sealed class TestStream(uint id, int recvWindow, int sendWindow)
{
    public uint Id { get; } = id;

    internal Channel<RecvFrame> Frames { get; } = Channel.CreateUnbounded<RecvFrame>();

    internal long RecvAvailable { get; set; } = recvWindow;

    internal CreditWindow SendWindow { get; } = new(sendWindow);

    /// <summary>The next frame on the stream; null when the stream or connection ended.</summary>
    public async Task<RecvFrame?> NextAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(30));
        try
        {
            return await Frames.Reader.ReadAsync(cts.Token);
        }
        catch (ChannelClosedException)
        {
            return null;
        }
    }

    /// <summary>The next frame, which must be a Response.</summary>
    public async Task<Response> ResponseAsync(TimeSpan? timeout = null)
    {
        var f = await NextAsync(timeout) ?? throw new InvalidOperationException($"stream {Id} ended without a response");
        if (f.Type != FrameType.Response)
            throw new InvalidOperationException($"expected a Response on stream {Id}, got {f.Type}");
        return f.AsResponse();
    }

    /// <summary>Reads everything up to the Final Response.</summary>
    public async Task<StreamResult> CollectAsync(TimeSpan? timeout = null)
    {
        var result = new StreamResult();
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero)
                throw new TimeoutException($"stream {Id} did not finish in time; got {result.Describe()}");
            RecvFrame? f;
            try
            {
                f = await NextAsync(left);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"stream {Id} did not finish in time; got {result.Describe()}");
            }
            if (f is null)
            {
                result.ConnectionLost = true;
                return result;
            }
            result.Add(f);
            if (f.Type == FrameType.Response && f.IsFinal)
                return result;
        }
    }
}

/// <summary>Everything a stream delivered.</summary>
public sealed class StreamResult
{
    private readonly MemoryStream _stdout = new(), _stderr = new(), _file = new();

    public List<RecvFrame> Frames { get; } = [];
    public List<Response> Responses { get; } = [];
    public ExecStarted? Started { get; private set; }
    public ExitStatus? Exit { get; private set; }
    public ErrorReply? Error { get; private set; }
    public int StdoutFinals { get; private set; }
    public int StderrFinals { get; private set; }
    public int FileDataFinals { get; private set; }
    public bool ConnectionLost { get; set; }

    public byte[] StdoutBytes => _stdout.ToArray();
    public byte[] StderrBytes => _stderr.ToArray();
    public byte[] FileBytes => _file.ToArray();
    public string Stdout => Encoding.UTF8.GetString(StdoutBytes);
    public string Stderr => Encoding.UTF8.GetString(StderrBytes);
    public Response Final => Responses[^1];

    internal void Add(RecvFrame f)
    {
        Frames.Add(f);
        switch (f.Type)
        {
            case FrameType.Stdout:
                _stdout.Write(f.Payload);
                if (f.IsFinal)
                    StdoutFinals++;
                break;
            case FrameType.Stderr:
                _stderr.Write(f.Payload);
                if (f.IsFinal)
                    StderrFinals++;
                break;
            case FrameType.FileData:
                _file.Write(f.Payload);
                if (f.IsFinal)
                    FileDataFinals++;
                break;
            case FrameType.Response:
                var r = f.AsResponse();
                Responses.Add(r);
                if (r.Started is not null)
                    Started = r.Started;
                if (r.Exit is not null)
                    Exit = r.Exit;
                if (r.Error is not null)
                    Error = r.Error;
                break;
        }
    }

    public string Describe()
        => $"frames={Frames.Count} stdout='{Trim(Stdout)}' stderr='{Trim(Stderr)}' exit={Exit} error={Error} lost={ConnectionLost}";

    private static string Trim(string s) => s.Length > 300 ? s[..300] + "…" : s;

    public override string ToString() => Describe();
}
