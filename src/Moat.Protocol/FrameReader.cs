using System.Buffers;

namespace Moat.Protocol;

/// <summary>
/// Reads frames from a stream, one at a time. Lengths are validated before any memory is
/// allocated for a payload, and payload buffers come from a pool.
/// </summary>
/// <remarks>Not thread-safe: one reader loop per connection.</remarks>
public sealed class FrameReader(Stream stream, int maxPayload = ProtocolConstants.DefaultMaxFramePayload)
{
    private readonly byte[] _header = new byte[FrameHeader.Size];
    private byte[]? _rented;

    /// <summary>Largest payload this reader accepts.</summary>
    public int MaxPayload { get; set; } = maxPayload;

    /// <summary>
    /// How long the rest of a frame may take once its header has arrived. A peer that starts a
    /// frame and then stalls fails the read instead of holding the reader forever.
    /// </summary>
    public TimeSpan PayloadTimeout { get; set; } = Timeout.InfiniteTimeSpan;

    /// <summary>
    /// Reads the next frame. Returns <c>null</c> on a clean end of stream between frames.
    /// The returned payload is valid only until the next call.
    /// </summary>
    /// <exception cref="ProtocolException">The bytes are not a valid frame, or the stream ended inside one.</exception>
    public async ValueTask<Frame?> ReadAsync(CancellationToken cancellationToken = default)
    {
        int got = await ReadAtLeastAsync(_header, cancellationToken).ConfigureAwait(false);
        if (got == 0)
            return null;
        if (got < FrameHeader.Size)
            throw new ProtocolException("truncated_header", "the channel closed inside a frame header");
        var header = FrameHeader.Parse(_header, MaxPayload);
        if (header.PayloadLength == 0)
            return new Frame(header, ReadOnlyMemory<byte>.Empty);

        ReturnBuffer();
        _rented = ArrayPool<byte>.Shared.Rent(header.PayloadLength);
        var payload = _rented.AsMemory(0, header.PayloadLength);
        using var stall = PayloadTimeout == Timeout.InfiniteTimeSpan ? null : CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        stall?.CancelAfter(PayloadTimeout);
        int read;
        try
        {
            read = await ReadAtLeastAsync(payload, stall?.Token ?? cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stall is not null && stall.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new ProtocolException("frame_stalled", $"a {header.PayloadLength}-byte frame did not arrive within {PayloadTimeout.TotalSeconds:0.#} s");
        }
        if (read < header.PayloadLength)
            throw new ProtocolException("truncated_payload", "the channel closed inside a frame payload");
        return new Frame(header, payload);
    }

    /// <summary>Gives the last payload buffer back to the pool.</summary>
    public void ReturnBuffer()
    {
        if (_rented is null)
            return;
        ArrayPool<byte>.Shared.Return(_rented);
        _rented = null;
    }

    private async ValueTask<int> ReadAtLeastAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = await stream.ReadAsync(buffer[total..], cancellationToken).ConfigureAwait(false);
            if (n == 0)
                break;
            total += n;
        }
        return total;
    }
}
