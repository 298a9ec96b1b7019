using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>Files of a sandbox, read and written by its agent from inside.</summary>
internal static class FileEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        var files = app.MapGroup("/v1/sandboxes/{id}/files").WithTags("files");
        files.MapGet("", ReadAsync).WithName("ReadFile");
        files.MapPut("", WriteAsync).WithName("WriteFile");
        files.MapDelete("", RemoveAsync).WithName("RemoveFile");
        files.MapGet("/list", ListAsync).WithName("ListFiles");
        files.MapGet("/stat", StatAsync).WithName("StatFile");
        files.MapPost("/mkdir", MakeDirAsync).WithName("MakeDirectory");
        files.MapPost("/rename", RenameAsync).WithName("RenameFile");
    }

    private static string Required(string? path) => string.IsNullOrEmpty(path) ? throw MoatException.Invalid("invalid_path", "the path query parameter is required") : path;

    private static async Task ReadAsync(HttpContext context, SandboxManager manager, string id, string? path, string? user)
    {
        var caller = context.Caller();
        await using var file = await manager.OpenFileAsync(id, caller.TenantId, Required(path), user, context.RequestAborted).ConfigureAwait(false);
        context.Response.ContentType = "application/octet-stream";
        context.Response.Headers.ContentLength = null;
        context.Response.Headers["X-Moat-File-Size"] = file.Info.Size.ToString();
        await file.CopyToAsync(context.Response.Body, context.RequestAborted).ConfigureAwait(false);
    }

    private static async Task<IResult> WriteAsync(HttpContext context, SandboxManager manager, string id, string? path, string? user, string? mode)
    {
        var caller = context.Writer();
        uint bits = 0;
        if (!string.IsNullOrEmpty(mode))
        {
            try
            {
                bits = Convert.ToUInt32(mode, 8);
            }
            catch (Exception ex) when (ex is FormatException or OverflowException or ArgumentException)
            {
                throw MoatException.Invalid("invalid_mode", $"mode must be octal permission bits like 0644, got '{mode}'");
            }
        }
        // File bodies may be much larger than JSON ones: lift Kestrel's limit to the file limit.
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit)
            limit.MaxRequestBodySize = manager.Options.MaxFileWriteBytes;
        if (context.Request.ContentLength is { } length && length > manager.Options.MaxFileWriteBytes)
            throw new MoatException(ErrorKind.TooLarge, "file_too_large", $"the file is {length} bytes; the limit is {manager.Options.MaxFileWriteBytes}");
        var info = await manager.WriteFileAsync(id, caller.TenantId, Required(path), context.Request.Body, user, bits, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(info.ToDto(), MoatJson.Default.FileEntryDto);
    }

    private static async Task<IResult> RemoveAsync(HttpContext context, SandboxManager manager, string id, string? path, string? user)
    {
        var caller = context.Writer();
        await manager.RemoveFileAsync(id, caller.TenantId, Required(path), user, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> ListAsync(HttpContext context, SandboxManager manager, string id, string? path, int? depth, string? user)
    {
        var caller = context.Caller();
        var (entries, truncated) = await manager.ListFilesAsync(id, caller.TenantId, Required(path), depth ?? 1, user, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new FileListResponse(entries.Select(e => e.ToDto()).ToList(), truncated), MoatJson.Default.FileListResponse);
    }

    private static async Task<IResult> StatAsync(HttpContext context, SandboxManager manager, string id, string? path, string? user)
    {
        var caller = context.Caller();
        var info = await manager.StatFileAsync(id, caller.TenantId, Required(path), user, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(info.ToDto(), MoatJson.Default.FileEntryDto);
    }

    private static async Task<IResult> MakeDirAsync(HttpContext context, SandboxManager manager, string id, string? path, string? user)
    {
        var caller = context.Writer();
        var info = await manager.MakeDirectoryAsync(id, caller.TenantId, Required(path), user, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(info.ToDto(), MoatJson.Default.FileEntryDto, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> RenameAsync(HttpContext context, SandboxManager manager, string id, string? from, string? to, string? user)
    {
        var caller = context.Writer();
        await manager.RenameFileAsync(id, caller.TenantId, Required(from), Required(to), user, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }
}
