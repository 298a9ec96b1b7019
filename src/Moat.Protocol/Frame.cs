using System.Buffers.Binary;

namespace Moat.Protocol;

/// <summary>Kinds of frame on the agent channel.</summary>
/// <remarks>
/// Values below 0x80 must be understood by the receiver. A frame whose flags carry
/// <see cref="FrameFlags.Ignorable"/> may be dropped by a receiver that does not know its type,
/// which is how a newer peer adds optional frames without breaking an older one.
/// </remarks>
public enum FrameType : byte
{
    /// <summary>Host → agent, stream 0: <c>Hello</c> message.</summary>
    Hello = 0x01,
    /// <summary>Agent → host, stream 0: <c>HelloAck</c> message.</summary>
    HelloAck = 0x02,
    /// <summary>Either side, stream 0: 8 opaque bytes to be echoed in a <see cref="Pong"/>.</summary>
    Ping = 0x03,
    /// <summary>Either side, stream 0: the bytes of the <see cref="Ping"/> being answered.</summary>
    Pong = 0x04,
    /// <summary>Either side, stream 0: <c>GoAway</c>; the sender closes the connection after it.</summary>
    GoAway = 0x05,
    /// <summary>Host → agent: <c>Request</c>; opens the stream.</summary>
    Request = 0x10,
    /// <summary>Agent → host: <c>Response</c>; <see cref="FrameFlags.Final"/> ends the stream.</summary>
    Response = 0x11,
    /// <summary>Host → agent: <c>StreamControl</c> for an open stream.</summary>
    Control = 0x12,
    /// <summary>Either side: a 4-byte credit increment; stream 0 is the connection window.</summary>
    Window = 0x13,
    /// <summary>Host → agent: bytes for the process's stdin. Final closes stdin.</summary>
    Stdin = 0x20,
    /// <summary>Agent → host: process stdout (or terminal output). Final marks EOF.</summary>
    Stdout = 0x21,
    /// <summary>Agent → host: process stderr. Final marks EOF.</summary>
    Stderr = 0x22,
    /// <summary>Either side: file contents of a read or write. Final marks the end.</summary>
    FileData = 0x23,
    /// <summary>Host → agent: the host abandons the stream; the agent stops sending on it.</summary>
    Cancel = 0x24,
}

/// <summary>Frame flags.</summary>
[Flags]
public enum FrameFlags : byte
{
    /// <summary>No flags.</summary>
    None = 0,
    /// <summary>Last frame of its kind on the stream (end of a response stream, EOF of a data channel).</summary>
    Final = 0x01,
    /// <summary>A receiver that does not know the frame type may drop the frame.</summary>
    Ignorable = 0x80,
}

/// <summary>The fixed 12-byte header in front of every frame.</summary>
/// <remarks>
/// Layout (little-endian): <c>u32 length</c> (bytes that follow the length field: 8 + payload),
/// <c>u8 type</c>, <c>u8 flags</c>, <c>u16 reserved (0)</c>, <c>u32 stream</c>.
/// </remarks>
public readonly record struct FrameHeader(FrameType Type, FrameFlags Flags, uint StreamId, int PayloadLength)
{
    /// <summary>Size of the encoded header in bytes.</summary>
    public const int Size = 12;

    /// <summary>Whether the frame ends its stream or data channel.</summary>
    public bool IsFinal => (Flags & FrameFlags.Final) != 0;

    /// <summary>Writes the header into <paramref name="destination"/> (at least <see cref="Size"/> bytes).</summary>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, (uint)(PayloadLength + 8));
        destination[4] = (byte)Type;
        destination[5] = (byte)Flags;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[6..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], StreamId);
    }

    /// <summary>
    /// Parses and validates a header. Nothing in it is trusted: the length is checked against
    /// <paramref name="maxPayload"/>, reserved bits must be zero, and the type must be known unless
    /// the frame is marked ignorable.
    /// </summary>
    public static FrameHeader Parse(ReadOnlySpan<byte> source, int maxPayload)
    {
        if (source.Length < Size)
            throw new ProtocolException("truncated_header", $"frame header needs {Size} bytes, got {source.Length}");
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(source);
        if (length < 8)
            throw new ProtocolException("bad_length", $"frame length {length} is shorter than the header");
        if (length - 8 > (uint)maxPayload)
            throw new ProtocolException("frame_too_large", $"frame payload of {length - 8} bytes exceeds the limit of {maxPayload}");
        var type = (FrameType)source[4];
        var flags = (FrameFlags)source[5];
        if ((flags & ~(FrameFlags.Final | FrameFlags.Ignorable)) != 0)
            throw new ProtocolException("bad_flags", $"unknown frame flags 0x{(byte)flags:x2}");
        if (BinaryPrimitives.ReadUInt16LittleEndian(source[6..]) != 0)
            throw new ProtocolException("bad_reserved", "reserved header bits are not zero");
        uint stream = BinaryPrimitives.ReadUInt32LittleEndian(source[8..]);
        var header = new FrameHeader(type, flags, stream, (int)(length - 8));
        if (!Enum.IsDefined(type) && (flags & FrameFlags.Ignorable) == 0)
            throw new ProtocolException("unknown_frame", $"unknown frame type 0x{(byte)type:x2}");
        return header;
    }
}

/// <summary>A frame with its payload. The payload may be borrowed from a pool: see <see cref="FrameReader"/>.</summary>
public readonly record struct Frame(FrameHeader Header, ReadOnlyMemory<byte> Payload)
{
    /// <summary>Frame type.</summary>
    public FrameType Type => Header.Type;
    /// <summary>Stream id (0 for connection-level frames).</summary>
    public uint StreamId => Header.StreamId;
    /// <summary>Whether the frame is final.</summary>
    public bool IsFinal => Header.IsFinal;
}

/// <summary>Limits and versions both sides agree on.</summary>
public static class ProtocolConstants
{
    /// <summary>Version spoken by this build. A peer with another major version is refused.</summary>
    public const uint Version = 1;

    /// <summary>Default largest payload of one frame (1 MiB): big enough for a batch of directory entries.</summary>
    public const int DefaultMaxFramePayload = 1 << 20;

    /// <summary>Largest data chunk a sender puts in one data frame.</summary>
    public const int DataChunk = 64 * 1024;

    /// <summary>Default per-stream flow-control window.</summary>
    public const int DefaultStreamWindow = 256 * 1024;

    /// <summary>Default connection-wide flow-control window.</summary>
    public const int DefaultConnectionWindow = 4 * 1024 * 1024;

    /// <summary>The size of a <see cref="FrameType.Window"/> payload.</summary>
    public const int WindowPayloadSize = 4;

    /// <summary>The size of a <see cref="FrameType.Ping"/> or <see cref="FrameType.Pong"/> payload.</summary>
    public const int PingPayloadSize = 8;

    /// <summary>Largest allowed credit window, to keep arithmetic in range.</summary>
    public const int MaxWindow = 1 << 30;
}
