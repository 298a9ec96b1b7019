using Microsoft.Data.Sqlite;
using Moat.Core.State;

namespace Moat.Storage.Sqlite;

/// <summary>API keys in SQLite (hashes only).</summary>
public sealed class SqliteApiKeyStore(SqliteDatabase database) : IApiKeyStore
{
    /// <inheritdoc />
    public Task InsertAsync(ApiKeyRecord key, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("INSERT INTO api_keys (id, tenant_id, name, prefix, secret_hash, role, created_at) VALUES ($id, $tenant, $name, $prefix, $hash, $role, $created)", c);
        command.Parameters.AddWithValue("$id", key.Id);
        command.Parameters.AddWithValue("$tenant", key.TenantId);
        command.Parameters.AddWithValue("$name", key.Name);
        command.Parameters.AddWithValue("$prefix", key.Prefix);
        command.Parameters.AddWithValue("$hash", key.SecretHash);
        command.Parameters.AddWithValue("$role", key.Role);
        command.Parameters.AddWithValue("$created", key.CreatedAt.ToUnixTimeMilliseconds());
        return command.ExecuteNonQuery();
    }, cancellationToken);

    /// <inheritdoc />
    public Task<ApiKeyRecord?> GetAsync(string id, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand("SELECT id, tenant_id, name, prefix, secret_hash, role, created_at, last_used_at, revoked_at FROM api_keys WHERE id = $id", c);
        command.Parameters.AddWithValue("$id", id);
        using var reader = command.ExecuteReader();
        return reader.Read() ? Read(reader) : null;
    });

    /// <inheritdoc />
    public Task<IReadOnlyList<ApiKeyRecord>> ListAsync(string? tenantId, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand("SELECT id, tenant_id, name, prefix, secret_hash, role, created_at, last_used_at, revoked_at FROM api_keys" + (tenantId is null ? "" : " WHERE tenant_id = $tenant") + " ORDER BY created_at", c);
        if (tenantId is not null)
            command.Parameters.AddWithValue("$tenant", tenantId);
        using var reader = command.ExecuteReader();
        var list = new List<ApiKeyRecord>();
        while (reader.Read())
            list.Add(Read(reader));
        return (IReadOnlyList<ApiKeyRecord>)list;
    });

    /// <inheritdoc />
    public Task TouchAsync(string id, DateTimeOffset when, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("UPDATE api_keys SET last_used_at = $when WHERE id = $id", c);
        command.Parameters.AddWithValue("$id", id);
        command.Parameters.AddWithValue("$when", when.ToUnixTimeMilliseconds());
        return command.ExecuteNonQuery();
    }, cancellationToken);

    /// <inheritdoc />
    public Task RevokeAsync(string id, DateTimeOffset when, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("UPDATE api_keys SET revoked_at = $when WHERE id = $id AND revoked_at IS NULL", c);
        command.Parameters.AddWithValue("$id", id);
        command.Parameters.AddWithValue("$when", when.ToUnixTimeMilliseconds());
        return command.ExecuteNonQuery();
    }, cancellationToken);

    private static ApiKeyRecord Read(SqliteDataReader r) => new()
    {
        Id = r.GetString(0),
        TenantId = r.GetString(1),
        Name = r.GetString(2),
        Prefix = r.GetString(3),
        SecretHash = (byte[])r[4],
        Role = r.GetString(5),
        CreatedAt = DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(6)),
        LastUsedAt = r.IsDBNull(7) ? null : DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(7)),
        RevokedAt = r.IsDBNull(8) ? null : DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(8)),
    };
}
