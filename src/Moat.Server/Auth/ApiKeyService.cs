using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.State;

namespace Moat.Server.Auth;

/// <summary>Who is calling: the tenant a key acts for, and what it may do.</summary>
public sealed record Caller(string TenantId, string Role, string KeyId)
{
    /// <summary>Whether the caller may change things (not read-only).</summary>
    public bool CanWrite => Role is Roles.Admin or Roles.Member or Roles.Operator;
}

/// <summary>Key roles.</summary>
public static class Roles
{
    /// <summary>Everything within the tenant, keys included.</summary>
    public const string Admin = "admin";
    /// <summary>Sandboxes, files, commands.</summary>
    public const string Member = "member";
    /// <summary>Reads only.</summary>
    public const string ReadOnly = "read-only";
    /// <summary>Manages tenants.</summary>
    public const string Operator = "operator";

    /// <summary>Whether a role name is known.</summary>
    public static bool IsKnown(string role) => role is Admin or Member or ReadOnly or Operator;
}

/// <summary>
/// Mints and checks API keys. A key is <c>moat_</c> (or <c>e2b_</c>, for E2B's SDKs) followed by
/// a 12-hex-digit id and a 40-hex-digit secret; only the id and the SHA-256 of the secret are
/// stored. Verification is constant-time.
/// </summary>
public sealed partial class ApiKeyService(IApiKeyStore store, TimeProvider time, ILogger<ApiKeyService> logger)
{
    private const int IdLength = 12;
    private const int SecretLength = 40;
    private readonly ConcurrentDictionary<string, (ApiKeyRecord Key, long CheckedAt)> _cache = new();
    private readonly ConcurrentDictionary<string, long> _lastTouch = new();

    /// <summary>Creates a key and returns it with its only plaintext copy.</summary>
    public async Task<(ApiKeyRecord Record, string Key)> CreateAsync(string tenantId, string role, string name, string prefix = "moat", CancellationToken cancellationToken = default)
    {
        if (!Roles.IsKnown(role))
            throw MoatException.Invalid("invalid_role", $"role must be admin, member, read-only or operator, got '{role}'");
        string id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(IdLength / 2));
        string secret = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(SecretLength / 2));
        string key = $"{prefix}_{id}{secret}";
        var record = await InsertAsync(tenantId, role, name, id, secret, prefix, cancellationToken).ConfigureAwait(false);
        return (record, key);
    }

    /// <summary>Stores a key the operator chose (e.g. MOAT_ADMIN_KEY at first start).</summary>
    public async Task<ApiKeyRecord> ImportAsync(string tenantId, string role, string name, string key, CancellationToken cancellationToken)
    {
        if (Parse(key) is not var (prefix, id, secret))
            throw MoatException.Invalid("invalid_key", $"a key must look like moat_ followed by {IdLength + SecretLength} hex digits");
        return await InsertAsync(tenantId, role, name, id, secret, prefix, cancellationToken).ConfigureAwait(false);
    }

    private async Task<ApiKeyRecord> InsertAsync(string tenantId, string role, string name, string id, string secret, string prefix, CancellationToken cancellationToken)
    {
        var record = new ApiKeyRecord
        {
            Id = id,
            TenantId = tenantId,
            Name = name,
            Prefix = $"{prefix}_{id}",
            SecretHash = SHA256.HashData(Encoding.ASCII.GetBytes(secret)),
            Role = role,
            CreatedAt = time.GetUtcNow(),
        };
        await store.InsertAsync(record, cancellationToken).ConfigureAwait(false);
        return record;
    }

    /// <summary>The caller a key belongs to, or null for an unknown, malformed or revoked key.</summary>
    public async Task<Caller?> AuthenticateAsync(string key, CancellationToken cancellationToken)
    {
        if (Parse(key) is not var (_, id, secret))
            return null;
        long now = Environment.TickCount64;
        ApiKeyRecord? record;
        // A short cache keeps the database off the hot path; revocation clears it (see Revoke).
        if (_cache.TryGetValue(id, out var cached) && now - cached.CheckedAt < 5000)
            record = cached.Key;
        else
        {
            record = await store.GetAsync(id, cancellationToken).ConfigureAwait(false);
            if (record is not null)
                _cache[id] = (record, now);
        }
        if (record is null || record.RevokedAt is not null)
            return null;
        if (!CryptographicOperations.FixedTimeEquals(record.SecretHash, SHA256.HashData(Encoding.ASCII.GetBytes(secret))))
            return null;
        // Last-used time, at most once a minute per key.
        if (!_lastTouch.TryGetValue(id, out long touched) || now - touched > 60_000)
        {
            _lastTouch[id] = now;
            try
            {
                await store.TouchAsync(id, time.GetUtcNow(), cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                LogTouchFailed(logger, id, ex);
            }
        }
        return new Caller(record.TenantId, record.Role, record.Id);
    }

    /// <summary>Revokes a key; it stops working at once.</summary>
    public async Task RevokeAsync(string id, CancellationToken cancellationToken)
    {
        await store.RevokeAsync(id, time.GetUtcNow(), cancellationToken).ConfigureAwait(false);
        _cache.TryRemove(id, out _);
    }

    /// <summary>Drops every cached key of a tenant (its keys were revoked in the store), so none works a moment longer.</summary>
    public void ForgetTenant(string tenantId)
    {
        foreach (var (id, entry) in _cache)
        {
            if (entry.Key.TenantId == tenantId)
                _cache.TryRemove(id, out _);
        }
    }

    /// <summary>
    /// On a server's first start: create the admin key (or store the one given in
    /// MOAT_ADMIN_KEY) and return it so the server can print it once. Null when keys exist.
    /// </summary>
    public async Task<string?> BootstrapAsync(string? givenKey, CancellationToken cancellationToken)
    {
        var existing = await store.ListAsync(null, cancellationToken).ConfigureAwait(false);
        if (existing.Count > 0)
        {
            if (!string.IsNullOrEmpty(givenKey) && await AuthenticateAsync(givenKey, cancellationToken).ConfigureAwait(false) is null)
                await ImportAsync("default", Roles.Admin, "admin (MOAT_ADMIN_KEY)", givenKey, cancellationToken).ConfigureAwait(false);
            return null;
        }
        if (!string.IsNullOrEmpty(givenKey))
        {
            await ImportAsync("default", Roles.Admin, "admin (MOAT_ADMIN_KEY)", givenKey, cancellationToken).ConfigureAwait(false);
            return null;
        }
        var (_, key) = await CreateAsync("default", Roles.Admin, "admin (first start)", cancellationToken: cancellationToken).ConfigureAwait(false);
        return key;
    }

    internal static (string Prefix, string Id, string Secret)? Parse(string key)
    {
        int underscore = key.IndexOf('_');
        if (underscore <= 0)
            return null;
        var prefix = key[..underscore];
        var rest = key[(underscore + 1)..];
        if (prefix is not ("moat" or "e2b") || rest.Length != IdLength + SecretLength || !rest.All(char.IsAsciiHexDigitLower))
            return null;
        return (prefix, rest[..IdLength], rest[IdLength..]);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not record the use of key {KeyId}")]
    private static partial void LogTouchFailed(ILogger logger, string keyId, Exception exception);
}
