namespace Moat.Core.State;

/// <summary>An API key as stored: never the key itself, only its prefix and a hash of its secret.</summary>
public sealed record ApiKeyRecord
{
    /// <summary>Key id (also the public prefix of the key).</summary>
    public required string Id { get; init; }
    /// <summary>Tenant the key acts for.</summary>
    public required string TenantId { get; init; }
    /// <summary>Human label.</summary>
    public string Name { get; init; } = "";
    /// <summary>The visible start of the key, for lists ("moat_ab12cd34…").</summary>
    public required string Prefix { get; init; }
    /// <summary>SHA-256 of the key's secret part.</summary>
    public required byte[] SecretHash { get; init; }
    /// <summary>admin, member or read-only; "operator" manages tenants.</summary>
    public required string Role { get; init; }
    /// <summary>When it was made.</summary>
    public DateTimeOffset CreatedAt { get; init; }
    /// <summary>When it was last used.</summary>
    public DateTimeOffset? LastUsedAt { get; init; }
    /// <summary>When it was revoked; a revoked key authenticates nothing.</summary>
    public DateTimeOffset? RevokedAt { get; init; }
}

/// <summary>Durable API keys.</summary>
public interface IApiKeyStore
{
    /// <summary>Adds a key.</summary>
    Task InsertAsync(ApiKeyRecord key, CancellationToken cancellationToken);
    /// <summary>A key by id, or null.</summary>
    Task<ApiKeyRecord?> GetAsync(string id, CancellationToken cancellationToken);
    /// <summary>Keys of a tenant (all tenants when null).</summary>
    Task<IReadOnlyList<ApiKeyRecord>> ListAsync(string? tenantId, CancellationToken cancellationToken);
    /// <summary>Records a use of the key.</summary>
    Task TouchAsync(string id, DateTimeOffset when, CancellationToken cancellationToken);
    /// <summary>Revokes a key.</summary>
    Task RevokeAsync(string id, DateTimeOffset when, CancellationToken cancellationToken);
}
