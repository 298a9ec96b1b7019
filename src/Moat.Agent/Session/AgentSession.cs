using System.Buffers.Binary;
using Google.Protobuf;
using Moat.Agent.Core;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;
using Moat.Agent.Transport;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Session;

/// <summary>
/// One host connection: the Hello handshake, the frame reader (on its own thread), stream
/// bookkeeping and flow-control accounting in both directions. Anything the host sends that
/// breaks the protocol ends this connection with GoAway; processes live on.
/// </summary>
internal sealed class AgentSession
{
    /// <summary>Streams open at once; one more is answered <c>busy</c>.</summary>
    public const int MaxOpenStreams = 1024;
    /// <summary>Credit the agent grants the host per stream for Stdin/FileData.</summary>
    public const int AgentStreamWindow = 256 * 1024;
    /// <summary>Credit the agent grants the host across streams.</summary>
    public const int AgentConnectionWindow = 2 * 1024 * 1024;
    /// <summary>Smallest payload limit a host may announce (a directory entry must fit).</summary>
    public const int MinPeerPayload = 16 * 1024;

    private static int _nextId;

    private readonly AgentChannel _channel;
    private readonly AgentServices _services;
    private readonly Dictionary<uint, AgentStream> _streams = [];
    private long _connSendCredit;
    private long _streamWindow;
    private bool _connStarved;
    private long _connRecvAvailable = AgentConnectionWindow;
    private long _connRecvPendingGrant;
    private ulong _writableToken;
    private volatile bool _closed;

    public AgentSession(AgentChannel channel, AgentServices services)
    {
        _channel = channel;
        _services = services;
        Out = new OutboundQueue(channel.Fd) { Failed = channel.Interrupt };
        Id = Interlocked.Increment(ref _nextId);
    }

    /// <summary>Guards the stream table and every credit counter of this session.</summary>
    public object Gate { get; } = new();

    public int Id { get; }

    public OutboundQueue Out { get; }

    public bool IsClosed => _closed;

    /// <summary>Largest payload the host accepts.</summary>
    public int PeerMaxPayload { get; private set; } = ProtocolConstants.DefaultMaxFramePayload;

    /// <summary>Largest data payload the agent sends.</summary>
    public int MaxData => Math.Min(ProtocolConstants.DataChunk, PeerMaxPayload);

    /// <summary>Runs the session on the calling thread until the connection ends.</summary>
    public void Run()
    {
        var loop = _services.Loop;
        var writable = new WritableHandler(Out);
        loop.Post(() =>
        {
            if (!_closed)
                _writableToken = loop.Add(_channel.Fd, Native.EPOLLOUT | Native.EPOLLET, writable);
        });
        try
        {
            var reader = new FrameReader(_channel.Reader, ProtocolConstants.DefaultMaxFramePayload);
            if (!Handshake(reader))
                return;
            while (!_closed)
            {
                Frame? frame = reader.ReadAsync().GetAwaiter().GetResult();
                if (frame is null)
                    break;
                // Keep-alive pings are not activity: they must not cost an idle agent a GC each.
                if (frame.Value.Type is not (FrameType.Ping or FrameType.Pong))
                    _services.Idle.Touch();
                Dispatch(frame.Value);
            }
        }
        catch (ProtocolException ex)
        {
            AgentLog.Write($"session {Id}: protocol violation {ex.Code}: {ex.Message}");
            GoAway(ex.Code, ex.Message);
        }
        catch (IOException)
        {
            // The connection went away.
        }
        catch (Exception ex)
        {
            AgentLog.Write($"session {Id}: {ex.GetType().Name}: {ex.Message}");
            GoAway("internal", ex.Message);
        }
        finally
        {
            Teardown();
        }
    }

    /// <summary>Ends the session from outside (a newer connection replaces it).</summary>
    public void Close(string code, string message)
    {
        if (_closed)
            return;
        Out.Enqueue(Encode(FrameType.GoAway, FrameFlags.None, 0, new GoAway { Code = code, Message = message }), -1, false);
        _channel.Interrupt();
    }

