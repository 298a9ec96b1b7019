using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.Json;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Moat.Server.Auth;

namespace Moat.Server.Tenancy;

/// <summary>A tenant's quotas and rate limits, as enforced.</summary>
public sealed record TenantSettings(QuotasDto Quotas, RateLimitsDto RateLimits)
{
    /// <summary>No limits.</summary>
    public static readonly TenantSettings Unlimited = new(new QuotasDto(), new RateLimitsDto());
}

/// <summary>
/// Tenants: create, read, update, delete, with validation; their settings are cached in memory
/// (this node is the only writer, so the cache is exact).
/// </summary>
public sealed class TenantService(ITenantStore store, ApiKeyService keys, TimeProvider time)
{
    private readonly ConcurrentDictionary<string, TenantSettings> _settings = new();

    /// <summary>The settings in force for a tenant (unlimited for a tenant with no record).</summary>
    public async ValueTask<TenantSettings> SettingsAsync(string tenantId, CancellationToken cancellationToken)
    {
        if (_settings.TryGetValue(tenantId, out var cached))
            return cached;
        var record = await store.GetAsync(tenantId, cancellationToken).ConfigureAwait(false);
        var settings = record is null ? TenantSettings.Unlimited : Parse(record.Settings);
        _settings[tenantId] = settings;
        return settings;
    }

    /// <summary>The cached settings, if loaded (the rate limiter must not wait on the database).</summary>
    public TenantSettings? CachedSettings(string tenantId) => _settings.TryGetValue(tenantId, out var s) ? s : null;

    /// <summary>Every tenant.</summary>
    public async Task<IReadOnlyList<TenantDto>> ListAsync(CancellationToken cancellationToken) =>
        (await store.ListAsync(cancellationToken).ConfigureAwait(false)).Select(ToDto).ToList();

    /// <summary>A tenant, or a not-found error.</summary>
    public async Task<TenantDto> GetAsync(string id, CancellationToken cancellationToken) =>
        ToDto(await store.GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw NotFound(id));

    /// <summary>Creates a tenant.</summary>
    public async Task<TenantDto> CreateAsync(CreateTenantRequest request, CancellationToken cancellationToken)
    {
        var id = request.Id ?? "t-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        ValidId(id);
        var settings = new TenantSettings(Validate(request.Quotas ?? new QuotasDto()), Validate(request.RateLimits ?? new RateLimitsDto()));
        var record = new TenantRecord(id, ValidName(request.Name) ?? id, time.GetUtcNow(), Serialize(settings));
        if (!await store.InsertAsync(record, cancellationToken).ConfigureAwait(false))
            throw new MoatException(ErrorKind.Conflict, "tenant_exists", $"tenant '{id}' already exists");
        _settings[id] = settings;
        return ToDto(record);
    }

    /// <summary>Changes a tenant's name, quotas or rate limits (given fields replace stored ones).</summary>
    public async Task<TenantDto> UpdateAsync(string id, UpdateTenantRequest request, CancellationToken cancellationToken)
    {
        var record = await store.GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw NotFound(id);
        var current = Parse(record.Settings);
        var settings = new TenantSettings(request.Quotas is null ? current.Quotas : Validate(request.Quotas), request.RateLimits is null ? current.RateLimits : Validate(request.RateLimits));
        var updated = record with { Name = ValidName(request.Name) ?? record.Name, Settings = Serialize(settings) };
        if (!await store.UpdateAsync(updated, cancellationToken).ConfigureAwait(false))
            throw NotFound(id);
        _settings[id] = settings;
        return ToDto(updated);
    }

    /// <summary>Deletes a tenant and revokes every key it has, at once.</summary>
    public async Task DeleteAsync(string id, bool hasLiveSandboxes, CancellationToken cancellationToken)
    {
        if (id == "default")
            throw new MoatException(ErrorKind.Conflict, "tenant_protected", "the default tenant cannot be deleted");
        _ = await store.GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw NotFound(id);
        if (hasLiveSandboxes)
            throw new MoatException(ErrorKind.Conflict, "tenant_has_sandboxes", $"tenant '{id}' still has live sandboxes; delete them first");
        if (!await store.DeleteAsync(id, time.GetUtcNow(), cancellationToken).ConfigureAwait(false))
            throw NotFound(id);
        _settings.TryRemove(id, out _);
        keys.ForgetTenant(id);
    }

