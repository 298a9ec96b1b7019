using System.IO.Compression;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Net.Http.Headers;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.Errors;

namespace Moat.Server.E2b.Envd;

/// <summary>
/// envd's REST routes: <c>GET /files</c> (download), <c>POST /files</c> (upload, multipart or raw,
/// parents created, replacing), <c>GET /health</c>, <c>GET /envs</c>. Errors are envd's
/// <c>{code, message}</c> with the HTTP status as the code.
/// </summary>
internal sealed class EnvdRest(SandboxManager manager)
{
    public async Task HandleAsync(HttpContext context, SandboxTarget target, string path)
    {
        try
        {
            switch (context.Request.Method, path)
            {
                case ("GET", "/health"):
                    context.Response.StatusCode = StatusCodes.Status204NoContent;
                    return;
                case ("GET", "/files"):
                    await DownloadAsync(context, target).ConfigureAwait(false);
                    return;
                case ("POST", "/files"):
                    await UploadAsync(context, target).ConfigureAwait(false);
                    return;
                case ("GET", "/metrics"):
                    await MetricsAsync(context, target).ConfigureAwait(false);
                    return;
                case ("GET", "/envs"):
                    await WriteJsonAsync(context, StatusCodes.Status200OK, new Dictionary<string, string>(target.Sandbox.Spec.Env), E2bJson.Default.DictionaryStringString).ConfigureAwait(false);
                    return;
                default:
                    await WriteErrorAsync(context, StatusCodes.Status404NotFound, $"no envd route for {context.Request.Method} {path}").ConfigureAwait(false);
                    return;
            }
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
        }
        catch (MoatException ex)
        {
            await WriteErrorAsync(context, StatusOf(ex), ex.Message).ConfigureAwait(false);
        }
        catch (BadHttpRequestException ex)
        {
            await WriteErrorAsync(context, ex.StatusCode, ex.Message).ConfigureAwait(false);
        }
        catch (InvalidDataException ex)
        {
            await WriteErrorAsync(context, StatusCodes.Status400BadRequest, $"the upload is malformed: {ex.Message}").ConfigureAwait(false);
        }
    }

    /// <summary>envd's statuses: a full disk is 507, a path that is a directory 400.</summary>
    private static int StatusOf(MoatException ex) => ex.Code switch
    {
        "no_space" => StatusCodes.Status507InsufficientStorage,
        "is_a_directory" or "not_a_file" or "not_a_directory" => StatusCodes.Status400BadRequest,
        "sandbox_not_running" or "sandbox_unavailable" => StatusCodes.Status502BadGateway,
        _ => ErrorWriter.StatusOf(ex.Kind),
    };

    /// <summary>The sandbox's resource use now, from the runtime's readings (envd's <c>Metrics</c>).</summary>
    private async Task MetricsAsync(HttpContext context, SandboxTarget target)
    {
        var record = await manager.GetAsync(target.Sandbox.Id, target.Sandbox.TenantId, context.RequestAborted).ConfigureAwait(false);
        var reading = await E2bMetrics.ReadAsync(manager, record, context.RequestAborted).ConfigureAwait(false)
            ?? throw new MoatException(ErrorKind.Unavailable, "sandbox_unavailable", $"sandbox {record.Id} has no resource readings now");
        var body = new EnvdMetrics
        {
            Ts = reading.At.ToUnixTimeSeconds(),
            CpuCount = reading.CpuCount,
            CpuUsedPct = reading.CpuUsedPct,
            MemTotal = reading.MemTotal,
            MemUsed = reading.MemUsed,
            MemTotalMib = reading.MemTotal >> 20,
            MemUsedMib = reading.MemUsed >> 20,
            DiskUsed = reading.DiskUsed,
            DiskTotal = reading.DiskTotal,
        };
        await WriteJsonAsync(context, StatusCodes.Status200OK, body, E2bJson.Default.EnvdMetrics).ConfigureAwait(false);
    }

