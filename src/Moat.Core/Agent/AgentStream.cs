using System.Threading.Channels;
using Moat.Core.Errors;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Core.Agent;

/// <summary>A chunk of data the agent sent on a stream.</summary>
/// <param name="Channel">Stdout, Stderr or FileData.</param>
/// <param name="Data">The bytes (may be empty on the final chunk).</param>
/// <param name="IsFinal">This channel has ended.</param>
public readonly record struct StreamChunk(FrameType Channel, byte[] Data, bool IsFinal);

/// <summary>
/// One multiplexed stream on an agent connection: the responses and data the agent sends for one
/// request, queued in arrival order. The queue is bounded by the flow-control window, not by code
/// here: the agent cannot have more than a window of unconsumed data outstanding.
/// </summary>
public abstract class AgentStream
{
    private readonly Channel<object> _inbox = Channel.CreateUnbounded<object>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly CancellationTokenSource _aborted = new();
    private AgentClient? _client;
    private int _pendingGrant;

    /// <summary>Creates a stream with the id the client assigned.</summary>
    protected AgentStream(uint id) => Id = id;

    /// <summary>The stream id.</summary>
    public uint Id { get; }

    internal CreditWindow ReceiveWindow { get; private set; } = new(0);
    internal CreditWindow SendWindow { get; private set; } = new(0);
    internal CancellationToken Aborted => _aborted.Token;

    /// <summary>The connection this stream belongs to.</summary>
    protected AgentClient Client => _client ?? throw new InvalidOperationException("stream is not open");

    internal void Initialize(AgentClient client, CreditWindow receive, CreditWindow send)
    {
        _client = client;
        ReceiveWindow = receive;
        SendWindow = send;
    }

    internal int AddPendingGrant(int bytes, int threshold)
    {
        int pending = Interlocked.Add(ref _pendingGrant, bytes);
        return pending >= threshold ? Interlocked.Exchange(ref _pendingGrant, 0) : 0;
    }

    internal void OnResponse(Response response, bool final)
    {
        _inbox.Writer.TryWrite(response);
        if (final)
        {
            _inbox.Writer.TryComplete();
            // The agent has finished: nothing more may be sent on this stream.
            SendWindow.Close();
            _aborted.Cancel();
        }
    }

    internal void OnData(FrameType channel, byte[] data, bool final) => _inbox.Writer.TryWrite(new StreamChunk(channel, data, final));

    internal void OnConnectionLost(MoatException error)
    {
        SendWindow.Close();
        _aborted.Cancel();
        _inbox.Writer.TryComplete(error);
    }

    /// <summary>
    /// Reads the next item: a <see cref="Response"/> or a <see cref="StreamChunk"/>. Returns null
    /// when the stream ended normally. Data credit is returned to the agent as chunks are read.
    /// </summary>
    protected async ValueTask<object?> NextAsync(CancellationToken cancellationToken)
    {
        try
        {
            if (!await _inbox.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
                return null;
        }
        catch (ChannelClosedException ex) when (ex.InnerException is MoatException inner)
        {
            throw inner;
        }
        catch (MoatException)
        {
            throw;
        }
        if (!_inbox.Reader.TryRead(out var item))
            return null;
        if (item is StreamChunk chunk && chunk.Data.Length > 0)
            await Client.ConsumedAsync(this, chunk.Data.Length).ConfigureAwait(false);
        return item;
    }

    /// <summary>Reads items until the final response and returns it, throwing on an error reply.</summary>
    protected async Task<Response> FinalResponseAsync(CancellationToken cancellationToken)
    {
        Response? last = null;
        while (await NextAsync(cancellationToken).ConfigureAwait(false) is { } item)
        {
            if (item is Response response)
                last = response;
        }
        return ThrowIfError(last ?? throw new AgentUnavailableException("the agent ended a stream without an answer"));
    }

    /// <summary>Turns an <see cref="ErrorReply"/> into an <see cref="AgentOperationException"/>.</summary>
    protected static Response ThrowIfError(Response response)
    {
        if (response.KindCase == Response.KindOneofCase.Error)
        {
            var error = response.Error;
            throw new AgentOperationException(Sanitize(error.Code, 64, "internal"), Sanitize(error.Message, 1024, "the agent reported an error"), error.Errno);
        }
        return response;
    }

    /// <summary>Bounds a string the agent sent before it goes anywhere near a log or a client.</summary>
    protected static string Sanitize(string value, int max, string fallback)
    {
        if (string.IsNullOrEmpty(value))
            return fallback;
        var clean = new string(value.Where(c => !char.IsControl(c) || c == '\n').Take(max).ToArray());
        return clean.Length == 0 ? fallback : clean;
    }

    /// <summary>Tells the agent the host no longer wants this stream.</summary>
    protected ValueTask AbandonAsync() => Client.AbandonAsync(this);
}
