using System.Buffers.Binary;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Moat.Core.Errors;

namespace Moat.Server.E2b.Connect;

/// <summary>Connect RPC status codes (connectrpc.com/docs/protocol#error-codes).</summary>
internal enum ConnectCode
{
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

/// <summary>An RPC failure as Connect reports it: a code and a message.</summary>
internal sealed class ConnectException(ConnectCode code, string message) : Exception(message)
{
    public ConnectCode Code { get; } = code;

    /// <summary>The Connect error for a Moat error.</summary>
    public static ConnectException From(MoatException ex) => new(ex.Code switch
    {
        "not_a_directory" or "is_a_directory" or "not_a_file" => ConnectCode.InvalidArgument,
        "already_exists" => ConnectCode.AlreadyExists,
        "sandbox_not_running" or "sandbox_unavailable" => ConnectCode.Unavailable,
        "no_space" => ConnectCode.ResourceExhausted,
        _ => ex.Kind switch
        {
            ErrorKind.InvalidArgument => ConnectCode.InvalidArgument,
            ErrorKind.Unauthenticated => ConnectCode.Unauthenticated,
            ErrorKind.PermissionDenied => ConnectCode.PermissionDenied,
            ErrorKind.NotFound => ConnectCode.NotFound,
            ErrorKind.Conflict => ConnectCode.FailedPrecondition,
            ErrorKind.TooLarge => ConnectCode.ResourceExhausted,
            ErrorKind.QuotaExceeded or ErrorKind.RateLimited => ConnectCode.ResourceExhausted,
            ErrorKind.Unavailable => ConnectCode.Unavailable,
            ErrorKind.Timeout => ConnectCode.DeadlineExceeded,
            _ => ConnectCode.Internal,
        },
    }, ex.Message);
}

/// <summary>
/// The Connect protocol with the JSON codec, as E2B's SDKs speak it over HTTP/1.1: unary calls are
/// a JSON body in and out (<c>application/json</c>, errors as a non-200 status with
/// <c>{code, message}</c>); streaming calls carry 5-byte enveloped JSON messages
/// (<c>application/connect+json</c>: flag byte, big-endian length) and end with an end-of-stream
/// envelope (flag 0x02) holding <c>{}</c> or <c>{"error": {...}}</c>.
/// </summary>
internal static class ConnectRpc
{
    public const string UnaryContentType = "application/json";
    public const string StreamContentType = "application/connect+json";
    private const byte EndStreamFlag = 0x02;
    private const byte CompressedFlag = 0x01;

    /// <summary>Largest request message accepted.</summary>
    public const int MaxMessageBytes = 8 << 20;

    public static string Name(ConnectCode code) => code switch
    {
        ConnectCode.Canceled => "canceled",
        ConnectCode.Unknown => "unknown",
        ConnectCode.InvalidArgument => "invalid_argument",
        ConnectCode.DeadlineExceeded => "deadline_exceeded",
        ConnectCode.NotFound => "not_found",
        ConnectCode.AlreadyExists => "already_exists",
        ConnectCode.PermissionDenied => "permission_denied",
        ConnectCode.ResourceExhausted => "resource_exhausted",
        ConnectCode.FailedPrecondition => "failed_precondition",
        ConnectCode.Aborted => "aborted",
        ConnectCode.OutOfRange => "out_of_range",
        ConnectCode.Unimplemented => "unimplemented",
        ConnectCode.Internal => "internal",
        ConnectCode.Unavailable => "unavailable",
        ConnectCode.DataLoss => "data_loss",
        ConnectCode.Unauthenticated => "unauthenticated",
        _ => "unknown",
    };

    public static int HttpStatus(ConnectCode code) => code switch
    {
        ConnectCode.Canceled => 499,
        ConnectCode.InvalidArgument or ConnectCode.FailedPrecondition or ConnectCode.OutOfRange => StatusCodes.Status400BadRequest,
        ConnectCode.DeadlineExceeded => StatusCodes.Status504GatewayTimeout,
        ConnectCode.NotFound => StatusCodes.Status404NotFound,
        ConnectCode.AlreadyExists or ConnectCode.Aborted => StatusCodes.Status409Conflict,
        ConnectCode.PermissionDenied => StatusCodes.Status403Forbidden,
        ConnectCode.ResourceExhausted => StatusCodes.Status429TooManyRequests,
        ConnectCode.Unimplemented => StatusCodes.Status501NotImplemented,
        ConnectCode.Unavailable => StatusCodes.Status503ServiceUnavailable,
        ConnectCode.Unauthenticated => StatusCodes.Status401Unauthorized,
        _ => StatusCodes.Status500InternalServerError,
    };