    /// <summary>Whether a tenant exists.</summary>
    public async Task<bool> ExistsAsync(string id, CancellationToken cancellationToken) => await store.GetAsync(id, cancellationToken).ConfigureAwait(false) is not null;

    /// <summary>A not-found error for a tenant.</summary>
    public static MoatException NotFound(string id) => new(ErrorKind.NotFound, "tenant_not_found", $"tenant '{id}' does not exist");

    private static void ValidId(string id)
    {
        if (id.Length is < 1 or > 63 || !id.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '-') || id[0] == '-')
            throw MoatException.Invalid("invalid_tenant_id", $"a tenant id is 1-63 lowercase letters, digits and '-' (not first), got '{id}'");
    }

    private static string? ValidName(string? name) => name is { Length: > 200 } ? throw MoatException.Invalid("invalid_name", "tenant names are at most 200 characters") : name;

    private static QuotasDto Validate(QuotasDto q)
    {
        if (q.MaxSandboxes is < 0)
            throw MoatException.Invalid("invalid_quota", $"maxSandboxes must be 0 or more, got {q.MaxSandboxes}");
        if (q.MaxVcpus is { } v && (v < 0 || double.IsNaN(v) || double.IsInfinity(v)))
            throw MoatException.Invalid("invalid_quota", $"maxVcpus must be 0 or more, got {v}");
        if (q.MaxMemoryMiB is < 0)
            throw MoatException.Invalid("invalid_quota", $"maxMemoryMiB must be 0 or more, got {q.MaxMemoryMiB}");
        if (q.MaxDiskMiB is < 0)
            throw MoatException.Invalid("invalid_quota", $"maxDiskMiB must be 0 or more, got {q.MaxDiskMiB}");
        if (q.MaxLifetimeSeconds is < 1)
            throw MoatException.Invalid("invalid_quota", $"maxLifetimeSeconds must be 1 or more, got {q.MaxLifetimeSeconds}");
        if (q.AllowedTiers is { } tiers)
        {
            if (tiers.Count > 8)
                throw MoatException.Invalid("invalid_quota", "allowedTiers lists at most 8 tiers");
            foreach (var t in tiers)
            {
                if (IsolationTiers.TryParse(t) is null)
                    throw MoatException.Invalid("invalid_quota", $"allowedTiers: unknown tier '{t}'; use microvm, gvisor or container");
            }
        }
        return q;
    }

    private static RateLimitsDto Validate(RateLimitsDto r)
    {
        if (r.RequestsPerMinute is < 1 or > 1_000_000)
            throw MoatException.Invalid("invalid_rate_limit", $"requestsPerMinute must be 1-1000000, got {r.RequestsPerMinute}");
        if (r.CreatesPerMinute is < 1 or > 100_000)
            throw MoatException.Invalid("invalid_rate_limit", $"createsPerMinute must be 1-100000, got {r.CreatesPerMinute}");
        return r;
    }

    private static TenantSettings Parse(string json)
    {
        if (string.IsNullOrWhiteSpace(json) || json == "{}")
            return TenantSettings.Unlimited;
        var dto = JsonSerializer.Deserialize(json, TenancyJson.Default.TenantDto);
        return dto is null ? TenantSettings.Unlimited : new TenantSettings(dto.Quotas, dto.RateLimits);
    }

    private static string Serialize(TenantSettings s) =>
        JsonSerializer.Serialize(new TenantDto { Id = "", Quotas = s.Quotas, RateLimits = s.RateLimits }, TenancyJson.Default.TenantDto);

    private static TenantDto ToDto(TenantRecord r)
    {
        var s = Parse(r.Settings);
        return new TenantDto { Id = r.Id, Name = r.Name, CreatedAt = r.CreatedAt, Quotas = s.Quotas, RateLimits = s.RateLimits };
    }
}
