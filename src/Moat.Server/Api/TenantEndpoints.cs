using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Moat.Server.Auth;
using Moat.Server.Tenancy;

namespace Moat.Server.Api;

/// <summary>Tenants and their keys, for the operator key only.</summary>
internal static class TenantEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        var tenants = app.MapGroup("/v1/tenants").WithTags("tenants");
        tenants.MapGet("", ListAsync).WithName("ListTenants");
        tenants.MapPost("", CreateAsync).WithName("CreateTenant");
        tenants.MapGet("/{tenantId}", GetAsync).WithName("GetTenant");
        tenants.MapPatch("/{tenantId}", UpdateAsync).WithName("UpdateTenant");
        tenants.MapDelete("/{tenantId}", DeleteAsync).WithName("DeleteTenant");
        tenants.MapGet("/{tenantId}/keys", ListKeysAsync).WithName("ListTenantKeys");
        tenants.MapPost("/{tenantId}/keys", CreateKeyAsync).WithName("CreateTenantKey");
        tenants.MapDelete("/{tenantId}/keys/{keyId}", RevokeKeyAsync).WithName("RevokeTenantKey");
    }

    /// <summary>Only the operator manages tenants; to everyone else the routes do not exist.</summary>
    private static Caller Operator(HttpContext context)
    {
        var caller = context.Caller();
        if (caller.Role != Roles.Operator)
            throw new MoatException(ErrorKind.PermissionDenied, "operator_required", "managing tenants needs an operator key");
        return caller;
    }

    private static async Task<IResult> ListAsync(HttpContext context, TenantService tenants)
    {
        Operator(context);
        var list = await tenants.ListAsync(context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new TenantListResponse(list), TenancyJson.Default.TenantListResponse);
    }

    private static async Task<IResult> CreateAsync(HttpContext context, TenantService tenants)
    {
        Operator(context);
        var request = await Json.ReadAsync(context, TenancyJson.Default.CreateTenantRequest, new CreateTenantRequest()).ConfigureAwait(false);
        var tenant = await tenants.CreateAsync(request, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(tenant, TenancyJson.Default.TenantDto, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> GetAsync(HttpContext context, TenantService tenants, string tenantId)
    {
        Operator(context);
        return Results.Json(await tenants.GetAsync(tenantId, context.RequestAborted).ConfigureAwait(false), TenancyJson.Default.TenantDto);
    }

    private static async Task<IResult> UpdateAsync(HttpContext context, TenantService tenants, string tenantId)
    {
        Operator(context);
        var request = await Json.ReadAsync(context, TenancyJson.Default.UpdateTenantRequest, new UpdateTenantRequest()).ConfigureAwait(false);
        return Results.Json(await tenants.UpdateAsync(tenantId, request, context.RequestAborted).ConfigureAwait(false), TenancyJson.Default.TenantDto);
    }

    private static async Task<IResult> DeleteAsync(HttpContext context, TenantService tenants, SandboxManager manager, string tenantId)
    {
        Operator(context);
        var live = await manager.ListAsync(new SandboxQuery { TenantId = tenantId, States = [SandboxState.Creating, SandboxState.Running, SandboxState.Paused], Limit = 1 }, context.RequestAborted).ConfigureAwait(false);
        await tenants.DeleteAsync(tenantId, live.Count > 0, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> ListKeysAsync(HttpContext context, TenantService tenants, IApiKeyStore store, string tenantId)
    {
        Operator(context);
        if (!await tenants.ExistsAsync(tenantId, context.RequestAborted).ConfigureAwait(false))
            throw TenantService.NotFound(tenantId);
        var keys = await store.ListAsync(tenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(keys.Select(k => KeyEndpoints.ToDto(k)).ToList(), MoatJson.Default.ListApiKeyDto);
    }

    private static async Task<IResult> CreateKeyAsync(HttpContext context, TenantService tenants, ApiKeyService keys, string tenantId)
    {
        Operator(context);
        if (!await tenants.ExistsAsync(tenantId, context.RequestAborted).ConfigureAwait(false))
            throw TenantService.NotFound(tenantId);
        var request = await Json.ReadAsync(context, MoatJson.Default.CreateKeyRequest, new CreateKeyRequest()).ConfigureAwait(false);
        if (request.Name is { Length: > 200 })
            throw MoatException.Invalid("invalid_name", "key names are at most 200 characters");
        var (record, key) = await keys.CreateAsync(tenantId, request.Role ?? Roles.Admin, request.Name ?? "", cancellationToken: context.RequestAborted).ConfigureAwait(false);
        return Results.Json(KeyEndpoints.ToDto(record, key), MoatJson.Default.ApiKeyDto, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> RevokeKeyAsync(HttpContext context, IApiKeyStore store, ApiKeyService keys, string tenantId, string keyId)
    {
        Operator(context);
        var key = await store.GetAsync(keyId, context.RequestAborted).ConfigureAwait(false);
        if (key is null || key.TenantId != tenantId)
            throw new MoatException(ErrorKind.NotFound, "key_not_found", $"key '{keyId}' does not exist in tenant '{tenantId}'");
        await keys.RevokeAsync(keyId, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }
}