    /// <summary>Whether the request is a streaming call (by its content type).</summary>
    public static bool IsStreaming(HttpRequest request) =>
        request.ContentType?.StartsWith(StreamContentType, StringComparison.OrdinalIgnoreCase) == true;

    /// <summary>The deadline the client set (<c>Connect-Timeout-Ms</c>), if any.</summary>
    public static TimeSpan? Timeout(HttpRequest request)
    {
        var value = request.Headers["Connect-Timeout-Ms"].ToString();
        return long.TryParse(value, out long ms) && ms > 0 ? TimeSpan.FromMilliseconds(Math.Min(ms, (long)TimeSpan.FromDays(365).TotalMilliseconds)) : null;
    }

    /// <summary>The keepalive interval the client asked for (<c>Keepalive-Ping-Interval</c>, seconds), as envd reads it.</summary>
    public static TimeSpan KeepaliveInterval(HttpRequest request)
    {
        var value = request.Headers["Keepalive-Ping-Interval"].ToString();
        return int.TryParse(value, out int s) && s > 0 ? TimeSpan.FromSeconds(Math.Min(s, 3600)) : TimeSpan.FromSeconds(90);
    }

    /// <summary>Reads the request message of a unary call (the body) or of a server-streaming call (its one envelope).</summary>
    public static async Task<T> ReadRequestAsync<T>(HttpContext context, JsonTypeInfo<T> type) where T : new()
    {
        var request = context.Request;
        if (request.ContentLength is > MaxMessageBytes)
            throw new ConnectException(ConnectCode.ResourceExhausted, $"the request is {request.ContentLength} bytes; the limit is {MaxMessageBytes}");
        bool streaming = IsStreaming(request);
        if (!streaming && request.ContentType is { } ct && !ct.StartsWith(UnaryContentType, StringComparison.OrdinalIgnoreCase))
            throw new ConnectException(ConnectCode.InvalidArgument, $"send Content-Type {UnaryContentType} (unary) or {StreamContentType} (streaming), not {ct}");
        using var body = new MemoryStream();
        var buffer = new byte[16384];
        int n;
        while ((n = await request.Body.ReadAsync(buffer, context.RequestAborted).ConfigureAwait(false)) > 0)
        {
            if (body.Length + n > MaxMessageBytes + 5)
                throw new ConnectException(ConnectCode.ResourceExhausted, $"the request exceeds {MaxMessageBytes} bytes");
            body.Write(buffer, 0, n);
        }
        ReadOnlyMemory<byte> message = body.GetBuffer().AsMemory(0, (int)body.Length);
        if (streaming)
        {
            if (message.Length < 5)
                throw new ConnectException(ConnectCode.InvalidArgument, "the streaming request has no message envelope");
            byte flags = message.Span[0];
            int length = BinaryPrimitives.ReadInt32BigEndian(message.Span[1..5]);
            if ((flags & CompressedFlag) != 0)
                throw new ConnectException(ConnectCode.Unimplemented, "compressed messages are not supported");
            if (length < 0 || length > message.Length - 5)
                throw new ConnectException(ConnectCode.InvalidArgument, "the request envelope is truncated");
            message = message.Slice(5, length);
        }
        return Parse(message, type);
    }

    /// <summary>Parses one JSON message; an empty one is the default message.</summary>
    public static T Parse<T>(ReadOnlyMemory<byte> message, JsonTypeInfo<T> type) where T : new()
    {
        if (message.IsEmpty)
            return new T();
        try
        {
            return JsonSerializer.Deserialize(message.Span, type) ?? new T();
        }
        catch (JsonException ex)
        {
            throw new ConnectException(ConnectCode.InvalidArgument, $"the request message is not valid JSON for this method: {ex.Message.Split(" Path:")[0]}");
        }
    }

