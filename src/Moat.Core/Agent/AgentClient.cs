using System.Collections.Concurrent;
using System.Net.Sockets;
using Google.Protobuf;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Core.Agent;

/// <summary>Tunables of the host side of the agent channel.</summary>
public sealed record AgentClientOptions
{
    /// <summary>Largest payload accepted from the agent.</summary>
    public int MaxFramePayload { get; init; } = ProtocolConstants.DefaultMaxFramePayload;
    /// <summary>Credit the agent gets per stream.</summary>
    public int StreamWindow { get; init; } = ProtocolConstants.DefaultStreamWindow;
    /// <summary>Credit the agent gets across all streams.</summary>
    public int ConnectionWindow { get; init; } = ProtocolConstants.DefaultConnectionWindow;
    /// <summary>How long the agent has to answer Hello.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>How long a started frame may take to arrive in full.</summary>
    public TimeSpan FrameTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Idle time after which the host pings the agent.</summary>
    public TimeSpan PingInterval { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>Silence after which the agent counts as dead.</summary>
    public TimeSpan DeadAfter { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Streams that may be open at once on one connection.</summary>
    public int MaxOpenStreams { get; init; } = 1024;
}

/// <summary>
/// The host's end of one agent connection: multiplexes commands and file operations over one
/// stream, enforces flow control and frame limits on everything the agent sends, and fails the
/// whole connection — never the host — when the agent misbehaves.
/// </summary>
public sealed partial class AgentClient : IAsyncDisposable
{
    private readonly Stream _stream;
    private readonly FrameReader _reader;
    private readonly FrameWriter _writer;
    private readonly AgentClientOptions _options;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<uint, AgentStream> _streams = new();
    private readonly CancellationTokenSource _closing = new();
    private readonly TaskCompletionSource<Exception?> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CreditWindow _receiveConnection; // what the agent may still send us
    private CreditWindow _sendConnection = new(0);    // what we may still send the agent
    private int _sendStreamWindow;
    private int _pendingConnectionGrant;
    private uint _lastStreamId;
    private long _lastFrameTicks = Environment.TickCount64;
    private Task? _readLoop;
    private Task? _keepAlive;
    private string? _failure;
    private volatile bool _frozen;

    private AgentClient(Stream stream, AgentClientOptions options, ILogger logger)
    {
        _stream = stream;
        _options = options;
        _logger = logger;
        _reader = new FrameReader(stream, options.MaxFramePayload) { PayloadTimeout = options.FrameTimeout };
        _writer = new FrameWriter(stream, _closing.Token);
        _receiveConnection = new CreditWindow(options.ConnectionWindow);
    }

    /// <summary>What the agent said about itself when the connection opened.</summary>
    public HelloAck Hello { get; private set; } = new();

    /// <summary>Completes when the connection ends; the result is the reason (null for a local close).</summary>
    public Task<Exception?> Completion => _completion.Task;

    /// <summary>Whether the connection is still usable.</summary>
    public bool IsConnected => !_completion.Task.IsCompleted;

    /// <summary>
    /// The sandbox is frozen (paused): its agent cannot answer pings, and that is not death.
    /// Set back to false on resume; the silence clock restarts then.
    /// </summary>
    public bool Frozen
    {
        get => _frozen;
        set
        {
            _frozen = value;
            Interlocked.Exchange(ref _lastFrameTicks, Environment.TickCount64);
        }
    }

    /// <summary>
    /// Connects to an agent listening on a Unix socket, retrying until it listens or
    /// <paramref name="cancellationToken"/> fires, then performs the handshake.
    /// </summary>
    /// <param name="socketPath">The agent's socket.</param>
    /// <param name="options">Limits and timeouts.</param>
    /// <param name="logger">Where connection problems are logged.</param>
    /// <param name="stillAlive">Checked between attempts: false gives up at once.</param>
    /// <param name="expectedPeer">When set, the host pid that must hold the listening socket (checked with SO_PEERCRED).</param>
    /// <param name="cancellationToken">Gives up.</param>
    public static async Task<AgentClient> ConnectAsync(string socketPath, AgentClientOptions options, ILogger logger, Func<bool>? stillAlive, int? expectedPeer, CancellationToken cancellationToken)
    {
        var delay = TimeSpan.FromMilliseconds(1);
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancellationToken).ConfigureAwait(false);
                if (expectedPeer is { } pid && Host.Linux.PeerOf(socket).Pid is var peer && peer != pid)
                {
                    socket.Dispose();
                    throw new AgentUnavailableException($"the socket at {socketPath} is held by pid {peer}, not by the sandbox's agent (pid {pid}): refusing an impersonated agent");
                }
                var client = new AgentClient(new NetworkStream(socket, ownsSocket: true), options, logger);
                try
                {
                    await client.HandshakeAsync(cancellationToken).ConfigureAwait(false);
                }
                catch
                {
                    await client.DisposeAsync().ConfigureAwait(false);
                    throw;
                }
                return client;
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.AddressNotAvailable or SocketError.ConnectionRefused or SocketError.AddressFamilyNotSupported || ex.NativeErrorCode == 2 /* ENOENT */)
            {
                socket.Dispose();
                if (stillAlive is not null && !stillAlive())
                    throw new AgentUnavailableException($"the sandbox exited before its agent listened on {socketPath}");
                await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
                delay = TimeSpan.FromMilliseconds(Math.Min(delay.TotalMilliseconds * 2, 50));
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
    }

    /// <summary>Wraps an already-connected stream (used by tests and other transports).</summary>
    public static async Task<AgentClient> OverStreamAsync(Stream stream, AgentClientOptions options, ILogger logger, CancellationToken cancellationToken)
    {
        var client = new AgentClient(stream, options, logger);
        try
        {
            await client.HandshakeAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return client;
    }

    private async Task HandshakeAsync(CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_options.HandshakeTimeout);
        var hello = new Hello
        {
            ProtocolVersion = ProtocolConstants.Version,
            MaxFramePayload = (uint)_options.MaxFramePayload,
            StreamWindow = (uint)_options.StreamWindow,
            ConnectionWindow = (uint)_options.ConnectionWindow,
            Client = "moat-host",
        };
        try
        {
            await _writer.WriteAsync(FrameType.Hello, FrameFlags.None, 0, hello, timeout.Token).ConfigureAwait(false);
            var frame = await _reader.ReadAsync(timeout.Token).ConfigureAwait(false)
                ?? throw new AgentUnavailableException("the agent closed the channel during the handshake");
            if (frame.Type == FrameType.GoAway)
            {
                var away = FrameDecoding.Parse(GoAway.Parser, frame.Payload);
                throw new AgentUnavailableException($"the agent refused the connection: {away.Code}: {away.Message}");
            }
            if (frame.Type != FrameType.HelloAck || frame.StreamId != 0)
                throw new ProtocolException("bad_handshake", $"expected HelloAck, got {frame.Type} on stream {frame.StreamId}");
            var ack = FrameDecoding.Parse(HelloAck.Parser, frame.Payload);
            _reader.ReturnBuffer();
            if (ack.ProtocolVersion != ProtocolConstants.Version)
                throw new ProtocolException("version", $"agent speaks protocol {ack.ProtocolVersion}, host speaks {ProtocolConstants.Version}");
            if (ack.StreamWindow == 0 || ack.StreamWindow > ProtocolConstants.MaxWindow || ack.ConnectionWindow == 0 || ack.ConnectionWindow > ProtocolConstants.MaxWindow)
                throw new ProtocolException("bad_handshake", "agent announced an impossible flow-control window");
            if (ack.MaxFramePayload < 1024)
                throw new ProtocolException("bad_handshake", "agent announced a frame limit below 1 KiB");
            Hello = ack;
            _sendStreamWindow = (int)ack.StreamWindow;
            _sendConnection = new CreditWindow((int)ack.ConnectionWindow);
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new AgentUnavailableException($"the agent did not answer the handshake within {_options.HandshakeTimeout.TotalSeconds:0.#} s");
        }
        catch (ProtocolException ex)
        {
            throw new AgentUnavailableException($"the agent broke the protocol during the handshake: {ex.Message}", ex);
        }
        catch (IOException ex)
        {
            throw new AgentUnavailableException($"the agent channel failed during the handshake: {ex.Message}", ex);
        }
        _readLoop = Task.Run(ReadLoopAsync);
        _keepAlive = Task.Run(KeepAliveAsync);
    }

    // ---- the reader: the only code that looks at bytes from the agent ----

    private async Task ReadLoopAsync()
    {
        Exception? reason = null;
        try
        {
            while (!_closing.IsCancellationRequested)
            {
                var read = await _reader.ReadAsync(_closing.Token).ConfigureAwait(false);
                if (read is not { } frame)
                {
                    reason = new AgentUnavailableException("the agent closed its channel");
                    break;
                }
                Interlocked.Exchange(ref _lastFrameTicks, Environment.TickCount64);
                await DispatchAsync(frame).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (_closing.IsCancellationRequested)
        {
        }
        catch (ProtocolException ex)
        {
            reason = new AgentUnavailableException($"the agent broke the protocol ({ex.Code}): {ex.Message}", ex);
            await TrySendGoAwayAsync(ex.Code, ex.Message).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException)
        {
            reason = new AgentUnavailableException($"the agent channel failed: {ex.Message}", ex);
        }
        catch (Exception ex)
        {
            reason = new AgentUnavailableException($"unexpected failure reading the agent channel: {ex.Message}", ex);
            LogUnexpected(_logger, ex);
        }
        finally
        {
            _reader.ReturnBuffer();
        }
        Fail(reason);
    }

    private async ValueTask DispatchAsync(Frame frame)
    {
        switch (frame.Type)
        {
            case FrameType.Response:
            {
                var stream = LookUp(frame.StreamId, allowClosed: true);
                var response = FrameDecoding.Response(frame.Payload);
                if (stream is null)
                    return;
                if (frame.IsFinal)
                    _streams.TryRemove(frame.StreamId, out _);
                stream.OnResponse(response, frame.IsFinal);
                return;
            }
            case FrameType.Stdout or FrameType.Stderr or FrameType.FileData:
            {
                int length = frame.Payload.Length;
                if (length > ProtocolConstants.DataChunk)
                    throw new ProtocolException("chunk_too_large", $"data frame of {length} bytes exceeds {ProtocolConstants.DataChunk}");
                if (length > 0 && !_receiveConnection.Consume(length))
                    throw new ProtocolException("window_overrun", "the agent sent more data than the connection window allows");
                var stream = LookUp(frame.StreamId, allowClosed: true);
                if (stream is null)
                {
                    // Data still in flight for a stream the host abandoned: give the connection credit back.
                    if (length > 0)
                        await GrantConnectionAsync(length).ConfigureAwait(false);
                    return;
                }
                if (length > 0 && !stream.ReceiveWindow.Consume(length))
                    throw new ProtocolException("window_overrun", $"the agent overran the window of stream {frame.StreamId}");
                stream.OnData(frame.Type, frame.Payload.ToArray(), frame.IsFinal);
                return;
            }
            case FrameType.Window:
            {
                int increment = FrameDecoding.WindowIncrement(frame.Payload.Span);
                if (frame.StreamId == 0)
                    _sendConnection.Grant(increment);
                else
                    LookUp(frame.StreamId, allowClosed: true)?.SendWindow.Grant(increment);
                return;
            }
            case FrameType.Ping:
                if (frame.Payload.Length != ProtocolConstants.PingPayloadSize)
                    throw new ProtocolException("bad_ping", "ping payload must be 8 bytes");
                await _writer.WriteAsync(FrameType.Pong, FrameFlags.None, 0, frame.Payload.ToArray(), _closing.Token).ConfigureAwait(false);
                return;
            case FrameType.Pong:
                return;
            case FrameType.GoAway:
            {
                var away = FrameDecoding.Parse(GoAway.Parser, frame.Payload);
                throw new ProtocolException("go_away", $"the agent closed the connection: {Truncate(away.Code, 64)}: {Truncate(away.Message, 512)}");
            }
            default:
                if ((frame.Header.Flags & FrameFlags.Ignorable) != 0)
                    return;
                throw new ProtocolException("unexpected_frame", $"the agent may not send {frame.Type} frames");
        }
    }

    private AgentStream? LookUp(uint streamId, bool allowClosed)
    {
        if (streamId == 0 || streamId > Volatile.Read(ref _lastStreamId))
            throw new ProtocolException("unknown_stream", $"the agent used stream {streamId}, which the host never opened");
        if (_streams.TryGetValue(streamId, out var stream))
            return stream;
        return allowClosed ? null : throw new ProtocolException("closed_stream", $"stream {streamId} is closed");
    }

    private static string Truncate(string value, int max) => value.Length <= max ? value : value[..max] + "…";

    private async Task KeepAliveAsync()
    {
        try
        {
            using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(Math.Max(100, _options.PingInterval.TotalMilliseconds / 2)));
            while (await timer.WaitForNextTickAsync(_closing.Token).ConfigureAwait(false))
            {
                if (_frozen)
                    continue;
                long silent = Environment.TickCount64 - Interlocked.Read(ref _lastFrameTicks);
                if (silent > _options.DeadAfter.TotalMilliseconds)
                {
                    Fail(new AgentUnavailableException($"the agent has not answered for {silent / 1000} s"));
                    return;
                }
                if (silent > _options.PingInterval.TotalMilliseconds)
                    await _writer.WriteAsync(FrameType.Ping, FrameFlags.None, 0, BitConverter.GetBytes(Environment.TickCount64), _closing.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException)
        {
            Fail(new AgentUnavailableException($"the agent channel failed: {ex.Message}", ex));
        }
    }

    private async Task TrySendGoAwayAsync(string code, string message)
    {
        try
        {
            using var quick = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
            await _writer.WriteAsync(FrameType.GoAway, FrameFlags.None, 0, new GoAway { Code = code, Message = message }, quick.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    private void Fail(Exception? reason)
    {
        if (!_completion.TrySetResult(reason))
            return;
        _failure = reason?.Message ?? "the agent connection was closed";
        if (reason is not null)
            LogConnectionLost(_logger, reason.Message);
        _closing.Cancel();
        _sendConnection.Close();
        _receiveConnection.Close();
        var error = reason as MoatException ?? new AgentUnavailableException(_failure);
        foreach (var stream in _streams.Values)
            stream.OnConnectionLost(error);
        _streams.Clear();
        try
        {
            _stream.Dispose();
        }
        catch (IOException)
        {
        }
    }

    // ---- used by streams ----

    internal AgentClientOptions Options => _options;

    /// <summary>
    /// The consumer of a stream has taken <paramref name="bytes"/> of its data: return the credit
    /// to the agent, batched so that small outputs do not cost a Window frame each. Local
    /// accounting follows what has been sent, so an agent that overruns is still caught.
    /// </summary>
    internal async ValueTask ConsumedAsync(AgentStream stream, int bytes)
    {
        if (bytes <= 0)
            return;
        try
        {
            int streamGrant = stream.AddPendingGrant(bytes, Math.Min(64 * 1024, _options.StreamWindow / 4));
            if (streamGrant > 0)
            {
                stream.ReceiveWindow.Grant(streamGrant);
                await _writer.WriteWindowAsync(stream.Id, streamGrant, _closing.Token).ConfigureAwait(false);
            }
            await GrantConnectionAsync(bytes).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The read loop reports the broken connection.
        }
    }

    private async ValueTask GrantConnectionAsync(int bytes)
    {
        int pending = Interlocked.Add(ref _pendingConnectionGrant, bytes);
        if (pending < Math.Min(256 * 1024, _options.ConnectionWindow / 4))
            return;
        int grant = Interlocked.Exchange(ref _pendingConnectionGrant, 0);
        if (grant <= 0)
            return;
        _receiveConnection.Grant(grant);
        await _writer.WriteWindowAsync(0, grant, _closing.Token).ConfigureAwait(false);
    }

    internal async ValueTask SendFrameAsync(FrameType type, FrameFlags flags, uint streamId, IMessage message, CancellationToken cancellationToken)
    {
        ThrowIfFailed();
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _closing.Token);
        try
        {
            await _writer.WriteAsync(type, flags, streamId, message, linked.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException || (ex is OperationCanceledException && _closing.IsCancellationRequested))
        {
            throw new AgentUnavailableException(_failure ?? $"the agent channel failed: {ex.Message}", ex);
        }
    }

    /// <summary>Sends data on a stream, spending the agent's credit and waiting for more as needed.</summary>
    internal async ValueTask SendDataAsync(AgentStream stream, FrameType type, ReadOnlyMemory<byte> data, bool final, CancellationToken cancellationToken)
    {
        ThrowIfFailed();
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _closing.Token, stream.Aborted);
        try
        {
            int chunkLimit = (int)Math.Min(ProtocolConstants.DataChunk, Hello.MaxFramePayload);
            while (!data.IsEmpty)
            {
                int want = Math.Min(chunkLimit, data.Length);
                int fromStream = await stream.SendWindow.TakeAsync(want, linked.Token).ConfigureAwait(false);
                int fromConnection;
                try
                {
                    fromConnection = await _sendConnection.TakeAsync(fromStream, linked.Token).ConfigureAwait(false);
                }
                catch
                {
                    stream.SendWindow.Return(fromStream);
                    throw;
                }
                stream.SendWindow.Return(fromStream - fromConnection);
                bool last = final && fromConnection == data.Length;
                await _writer.WriteAsync(type, last ? FrameFlags.Final : FrameFlags.None, stream.Id, data[..fromConnection], linked.Token).ConfigureAwait(false);
                data = data[fromConnection..];
                if (last)
                    return;
            }
            if (final)
                await _writer.WriteAsync(type, FrameFlags.Final, stream.Id, ReadOnlyMemory<byte>.Empty, linked.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException || (ex is OperationCanceledException && _closing.IsCancellationRequested))
        {
            throw new AgentUnavailableException(_failure ?? $"the agent channel failed: {ex.Message}", ex);
        }
    }

    internal void ThrowIfFailed()
    {
        if (_completion.Task.IsCompleted)
            throw new AgentUnavailableException(_failure ?? "the agent connection is closed");
    }

    internal async Task<TStream> OpenAsync<TStream>(Request request, Func<uint, TStream> create, CancellationToken cancellationToken) where TStream : AgentStream
    {
        ThrowIfFailed();
        if (_streams.Count >= _options.MaxOpenStreams)
            throw new MoatException(ErrorKind.RateLimited, "too_many_operations", $"{_streams.Count} operations are already open on this sandbox (limit {_options.MaxOpenStreams})");
        uint id = Interlocked.Increment(ref _lastStreamId);
        var stream = create(id);
        stream.Initialize(this, new CreditWindow(_options.StreamWindow), new CreditWindow(_sendStreamWindow));
        _streams[id] = stream;
        try
        {
            await SendFrameAsync(FrameType.Request, FrameFlags.None, id, request, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            _streams.TryRemove(id, out _);
            throw;
        }
        return stream;
    }

    internal async ValueTask AbandonAsync(AgentStream stream)
    {
        if (!_streams.TryRemove(stream.Id, out _))
            return;
        try
        {
            await _writer.WriteAsync(FrameType.Cancel, FrameFlags.None, stream.Id, ReadOnlyMemory<byte>.Empty, _closing.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Closes the connection. Processes in the sandbox keep running.</summary>
    public async ValueTask DisposeAsync()
    {
        Fail(null);
        if (_readLoop is not null)
            await _readLoop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        if (_keepAlive is not null)
            await _keepAlive.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await _writer.DisposeAsync().ConfigureAwait(false);
        _closing.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Agent connection lost: {Reason}")]
    private static partial void LogConnectionLost(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "Unexpected failure in the agent reader")]
    private static partial void LogUnexpected(ILogger logger, Exception exception);
}