    private bool Handshake(FrameReader reader)
    {
        Frame? first = reader.ReadAsync().GetAwaiter().GetResult();
        if (first is null)
            return false;
        var frame = first.Value;
        if (frame.Type != FrameType.Hello || frame.StreamId != 0)
            throw new ProtocolException("expected_hello", $"the first frame must be Hello on stream 0, got {frame.Type}");
        var hello = FrameDecoding.Parse(Hello.Parser, frame.Payload);
        if (hello.ProtocolVersion != ProtocolConstants.Version)
        {
            GoAway("version", $"agent speaks protocol version {ProtocolConstants.Version}, host offered {hello.ProtocolVersion}");
            return false;
        }
        int peerPayload = hello.MaxFramePayload == 0 ? ProtocolConstants.DefaultMaxFramePayload : (int)Math.Min(hello.MaxFramePayload, (uint)ProtocolConstants.MaxWindow);
        if (peerPayload < MinPeerPayload)
            throw new ProtocolException("bad_hello", $"max_frame_payload {hello.MaxFramePayload} is below the minimum of {MinPeerPayload}");
        if (hello.StreamWindow > ProtocolConstants.MaxWindow || hello.ConnectionWindow > ProtocolConstants.MaxWindow)
            throw new ProtocolException("bad_hello", "a window in Hello exceeds the protocol maximum");
        PeerMaxPayload = peerPayload;
        lock (Gate)
        {
            _streamWindow = hello.StreamWindow == 0 ? ProtocolConstants.DefaultStreamWindow : hello.StreamWindow;
            _connSendCredit = hello.ConnectionWindow == 0 ? ProtocolConstants.DefaultConnectionWindow : hello.ConnectionWindow;
        }
        var ack = new HelloAck
        {
            ProtocolVersion = ProtocolConstants.Version,
            AgentVersion = AgentInfo.Version,
            MaxFramePayload = ProtocolConstants.DefaultMaxFramePayload,
            StreamWindow = AgentStreamWindow,
            ConnectionWindow = AgentConnectionWindow,
            StartedUnixMs = _services.StartedUnixMs,
            TrackedProcesses = (uint)_services.Processes.TrackedCount,
            KernelRelease = _services.KernelRelease,
            Transport = _channel.Transport,
        };
        Out.Enqueue(Encode(FrameType.HelloAck, FrameFlags.None, 0, ack), -1, false, mayBlock: true);
        AgentLog.Info($"session {Id}: hello from '{hello.Client}'");
        return true;
    }

    private void Dispatch(Frame frame)
    {
        uint id = frame.StreamId;
        switch (frame.Type)
        {
            case FrameType.Ping:
                RequireConnectionLevel(frame);
                if (frame.Payload.Length != ProtocolConstants.PingPayloadSize)
                    throw new ProtocolException("bad_ping", $"Ping payload must be {ProtocolConstants.PingPayloadSize} bytes");
                Out.Enqueue(EncodeRaw(FrameType.Pong, FrameFlags.None, 0, frame.Payload.Span), -1, false, mayBlock: true);
                return;
            case FrameType.Pong:
                RequireConnectionLevel(frame);
                return;
            case FrameType.GoAway:
                RequireConnectionLevel(frame);
                _closed = true;
                return;
            case FrameType.Window:
                OnWindow(id, FrameDecoding.WindowIncrement(frame.Payload.Span));
                return;
            case FrameType.Request:
            {
                RequireStream(frame);
                var request = FrameDecoding.Parse(Request.Parser, frame.Payload);
                if (request.KindCase == Request.KindOneofCase.None)
                {
                    // Well-formed, but no operation this agent knows (a newer host): refuse the
                    // request, not the connection.
                    if (Open(new SimpleStream(this, id)) is { } unknown)
                        RespondError(unknown, "unsupported", $"this agent ({AgentInfo.Version}) does not know the requested operation");
                    return;
                }
                OnRequest(id, request);
                return;
            }
            case FrameType.Control:
            {
                RequireStream(frame);
                var control = FrameDecoding.Parse(StreamControl.Parser, frame.Payload);
                Find(id)?.OnControl(control);
                return;
            }
            case FrameType.Stdin:
            case FrameType.FileData:
                RequireStream(frame);
                OnData(frame);
                return;
            case FrameType.Cancel:
            {
                RequireStream(frame);
                AgentStream? stream;
                lock (Gate)
                {
                    if (_streams.Remove(id, out stream))
                        stream.TryEnd();
                }
                stream?.OnCancel();
                return;
            }
            case FrameType.Hello:
                throw new ProtocolException("unexpected_frame", "Hello after the handshake");
            case FrameType.HelloAck:
            case FrameType.Response:
            case FrameType.Stdout:
            case FrameType.Stderr:
                throw new ProtocolException("unexpected_frame", $"{frame.Type} is sent by the agent, not to it");
            default:
                // FrameHeader.Parse already refused unknown types that are not Ignorable.
                return;
        }
    }

    private static void RequireConnectionLevel(Frame frame)
    {
        if (frame.StreamId != 0)
            throw new ProtocolException("bad_stream", $"{frame.Type} must be sent on stream 0");
    }

