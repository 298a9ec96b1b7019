using Moat.Client.Http;
using Moat.Contracts;

namespace Moat.Client;

public sealed partial class MoatClient
{
    /// <summary>Every tenant (operator key).</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The tenants with their quotas and rate limits.</returns>
    public async Task<IReadOnlyList<TenantDto>> ListTenantsAsync(CancellationToken cancellationToken = default) =>
        (await _transport.SendAsync(HttpMethod.Get, "v1/tenants", null, TenancyJson.Default.TenantListResponse, bounded: true, cancellationToken).ConfigureAwait(false)).Tenants;

    /// <summary>Creates a tenant (operator key).</summary>
    /// <param name="request">Id, name, quotas, rate limits.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The tenant.</returns>
    public Task<TenantDto> CreateTenantAsync(CreateTenantRequest request, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Post, "v1/tenants", MoatTransport.Json(request, TenancyJson.Default.CreateTenantRequest), TenancyJson.Default.TenantDto, bounded: true, cancellationToken);

    /// <summary>One tenant (operator key).</summary>
    /// <param name="tenantId">Tenant id.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The tenant.</returns>
    public Task<TenantDto> GetTenantAsync(string tenantId, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Get, "v1/tenants/" + QueryString.Segment(tenantId), null, TenancyJson.Default.TenantDto, bounded: true, cancellationToken);

    /// <summary>Changes a tenant's name, quotas or rate limits (operator key).</summary>
    /// <param name="tenantId">Tenant id.</param>
    /// <param name="request">The fields to replace.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The tenant as it now is.</returns>
    public Task<TenantDto> UpdateTenantAsync(string tenantId, UpdateTenantRequest request, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Patch, "v1/tenants/" + QueryString.Segment(tenantId), MoatTransport.Json(request, TenancyJson.Default.UpdateTenantRequest), TenancyJson.Default.TenantDto, bounded: true, cancellationToken);

    /// <summary>Deletes a tenant and revokes its keys (operator key; it must have no live sandboxes).</summary>
    /// <param name="tenantId">Tenant id.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once it is deleted.</returns>
    public Task DeleteTenantAsync(string tenantId, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Delete, "v1/tenants/" + QueryString.Segment(tenantId), null, bounded: true, cancellationToken);

    /// <summary>Mints a key for a tenant (operator key); the key is in the answer this once.</summary>
    /// <param name="tenantId">Tenant id.</param>
    /// <param name="name">Label.</param>
    /// <param name="role">admin (default), member or read-only.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The key with its secret.</returns>
    public Task<ApiKeyDto> CreateTenantKeyAsync(string tenantId, string? name = null, string? role = null, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Post, $"v1/tenants/{QueryString.Segment(tenantId)}/keys", MoatTransport.Json(new CreateKeyRequest { Name = name, Role = role }, MoatJson.Default.CreateKeyRequest), MoatJson.Default.ApiKeyDto, bounded: true, cancellationToken);

    /// <summary>A tenant's keys, by prefix, never their secrets (operator key).</summary>
    /// <param name="tenantId">Tenant id.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The keys.</returns>
    public async Task<IReadOnlyList<ApiKeyDto>> ListTenantKeysAsync(string tenantId, CancellationToken cancellationToken = default) =>
        await _transport.SendAsync(HttpMethod.Get, $"v1/tenants/{QueryString.Segment(tenantId)}/keys", null, MoatJson.Default.ListApiKeyDto, bounded: true, cancellationToken).ConfigureAwait(false);

    /// <summary>Audit records (an admin key sees its tenant's, the operator's every tenant's).</summary>
    /// <param name="query">Filters as query parameters: tenant, sandbox, kind, since, until, after, limit.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The records in chain order.</returns>
    public async Task<IReadOnlyList<AuditRecordDto>> QueryAuditAsync(IReadOnlyDictionary<string, string>? query = null, CancellationToken cancellationToken = default) =>
        (await _transport.SendAsync(HttpMethod.Get, "v1/audit" + AuditQuery(query, null), null, TenancyJson.Default.AuditListResponse, bounded: true, cancellationToken).ConfigureAwait(false)).Records;

    /// <summary>Audit records as JSON lines (one record a line), for export.</summary>
    /// <param name="query">Filters as for <see cref="QueryAuditAsync"/>.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The JSON lines.</returns>
    public Task<string> ExportAuditAsync(IReadOnlyDictionary<string, string>? query = null, CancellationToken cancellationToken = default) =>
        GetTextAsync("v1/audit" + AuditQuery(query, "jsonl"), cancellationToken);

    /// <summary>Checks the whole audit chain (operator key).</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>Whether it is intact, and where not.</returns>
    public Task<AuditVerifyResponse> VerifyAuditAsync(CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Get, "v1/audit/verify", null, TenancyJson.Default.AuditVerifyResponse, bounded: false, cancellationToken);

    /// <summary>Usage per tenant per day.</summary>
    /// <param name="from">First day (yyyy-MM-dd), default 30 days ago.</param>
    /// <param name="to">Last day, default today.</param>
    /// <param name="tenant">Operator only: one tenant.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The days.</returns>
    public async Task<IReadOnlyList<UsageDayDto>> GetUsageAsync(string? from = null, string? to = null, string? tenant = null, CancellationToken cancellationToken = default) =>
        (await _transport.SendAsync(HttpMethod.Get, "v1/usage" + UsageQuery(from, to, tenant, null), null, TenancyJson.Default.UsageResponse, bounded: true, cancellationToken).ConfigureAwait(false)).Days;

    /// <summary>Usage as CSV.</summary>
    /// <param name="from">First day.</param>
    /// <param name="to">Last day.</param>
    /// <param name="tenant">Operator only: one tenant.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>CSV text with a header line.</returns>
    public Task<string> GetUsageCsvAsync(string? from = null, string? to = null, string? tenant = null, CancellationToken cancellationToken = default) =>
        GetTextAsync("v1/usage" + UsageQuery(from, to, tenant, "csv"), cancellationToken);

    private async Task<string> GetTextAsync(string path, CancellationToken cancellationToken)
    {
        using var request = _transport.Request(HttpMethod.Get, path);
        using var response = await _transport.SendCheckedAsync(request, HttpCompletionOption.ResponseContentRead, cancellationToken).ConfigureAwait(false);
        return await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
    }

    private static string AuditQuery(IReadOnlyDictionary<string, string>? query, string? format)
    {
        var parts = new List<string>();
        foreach (var (k, v) in query ?? new Dictionary<string, string>())
            parts.Add(Uri.EscapeDataString(k) + "=" + Uri.EscapeDataString(v));
        if (format is not null)
            parts.Add("format=" + format);
        return parts.Count == 0 ? "" : "?" + string.Join('&', parts);
    }

    private static string UsageQuery(string? from, string? to, string? tenant, string? format)
    {
        var q = new Dictionary<string, string>();
        if (from is not null)
            q["from"] = from;
        if (to is not null)
            q["to"] = to;
        if (tenant is not null)
            q["tenant"] = tenant;
        return AuditQuery(q, format);
    }
}
