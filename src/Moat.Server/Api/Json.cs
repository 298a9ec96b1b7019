using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using Moat.Core.Errors;

namespace Moat.Server.Api;

/// <summary>Reading request bodies with one, explicit error for every way JSON can be wrong.</summary>
internal static class Json
{
    /// <summary>Largest JSON body the API reads (file uploads are raw bytes, not JSON).</summary>
    public const long MaxJsonBody = 8 << 20;

    /// <summary>Reads the body as <typeparamref name="T"/>; an empty body gives <paramref name="empty"/>.</summary>
    public static async Task<T> ReadAsync<T>(HttpContext context, JsonTypeInfo<T> type, T empty)
    {
        var request = context.Request;
        if (request.ContentLength is > MaxJsonBody)
            throw new MoatException(ErrorKind.TooLarge, "body_too_large", $"the JSON body is {request.ContentLength} bytes; the limit is {MaxJsonBody}");
        if (request.ContentLength == 0)
            return empty;
        if (request.ContentType is { } contentType && !contentType.StartsWith("application/json", StringComparison.OrdinalIgnoreCase) && !contentType.Contains("+json", StringComparison.OrdinalIgnoreCase))
            throw new MoatException(ErrorKind.InvalidArgument, "unsupported_media_type", $"send JSON with Content-Type: application/json, not {contentType}");
        using var buffer = new MemoryStream();
        var body = request.Body;
        var chunk = new byte[16384];
        int n;
        while ((n = await body.ReadAsync(chunk, context.RequestAborted).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + n > MaxJsonBody)
                throw new MoatException(ErrorKind.TooLarge, "body_too_large", $"the JSON body exceeds {MaxJsonBody} bytes");
            buffer.Write(chunk, 0, n);
        }
        if (buffer.Length == 0)
            return empty;
        try
        {
            return JsonSerializer.Deserialize(buffer.GetBuffer().AsSpan(0, (int)buffer.Length), type)
                ?? throw MoatException.Invalid("invalid_json", "the body is JSON null; send an object");
        }
        catch (JsonException ex)
        {
            string where = ex.Path is { Length: > 0 } path ? $" at {path}" : "";
            throw MoatException.Invalid("invalid_json", $"the body is not valid for this request{where}: {ex.Message.Split(" Path:")[0]}");
        }
    }
}