    private static void RequireStream(Frame frame)
    {
        if (frame.StreamId == 0)
            throw new ProtocolException("bad_stream", $"{frame.Type} needs a stream id");
    }

    private AgentStream? Find(uint id)
    {
        lock (Gate)
            return _streams.GetValueOrDefault(id);
    }

    private void OnWindow(uint id, int increment)
    {
        if (id == 0)
        {
            List<AgentStream>? starved = null;
            lock (Gate)
            {
                _connSendCredit += increment;
                if (_connSendCredit > 2L * ProtocolConstants.MaxWindow)
                    throw new ProtocolException("window_overflow", "the host granted more connection credit than a window may hold");
                if (_connStarved)
                {
                    _connStarved = false;
                    starved = [.. _streams.Values];
                }
                Monitor.PulseAll(Gate);
            }
            if (starved is not null)
            {
                foreach (var s in starved)
                    s.OnCredit();
            }
            return;
        }
        AgentStream? stream;
        lock (Gate)
        {
            stream = _streams.GetValueOrDefault(id);
            if (stream is null)
                return; // the stream just ended; the host could not know yet
            stream.SendCredit += increment;
            if (stream.SendCredit > 2L * ProtocolConstants.MaxWindow)
                throw new ProtocolException("window_overflow", $"the host granted more credit on stream {id} than a window may hold");
            Monitor.PulseAll(Gate);
        }
        stream.OnCredit();
    }

    private void OnData(Frame frame)
    {
        int length = frame.Payload.Length;
        if (length > ProtocolConstants.DataChunk)
            throw new ProtocolException("frame_too_large", $"{frame.Type} payload of {length} bytes exceeds the data chunk of {ProtocolConstants.DataChunk}");
        AgentStream? stream;
        lock (Gate)
        {
            if (length > _connRecvAvailable)
                throw new ProtocolException("flow_control", $"the host overran the connection window ({length} > {_connRecvAvailable})");
            _connRecvAvailable -= length;
            stream = _streams.GetValueOrDefault(frame.StreamId);
            if (stream is not null)
            {
                if (length > stream.RecvAvailable)
                    throw new ProtocolException("flow_control", $"the host overran the window of stream {frame.StreamId} ({length} > {stream.RecvAvailable})");
                stream.RecvAvailable -= length;
            }
        }
        if (stream is null)
        {
            // Data for a stream that already ended (its process exited, its write failed): the
            // host could not know. Drop it and give the connection credit straight back.
            GrantRecv(null, length, force: true);
            return;
        }
        stream.OnData(frame.Type, frame.Payload.Span, frame.IsFinal);
    }

    private void OnRequest(uint id, Request request)
    {
        lock (Gate)
        {
            if (_streams.ContainsKey(id))
                throw new ProtocolException("stream_in_use", $"stream {id} is still open");
        }
        try
        {
            switch (request.KindCase)
            {
                case Request.KindOneofCase.Exec:
                    _services.Processes.Exec(this, id, request.Exec);
                    break;
                case Request.KindOneofCase.Attach:
                    _services.Processes.Attach(this, id, request.Attach);
                    break;
                case Request.KindOneofCase.Signal:
                    _services.Processes.Signal(this, id, request.Signal);
                    break;
                case Request.KindOneofCase.ProcessList:
                    _services.Processes.List(this, id);
                    break;
                case Request.KindOneofCase.Shutdown:
                    if (Open(new SimpleStream(this, id)) is { } shutdownStream)
                    {
                        Respond(shutdownStream, new Response { Ok = new Ok() }, final: true);
                        _services.Shutdown.Begin("shutdown request", (int)Math.Min(request.Shutdown.GraceMs, 600_000u), 0);
                    }
                    break;
                case Request.KindOneofCase.Usage:
                    if (Open(new SimpleStream(this, id)) is { } usageStream)
                        _services.Workers.Run(() => Guarded(usageStream, () => Respond(usageStream, new Response { Usage = _services.Usage.Collect() }, final: true)));
                    break;
                default:
                    _services.Files.Handle(this, id, request);
                    break;
            }
        }
        catch (ProtocolException)
        {
            throw;
        }
        catch (Exception ex)
        {
            AgentLog.Write($"session {Id}: request {request.KindCase} failed: {ex.GetType().Name}: {ex.Message}");
            // The handler may or may not have opened the stream; end it either way. No thread or
            // memory to be had is the sandbox's limits, not a bug: "busy".
            var stream = Find(id) ?? new SimpleStream(this, id);
            RespondError(stream, ex is OutOfMemoryException or ThreadStartException ? "busy" : "internal", ex.Message);
        }
    }

