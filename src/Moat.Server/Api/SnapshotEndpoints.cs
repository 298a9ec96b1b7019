using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.Auth;
using Moat.Storage.Templates;

namespace Moat.Server.Api;

/// <summary>
/// Snapshots and forks: a snapshot is a template of the tenant made from a sandbox's files, and for
/// kind <c>memory</c> its saved processes (restore = create a sandbox from it); a fork starts N
/// sandboxes from a sandbox's state now.
/// </summary>
internal static class SnapshotEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/sandboxes/{id}/snapshots", CreateAsync).WithName("SnapshotSandbox").WithTags("snapshots");
        app.MapPost("/v1/sandboxes/{id}/fork", ForkAsync).WithName("ForkSandbox").WithTags("snapshots");
        app.MapGet("/v1/snapshots", ListAsync).WithName("ListSnapshots").WithTags("snapshots");
        app.MapGet("/v1/snapshots/{**name}", GetAsync).WithName("GetSnapshot").WithTags("snapshots");
        app.MapDelete("/v1/snapshots/{**name}", DeleteAsync).WithName("DeleteSnapshot").WithTags("snapshots");
    }

    private static SnapshotDto ToDto(TemplateRecord t, int? changed = null) => new()
    {
        Name = t.Name,
        Kind = SandboxSnapshots.KindOf(t),
        Isolation = SandboxSnapshots.CheckpointTierOf(t)?.Name(),
        SandboxId = SandboxSnapshots.SourceSandbox(t),
        ChangedEntries = changed,
        Template = TemplateApiMapping.ToDto(t),
    };

    private static async Task<IResult> CreateAsync(HttpContext context, SandboxSnapshots snapshots, string id)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.CreateSnapshotRequest, new CreateSnapshotRequest()).ConfigureAwait(false);
        if (string.IsNullOrWhiteSpace(request.Name))
            throw MoatException.Invalid("missing_name", "a snapshot needs a name: {\"name\": \"...\"}");
        var kind = SandboxSnapshots.ParseKind(request.Kind);
        var snapshot = await snapshots.SnapshotAsync(id, caller.TenantId, request.Name, kind, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(ToDto(snapshot.Template, snapshot.ChangedEntries), MoatJson.Default.SnapshotDto, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> ForkAsync(HttpContext context, SandboxSnapshots snapshots, string id)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.ForkRequest, new ForkRequest()).ConfigureAwait(false);
        var kind = SandboxSnapshots.ParseKind(request.Kind);
        var forks = await snapshots.ForkAsync(id, caller.TenantId, request.Count ?? 1, kind, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new ForkResponse(forks.Select(f => f.ToDto()).ToList()), MoatJson.Default.ForkResponse, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> ListAsync(HttpContext context, TemplateStore templates)
    {
        var caller = context.Caller();
        var list = await templates.ListRecordsAsync(caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new SnapshotListResponse(list.Where(t => SandboxSnapshots.IsSnapshotOf(t, caller.TenantId)).Select(t => ToDto(t)).ToList()), MoatJson.Default.SnapshotListResponse);
    }

    private static async Task<IResult> GetAsync(HttpContext context, TemplateStore templates, string name)
    {
        var caller = context.Caller();
        var record = await FindAsync(templates, caller.TenantId, name, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(ToDto(record), MoatJson.Default.SnapshotDto);
    }

    private static async Task<IResult> DeleteAsync(HttpContext context, TemplateStore templates, TemplateCatalog catalog, SandboxSnapshots snapshots, string name)
    {
        var caller = context.Writer();
        var record = await FindAsync(templates, caller.TenantId, name, context.RequestAborted).ConfigureAwait(false);
        await catalog.DeleteAsync(record.Name, caller.TenantId, isOperator: false, context.RequestAborted).ConfigureAwait(false);
        snapshots.DeleteCheckpoint(record);
        return Results.NoContent();
    }

    private static async Task<TemplateRecord> FindAsync(TemplateStore templates, string tenant, string name, CancellationToken cancellationToken)
    {
        var record = await templates.GetExactAsync(name, tenant, cancellationToken).ConfigureAwait(false);
        return record is not null && SandboxSnapshots.IsSnapshotOf(record, tenant)
            ? record
            : throw new MoatException(ErrorKind.NotFound, "snapshot_not_found", $"no snapshot named '{name}'");
    }
}