    private async Task DownloadAsync(HttpContext context, SandboxTarget target)
    {
        var path = context.Request.Query["path"].ToString();
        if (string.IsNullOrEmpty(path))
            throw MoatException.Invalid("invalid_path", "the path query parameter is required");
        await using var file = await manager.OpenFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, path, target.User, context.RequestAborted).ConfigureAwait(false);
        var response = context.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "application/octet-stream";
        response.Headers.ContentDisposition = new ContentDispositionHeaderValue("inline") { FileNameStar = file.Info.Name }.ToString();
        response.Headers.Vary = "Accept-Encoding";
        response.ContentLength = (long)file.Info.Size;
        await file.CopyToAsync(response.Body, context.RequestAborted).ConfigureAwait(false);
    }

    private async Task UploadAsync(HttpContext context, SandboxTarget target)
    {
        var request = context.Request;
        if (request.Headers.Keys.Any(k => k.StartsWith("X-Metadata-", StringComparison.OrdinalIgnoreCase)))
            throw MoatException.Invalid("unsupported", "file metadata (X-Metadata-* headers) is not supported by Moat");
        // File bodies may be much larger than JSON ones: lift Kestrel's limit to the file limit.
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit)
            limit.MaxRequestBodySize = manager.Options.MaxFileWriteBytes;
        var queryPath = request.Query["path"].ToString();
        var written = new List<UploadedEntry>();
        if (MediaTypeHeaderValue.TryParse(request.ContentType, out var type) && type.MediaType.Equals("multipart/form-data", StringComparison.OrdinalIgnoreCase))
        {
            var boundary = HeaderUtilities.RemoveQuotes(type.Boundary).Value;
            if (string.IsNullOrEmpty(boundary))
                throw MoatException.Invalid("invalid_upload", "the multipart body has no boundary");
            var reader = new MultipartReader(boundary, request.Body) { BodyLengthLimit = manager.Options.MaxFileWriteBytes };
            MultipartSection? section;
            while ((section = await reader.ReadNextSectionAsync(context.RequestAborted).ConfigureAwait(false)) is not null)
            {
                if (!ContentDispositionHeaderValue.TryParse(section.ContentDisposition, out var disposition) || disposition.Name.Value != "file")
                    continue;
                var path = !string.IsNullOrEmpty(queryPath) ? queryPath : (disposition.FileNameStar.Value ?? disposition.FileName.Value ?? "");
                if (string.IsNullOrEmpty(path))
                    throw MoatException.Invalid("invalid_path", "give the path query parameter or a file name in the upload");
                written.Add(await WriteAsync(target, path, section.Body, context.RequestAborted).ConfigureAwait(false));
            }
        }
        else
        {
            if (string.IsNullOrEmpty(queryPath))
                throw MoatException.Invalid("invalid_path", "path query parameter is required for raw body upload");
            var body = request.Body;
            if (string.Equals(request.Headers.ContentEncoding, "gzip", StringComparison.OrdinalIgnoreCase))
                body = new GZipStream(body, CompressionMode.Decompress, leaveOpen: true);
            await using (body.ConfigureAwait(false))
                written.Add(await WriteAsync(target, queryPath, body, context.RequestAborted).ConfigureAwait(false));
        }
        if (written.Count == 0)
            throw MoatException.Invalid("invalid_upload", "the upload has no part named \"file\"");
        await WriteJsonAsync(context, StatusCodes.Status200OK, written, E2bJson.Default.ListUploadedEntry).ConfigureAwait(false);
    }

    private async Task<UploadedEntry> WriteAsync(SandboxTarget target, string path, Stream content, CancellationToken cancellationToken)
    {
        var info = await manager.WriteFileAsync(target.Sandbox.Id, target.Sandbox.TenantId, path, content, target.User, 0, cancellationToken).ConfigureAwait(false);
        return new UploadedEntry { Path = info.Path, Name = info.Name, Type = "file" };
    }

    private static async Task WriteJsonAsync<T>(HttpContext context, int status, T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        await JsonSerializer.SerializeAsync(context.Response.Body, value, type, context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>envd's (and the code interpreter's) error shape.</summary>
    public static async Task WriteErrorAsync(HttpContext context, int status, string message)
    {
        if (context.Response.HasStarted)
            return;
        await WriteJsonAsync(context, status, new EnvdError(status, message), E2bJson.Default.EnvdError).ConfigureAwait(false);
    }
}
