using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Core.State;

namespace Moat.Storage.Templates;

/// <summary>
/// What a tenant can do with templates, whoever asks (the API, the embedded CLI): inspect, tag,
/// delete. A tenant acts on its own templates; public ones are the operator's. A template a live
/// sandbox was created from cannot be deleted, and the layers only deleted templates used are
/// removed from disk.
/// </summary>
public sealed partial class TemplateCatalog(TemplateStore templates, ISandboxStore sandboxes, ILogger<TemplateCatalog> logger)
{

    /// <summary>The template a tenant means by a name, or a not-found error.</summary>
    public async Task<TemplateRecord> GetAsync(string name, string tenant, CancellationToken cancellationToken) =>
        await templates.GetAsync(name, tenant, cancellationToken).ConfigureAwait(false) ?? throw NotFound(name);

    /// <summary>The tenant a new template goes to: the caller's, or public when an operator asks for it.</summary>
    public static string Owner(string tenant, bool makePublic, bool isOperator)
    {
        if (makePublic && !isOperator)
            throw new MoatException(ErrorKind.PermissionDenied, "operator_required", "only an operator key can make public templates");
        return makePublic ? "" : tenant;
    }

    /// <summary>Gives the image of <paramref name="source"/> another name.</summary>
    public async Task<TemplateRecord> TagAsync(string source, string name, string tenant, bool makePublic, bool isOperator, CancellationToken cancellationToken)
    {
        TemplateStore.ValidName(name);
        var existing = await GetAsync(source, tenant, cancellationToken).ConfigureAwait(false);
        var owner = Owner(tenant, makePublic, isOperator);
        return await templates.SaveAsync(existing with { Tenant = owner, Name = name, Source = "tag:" + existing.Name, CreatedAt = DateTimeOffset.UtcNow }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Deletes the tenant's template <paramref name="name"/> (an operator may delete a public one
    /// the tenant does not shadow). Refused while a live sandbox uses it; then removes the layers
    /// nothing else refers to.
    /// </summary>
    public async Task DeleteAsync(string name, string tenant, bool isOperator, CancellationToken cancellationToken)
    {
        var record = await templates.GetAsync(name, tenant, cancellationToken).ConfigureAwait(false) ?? throw NotFound(name);
        if (record.IsPublic && !isOperator)
            throw new MoatException(ErrorKind.PermissionDenied, "operator_required", $"template '{name}' is public; only an operator key can delete it");
        var users = await UsersAsync(record, cancellationToken).ConfigureAwait(false);
        if (users.Count > 0)
            throw new MoatException(ErrorKind.Conflict, "template_in_use", $"template '{name}' is used by {users.Count} live sandbox(es) ({string.Join(", ", users.Take(5))}{(users.Count > 5 ? ", …" : "")}); delete them first");
        await templates.DeleteAsync(record.Name, record.Tenant, cancellationToken).ConfigureAwait(false);
        int removed = await templates.Images.CollectGarbageAsync(cancellationToken).ConfigureAwait(false);
        LogDeleted(logger, name, record.IsPublic ? "public" : record.Tenant, removed);
    }

    /// <summary>Live sandboxes created from this template (for a public one: of tenants that do not shadow it).</summary>
    private async Task<List<string>> UsersAsync(TemplateRecord record, CancellationToken cancellationToken)
    {
        var live = await sandboxes.ListAsync(new SandboxQuery { TenantId = record.IsPublic ? null : record.Tenant, States = SandboxStates.Alive, Limit = int.MaxValue }, cancellationToken).ConfigureAwait(false);
        var users = new List<string>();
        foreach (var sandbox in live.Where(s => s.Spec.Template == record.Name))
        {
            if (record.IsPublic && await templates.GetExactAsync(record.Name, sandbox.TenantId, cancellationToken).ConfigureAwait(false) is not null)
                continue; // that tenant's own template of the same name
            users.Add(sandbox.Id);
        }
        return users;
    }

    private static MoatException NotFound(string name) => new(ErrorKind.NotFound, "template_not_found", $"template '{name}' does not exist");

    [LoggerMessage(Level = LogLevel.Information, Message = "Deleted template {Name} ({Tenant}); {Layers} unused layers removed")]
    private static partial void LogDeleted(ILogger logger, string name, string tenant, int layers);
}
