using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.State;
using Moat.Core.Templates;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>API keys of the caller's tenant, and the templates it can use.</summary>
internal static class KeyEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        var keys = app.MapGroup("/v1/keys").WithTags("keys");
        keys.MapGet("", ListAsync).WithName("ListKeys");
        keys.MapPost("", CreateAsync).WithName("CreateKey");
        keys.MapDelete("/{id}", RevokeAsync).WithName("RevokeKey");
    }

    private static Caller Admin(HttpContext context)
    {
        var caller = context.Caller();
        if (caller.Role is not (Roles.Admin or Roles.Operator))
            throw new MoatException(ErrorKind.PermissionDenied, "admin_required", "managing keys needs an admin key");
        return caller;
    }

    internal static ApiKeyDto ToDto(ApiKeyRecord k, string? key = null) => new()
    {
        Id = k.Id,
        Prefix = k.Prefix,
        Name = k.Name,
        Role = k.Role,
        TenantId = k.TenantId,
        CreatedAt = k.CreatedAt,
        LastUsedAt = k.LastUsedAt,
        RevokedAt = k.RevokedAt,
        Key = key,
    };

    private static async Task<IResult> ListAsync(HttpContext context, IApiKeyStore store)
    {
        var caller = Admin(context);
        var keys = await store.ListAsync(caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(keys.Select(k => ToDto(k)).ToList(), MoatJson.Default.ListApiKeyDto);
    }

    private static async Task<IResult> CreateAsync(HttpContext context, ApiKeyService keys)
    {
        var caller = Admin(context);
        var request = await Json.ReadAsync(context, MoatJson.Default.CreateKeyRequest, new CreateKeyRequest()).ConfigureAwait(false);
        var role = request.Role ?? Roles.Member;
        if (role == Roles.Operator && caller.Role != Roles.Operator)
            throw new MoatException(ErrorKind.PermissionDenied, "operator_required", "only an operator key can mint operator keys");
        if (request.Name is { Length: > 200 })
            throw MoatException.Invalid("invalid_name", "key names are at most 200 characters");
        var (record, key) = await keys.CreateAsync(caller.TenantId, role, request.Name ?? "", cancellationToken: context.RequestAborted).ConfigureAwait(false);
        return Results.Json(ToDto(record, key), MoatJson.Default.ApiKeyDto, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> RevokeAsync(HttpContext context, IApiKeyStore store, ApiKeyService keys, string id)
    {
        var caller = Admin(context);
        var key = await store.GetAsync(id, context.RequestAborted).ConfigureAwait(false);
        if (key is null || key.TenantId != caller.TenantId)
            throw new MoatException(ErrorKind.NotFound, "key_not_found", $"key '{id}' does not exist");
        await keys.RevokeAsync(id, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }
}
