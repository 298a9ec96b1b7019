using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.State;
using Moat.Server.Audit;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>The audit trail: query (JSON or JSON lines) and chain verification.</summary>
internal static class AuditEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        var audit = app.MapGroup("/v1/audit").WithTags("audit");
        audit.MapGet("", QueryAsync).WithName("QueryAudit");
        audit.MapGet("/verify", VerifyAsync).WithName("VerifyAudit");
    }

    /// <summary>
    /// An admin sees its own tenant's records; the operator sees every tenant's (or one, with
    /// <c>tenant=</c>). <c>format=jsonl</c> (or Accept: application/x-ndjson) exports JSON lines.
    /// </summary>
    private static async Task QueryAsync(HttpContext context, AuditLog log, IAuditStore store, string? tenant, string? sandbox, string? kind, string? since, string? until, long? after, int? limit, string? format)
    {
        var caller = context.Caller();
        if (caller.Role is not (Roles.Admin or Roles.Operator))
            throw new MoatException(ErrorKind.PermissionDenied, "admin_required", "reading the audit trail needs an admin key");
        string? tenantFilter = caller.Role == Roles.Operator ? tenant : caller.TenantId;
        if (caller.Role != Roles.Operator && tenant is not null && tenant != caller.TenantId)
            throw new MoatException(ErrorKind.NotFound, "tenant_not_found", $"tenant '{tenant}' does not exist");
        if (kind is not null && !AuditKinds.IsKnown(kind))
            throw MoatException.Invalid("invalid_kind", $"kind must be api, command, file, lifecycle or network, got '{kind}'");
        if (limit is < 1 or > 100_000)
            throw MoatException.Invalid("invalid_limit", "limit must be 1-100000");
        if (after is < 0)
            throw MoatException.Invalid("invalid_after", "after must be 0 or more");
        var query = new AuditQuery
        {
            TenantId = tenantFilter,
            SandboxId = sandbox,
            Kind = kind,
            Since = Time(since, "since"),
            Until = Time(until, "until"),
            AfterSeq = after ?? 0,
            Limit = limit ?? 1000,
        };
        await log.FlushAsync(context.RequestAborted).ConfigureAwait(false);
        var records = await store.QueryAsync(query, context.RequestAborted).ConfigureAwait(false);
        bool lines = format == "jsonl" || context.Request.Headers.Accept.ToString().Contains("application/x-ndjson", StringComparison.OrdinalIgnoreCase);
        if (format is not (null or "json" or "jsonl"))
            throw MoatException.Invalid("invalid_format", $"format must be json or jsonl, got '{format}'");
        if (lines)
        {
            context.Response.ContentType = "application/x-ndjson; charset=utf-8";
            foreach (var r in records)
            {
                await JsonSerializer.SerializeAsync(context.Response.Body, ToDto(r), TenancyJson.Default.AuditRecordDto, context.RequestAborted).ConfigureAwait(false);
                await context.Response.Body.WriteAsync("\n"u8.ToArray(), context.RequestAborted).ConfigureAwait(false);
            }
            return;
        }
        await Results.Json(new AuditListResponse(records.Select(ToDto).ToList()), TenancyJson.Default.AuditListResponse).ExecuteAsync(context).ConfigureAwait(false);
    }

    /// <summary>The chain spans every tenant, so only the operator verifies it.</summary>
    private static async Task<IResult> VerifyAsync(HttpContext context, AuditLog log)
    {
        if (context.Caller().Role != Roles.Operator)
            throw new MoatException(ErrorKind.PermissionDenied, "operator_required", "verifying the audit chain needs an operator key");
        var result = await log.VerifyAsync(context.RequestAborted).ConfigureAwait(false);
        return Results.Json(result, TenancyJson.Default.AuditVerifyResponse);
    }

    private static DateTimeOffset? Time(string? value, string name)
    {
        if (value is null)
            return null;
        if (long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out long unix))
            return DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(unix, 0, 253402300799));
        if (DateTimeOffset.TryParse(value, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var t))
            return t;
        throw MoatException.Invalid("invalid_time", $"{name} must be an ISO 8601 time or Unix seconds, got '{value}'");
    }

    private static AuditRecordDto ToDto(AuditEntry e) => new()
    {
        Seq = e.Seq,
        Time = e.Time,
        Kind = e.Kind,
        TenantId = e.TenantId,
        KeyId = e.KeyId,
        SandboxId = e.SandboxId,
        Action = e.Action,
        Result = e.Result,
        Data = e.Data,
        PrevHash = e.PrevHash,
        Hash = e.Hash,
    };
}
