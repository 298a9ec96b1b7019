using System.Buffers;
using System.Buffers.Binary;
using Google.Protobuf;

namespace Moat.Protocol;

/// <summary>
/// Writes frames to a stream. Safe to call from many tasks at once: each frame is written whole,
/// under a lock, as one write. A caller's cancellation stops it waiting for its turn, never in the
/// middle of a frame: once a frame has started it is finished, unless <paramref name="channelClosing"/>
/// (the channel going away) interrupts it, after which nothing more may be written.
/// </summary>
public sealed class FrameWriter(Stream stream, CancellationToken channelClosing = default) : IAsyncDisposable
{
    private readonly SemaphoreSlim _lock = new(1, 1);
    private bool _broken;

    /// <summary>Writes a frame whose payload is raw bytes.</summary>
    public async ValueTask WriteAsync(FrameType type, FrameFlags flags, uint streamId, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken = default)
    {
        int total = FrameHeader.Size + payload.Length;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(total);
        try
        {
            new FrameHeader(type, flags, streamId, payload.Length).Write(buffer);
            payload.Span.CopyTo(buffer.AsSpan(FrameHeader.Size));
            await WriteRawAsync(buffer.AsMemory(0, total), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Writes a frame whose payload is a protobuf message.</summary>
    public async ValueTask WriteAsync(FrameType type, FrameFlags flags, uint streamId, IMessage message, CancellationToken cancellationToken = default)
    {
        int size = message.CalculateSize();
        int total = FrameHeader.Size + size;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(total);
        try
        {
            new FrameHeader(type, flags, streamId, size).Write(buffer);
            message.WriteTo(buffer.AsSpan(FrameHeader.Size, size));
            await WriteRawAsync(buffer.AsMemory(0, total), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Grants the peer <paramref name="increment"/> more bytes of credit on a stream (0: the connection).</summary>
    public ValueTask WriteWindowAsync(uint streamId, int increment, CancellationToken cancellationToken = default)
    {
        Span<byte> payload = stackalloc byte[ProtocolConstants.WindowPayloadSize];
        BinaryPrimitives.WriteInt32LittleEndian(payload, increment);
        return WriteAsync(FrameType.Window, FrameFlags.None, streamId, payload.ToArray(), cancellationToken);
    }

    private async ValueTask WriteRawAsync(ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // A write cancelled half-way leaves a partial frame on the wire; nothing may follow it.
            if (_broken)
                throw new IOException("the agent channel is broken by an earlier interrupted write");
            _broken = true;
            await stream.WriteAsync(bytes, channelClosing).ConfigureAwait(false);
            _broken = false;
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        _lock.Dispose();
        return ValueTask.CompletedTask;
    }
}