    /// <summary>Runs a handler, turning any failure into an ErrorReply on its stream.</summary>
    public void Guarded(AgentStream stream, Action action)
    {
        try
        {
            action();
        }
        catch (Exception ex)
        {
            AgentLog.Write($"session {Id}: stream {stream.Id}: {ex.GetType().Name}: {ex.Message}");
            RespondError(stream, "internal", ex.Message);
        }
    }

    /// <summary>
    /// Registers a new stream. Returns null (after answering <c>busy</c>) when too many are open.
    /// </summary>
    public T? Open<T>(T stream) where T : AgentStream
    {
        lock (Gate)
        {
            if (_closed)
                return null;
            if (_streams.ContainsKey(stream.Id))
                throw new ProtocolException("stream_in_use", $"stream {stream.Id} is still open");
            if (_streams.Count < MaxOpenStreams)
            {
                stream.SendCredit = _streamWindow;
                stream.RecvAvailable = AgentStreamWindow;
                _streams[stream.Id] = stream;
                return stream;
            }
        }
        // Answered outside the lock: the write may wait for a host that does not read.
        stream.TryEnd();
        Out.Enqueue(Encode(FrameType.Response, FrameFlags.Final, stream.Id, Error("busy", $"more than {MaxOpenStreams} streams are open")), -1, false, mayBlock: !_services.Loop.OnLoopThread);
        return null;
    }

    // ---- sending ----

    /// <summary>Sends a Response; a Final one ends the stream. Dropped when the stream already ended.</summary>
    public void Respond(AgentStream stream, Response response, bool final)
    {
        if (final)
        {
            if (!stream.TryEnd())
                return;
            lock (Gate)
            {
                if (_streams.TryGetValue(stream.Id, out var current) && ReferenceEquals(current, stream))
                    _streams.Remove(stream.Id);
            }
        }
        else if (stream.Ended)
        {
            return;
        }
        Out.Enqueue(Encode(FrameType.Response, final ? FrameFlags.Final : FrameFlags.None, stream.Id, response), -1, false, mayBlock: !_services.Loop.OnLoopThread);
    }

    public void RespondError(AgentStream stream, string code, string message, int errno = 0)
        => Respond(stream, Error(code, message, errno), final: true);

    public static Response Error(string code, string message, int errno = 0)
    {
        if (message.Length > 1024)
            message = message[..1024];
        return new Response { Error = new ErrorReply { Code = code, Message = message, Errno = errno } };
    }

    /// <summary>
    /// Sends a data frame built in a <see cref="FramePool"/> buffer whose payload (already
    /// counted against credit with <see cref="Reserve"/>) starts at <see cref="FrameHeader.Size"/>.
    /// </summary>
    public void SendData(AgentStream stream, FrameType type, byte[] pooledFrame, int payloadLength, bool final)
    {
        if (stream.Ended)
        {
            FramePool.Return(pooledFrame);
            return;
        }
        new FrameHeader(type, final ? FrameFlags.Final : FrameFlags.None, stream.Id, payloadLength).Write(pooledFrame);
        Out.Enqueue(pooledFrame, FrameHeader.Size + payloadLength, pooled: true);
    }

    /// <summary>An empty Final data frame (costs no credit): EOF of that channel.</summary>
    public void SendEndOfData(AgentStream stream, FrameType type)
    {
        if (stream.Ended)
            return;
        Out.Enqueue(EncodeRaw(type, FrameFlags.Final, stream.Id, default), -1, false);
    }

    /// <summary>Takes up to <paramref name="wanted"/> bytes of send credit on the stream and the connection.</summary>
    public int Reserve(AgentStream stream, int wanted)
    {
        lock (Gate)
        {
            if (stream.Ended)
                return 0;
            long n = Math.Min(wanted, Math.Min(stream.SendCredit, _connSendCredit));
            if (n <= 0)
            {
                if (_connSendCredit <= 0)
                    _connStarved = true;
                return 0;
            }
            stream.SendCredit -= n;
            _connSendCredit -= n;
            return (int)n;
        }
    }

    /// <summary>Gives back credit reserved but not used.</summary>
    public void Release(AgentStream stream, int unused)
    {
        if (unused <= 0)
            return;
        lock (Gate)
        {
            stream.SendCredit += unused;
            _connSendCredit += unused;
        }
    }

