using System.Buffers.Binary;
using Google.Protobuf;
using Moat.Protocol.Messages;

namespace Moat.Protocol;

/// <summary>Validated decoding of frame payloads. Every method throws <see cref="ProtocolException"/> on bad input.</summary>
public static class FrameDecoding
{
    /// <summary>Parses a protobuf payload, turning any parser failure into a <see cref="ProtocolException"/>.</summary>
    public static T Parse<T>(MessageParser<T> parser, ReadOnlyMemory<byte> payload) where T : IMessage<T>
    {
        try
        {
            return parser.ParseFrom(payload.Span);
        }
        catch (InvalidProtocolBufferException ex)
        {
            throw new ProtocolException("bad_message", $"malformed {typeof(T).Name}: {ex.Message}");
        }
    }

    /// <summary>Reads a credit increment from a Window frame; it must be positive and below <see cref="ProtocolConstants.MaxWindow"/>.</summary>
    public static int WindowIncrement(ReadOnlySpan<byte> payload)
    {
        if (payload.Length != ProtocolConstants.WindowPayloadSize)
            throw new ProtocolException("bad_window", $"window frame payload must be {ProtocolConstants.WindowPayloadSize} bytes, got {payload.Length}");
        int increment = BinaryPrimitives.ReadInt32LittleEndian(payload);
        if (increment <= 0 || increment > ProtocolConstants.MaxWindow)
            throw new ProtocolException("bad_window", $"window increment {increment} is out of range");
        return increment;
    }

    /// <summary>Parses a Request and checks that it names an operation.</summary>
    public static Request Request(ReadOnlyMemory<byte> payload)
    {
        var request = Parse(Messages.Request.Parser, payload);
        if (request.KindCase == Messages.Request.KindOneofCase.None)
            throw new ProtocolException("bad_message", "request names no operation");
        return request;
    }

    /// <summary>Parses a Response and checks that it carries something.</summary>
    public static Response Response(ReadOnlyMemory<byte> payload)
    {
        var response = Parse(Messages.Response.Parser, payload);
        if (response.KindCase == Messages.Response.KindOneofCase.None)
            throw new ProtocolException("bad_message", "response carries nothing");
        return response;
    }
}