    /// <summary>Reads the envelopes of a client-streaming request as they arrive.</summary>
    public static async IAsyncEnumerable<ReadOnlyMemory<byte>> ReadEnvelopesAsync(HttpContext context)
    {
        var body = context.Request.Body;
        var header = new byte[5];
        while (true)
        {
            int got = 0;
            while (got < 5)
            {
                int n = await body.ReadAsync(header.AsMemory(got), context.RequestAborted).ConfigureAwait(false);
                if (n == 0)
                {
                    if (got == 0)
                        yield break;
                    throw new ConnectException(ConnectCode.InvalidArgument, "the request ended inside an envelope header");
                }
                got += n;
            }
            int length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
            if (length < 0 || length > MaxMessageBytes)
                throw new ConnectException(ConnectCode.ResourceExhausted, $"a request message is {length} bytes; the limit is {MaxMessageBytes}");
            var data = new byte[length];
            if (await body.ReadAtLeastAsync(data, length, throwOnEndOfStream: false, context.RequestAborted).ConfigureAwait(false) < length)
                throw new ConnectException(ConnectCode.InvalidArgument, $"the request ended inside a {length}-byte message");
            if ((header[0] & EndStreamFlag) != 0)
                yield break;
            yield return data;
        }
    }

    /// <summary>Answers a unary call.</summary>
    public static async Task WriteUnaryAsync<T>(HttpContext context, T message, JsonTypeInfo<T> type)
    {
        context.Response.StatusCode = StatusCodes.Status200OK;
        context.Response.ContentType = UnaryContentType;
        var bytes = JsonSerializer.SerializeToUtf8Bytes(message, type);
        context.Response.ContentLength = bytes.Length;
        await context.Response.Body.WriteAsync(bytes, context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>Fails a unary call (status by code, <c>{code, message}</c> body).</summary>
    public static async Task WriteUnaryErrorAsync(HttpContext context, ConnectException error)
    {
        if (context.Response.HasStarted)
            return;
        context.Response.StatusCode = HttpStatus(error.Code);
        context.Response.ContentType = UnaryContentType;
        await context.Response.Body.WriteAsync(ErrorJson(error), context.RequestAborted).ConfigureAwait(false);
    }

    private static byte[] ErrorJson(ConnectException error)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("code", Name(error.Code));
            json.WriteString("message", error.Message);
            json.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary>Starts the response of a streaming call.</summary>
    public static ServerStream OpenStream(HttpContext context) => new(context);

    /// <summary>
    /// The response side of a streaming call: enveloped messages, written one at a time (a
    /// keepalive and an event never interleave), and exactly one end-of-stream envelope.
    /// </summary>
    internal sealed class ServerStream(HttpContext context)
    {
        private readonly SemaphoreSlim _write = new(1, 1);
        private bool _started;
        private bool _ended;

        /// <summary>When the last message went out (keepalives fill long silences).</summary>
        public long LastWriteTicks { get; private set; } = Environment.TickCount64;

        private void Start()
        {
            if (_started)
                return;
            _started = true;
            var response = context.Response;
            response.StatusCode = StatusCodes.Status200OK;
            response.ContentType = StreamContentType;
            response.Headers.CacheControl = "no-store";
            context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        }

        /// <summary>Sends one message.</summary>
        public Task WriteAsync<T>(T message, JsonTypeInfo<T> type, CancellationToken cancellationToken) =>
            WriteEnvelopeAsync(0, JsonSerializer.SerializeToUtf8Bytes(message, type), cancellationToken);

        /// <summary>Ends the stream, successfully or with an error. Later calls do nothing.</summary>
        public async Task EndAsync(ConnectException? error)
        {
            if (_ended)
                return;
            byte[] payload;
            if (error is null)
                payload = "{}"u8.ToArray();
            else
            {
                using var buffer = new MemoryStream();
                buffer.Write("{\"error\":"u8);
                buffer.Write(ErrorJson(error));
                buffer.Write("}"u8);
                payload = buffer.ToArray();
            }
            try
            {
                await WriteEnvelopeAsync(EndStreamFlag, payload, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException)
            {
                // The client is gone; nobody to tell.
            }
        }

        private async Task WriteEnvelopeAsync(byte flags, byte[] payload, CancellationToken cancellationToken)
        {
            await _write.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (_ended)
                    return;
                if (flags == EndStreamFlag)
                    _ended = true;
                Start();
                var envelope = new byte[5 + payload.Length];
                envelope[0] = flags;
                BinaryPrimitives.WriteInt32BigEndian(envelope.AsSpan(1), payload.Length);
                payload.CopyTo(envelope, 5);
                var body = context.Response.Body;
                await body.WriteAsync(envelope, cancellationToken).ConfigureAwait(false);
                await body.FlushAsync(cancellationToken).ConfigureAwait(false);
                LastWriteTicks = Environment.TickCount64;
            }
            finally
            {
                _write.Release();
            }
        }
    }
}