    /// <summary>
    /// Blocks (a worker thread) until credit is available or the stream ends; returns what it took.
    /// </summary>
    public int ReserveBlocking(AgentStream stream, int wanted)
    {
        lock (Gate)
        {
            while (true)
            {
                if (stream.Ended || _closed)
                    return 0;
                long n = Math.Min(wanted, Math.Min(stream.SendCredit, _connSendCredit));
                if (n > 0)
                {
                    stream.SendCredit -= n;
                    _connSendCredit -= n;
                    return (int)n;
                }
                Monitor.Wait(Gate, 1000);
            }
        }
    }

    /// <summary>
    /// Returns receive credit for <paramref name="bytes"/> of Stdin/FileData the agent consumed.
    /// Window frames are batched: sent once a quarter window accumulates, or when
    /// <paramref name="force"/> (the consumer drained everything it had).
    /// </summary>
    public void GrantRecv(AgentStream? stream, long bytes, bool force)
    {
        if (bytes <= 0 && !force)
            return;
        long streamGrant = 0, connGrant = 0;
        lock (Gate)
        {
            if (_closed)
                return;
            _connRecvPendingGrant += bytes;
            if (stream is not null && !stream.Ended)
            {
                stream.RecvPendingGrant += bytes;
                if (stream.RecvPendingGrant > 0 && (force || stream.RecvPendingGrant >= AgentStreamWindow / 4))
                {
                    streamGrant = stream.RecvPendingGrant;
                    stream.RecvPendingGrant = 0;
                    stream.RecvAvailable += streamGrant;
                }
            }
            if (_connRecvPendingGrant > 0 && (force || _connRecvPendingGrant >= AgentConnectionWindow / 8))
            {
                connGrant = _connRecvPendingGrant;
                _connRecvPendingGrant = 0;
                _connRecvAvailable += connGrant;
            }
        }
        if (streamGrant > 0)
            Out.Enqueue(EncodeWindow(stream!.Id, (int)streamGrant), -1, false);
        if (connGrant > 0)
            Out.Enqueue(EncodeWindow(0, (int)connGrant), -1, false);
    }

    private void GoAway(string code, string message)
    {
        if (Out.IsClosed)
            return;
        Out.Enqueue(Encode(FrameType.GoAway, FrameFlags.None, 0, new GoAway { Code = code, Message = message.Length > 512 ? message[..512] : message }), -1, false);
        Out.WaitDrained(500);
    }

    private void Teardown()
    {
        List<AgentStream> open;
        lock (Gate)
        {
            _closed = true;
            open = [.. _streams.Values];
            _streams.Clear();
            foreach (var s in open)
                s.TryEnd();
            Monitor.PulseAll(Gate);
        }
        Out.Close();
        foreach (var s in open)
        {
            try
            {
                s.OnSessionClosed();
            }
            catch (Exception ex)
            {
                AgentLog.Write($"session {Id}: closing stream {s.Id}: {ex.Message}");
            }
        }
        var loop = _services.Loop;
        loop.Post(() =>
        {
            if (_writableToken != 0)
                loop.Remove(_channel.Fd, _writableToken);
            _channel.Dispose();
        });
        AgentLog.Info($"session {Id}: closed");
    }

    // ---- encoding ----

    public static byte[] Encode(FrameType type, FrameFlags flags, uint streamId, IMessage message)
    {
        int size = message.CalculateSize();
        var buffer = new byte[FrameHeader.Size + size];
        new FrameHeader(type, flags, streamId, size).Write(buffer);
        message.WriteTo(buffer.AsSpan(FrameHeader.Size));
        return buffer;
    }

    public static byte[] EncodeRaw(FrameType type, FrameFlags flags, uint streamId, ReadOnlySpan<byte> payload)
    {
        var buffer = new byte[FrameHeader.Size + payload.Length];
        new FrameHeader(type, flags, streamId, payload.Length).Write(buffer);
        payload.CopyTo(buffer.AsSpan(FrameHeader.Size));
        return buffer;
    }

    public static byte[] EncodeWindow(uint streamId, int increment)
    {
        Span<byte> payload = stackalloc byte[ProtocolConstants.WindowPayloadSize];
        BinaryPrimitives.WriteInt32LittleEndian(payload, increment);
        return EncodeRaw(FrameType.Window, FrameFlags.None, streamId, payload);
    }

    private sealed class WritableHandler(OutboundQueue queue) : IFdHandler
    {
        public void OnEvents(uint events) => queue.OnWritable();
    }
}

/// <summary>A stream with nothing to receive: one request, one Final response.</summary>
internal sealed class SimpleStream(AgentSession session, uint id) : AgentStream(session, id);
