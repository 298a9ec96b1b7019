using Microsoft.Data.Sqlite;
using Moat.Core.State;

namespace Moat.Storage.Sqlite;

/// <summary>Tenants in SQLite.</summary>
public sealed class SqliteTenantStore(SqliteDatabase database) : ITenantStore
{
    /// <inheritdoc />
    public Task<bool> InsertAsync(TenantRecord tenant, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("INSERT OR IGNORE INTO tenants (id, name, created_at, settings) VALUES ($id, $name, $created, $settings)", c);
        Bind(command, tenant);
        return command.ExecuteNonQuery() == 1;
    }, cancellationToken);

    /// <inheritdoc />
    public Task<TenantRecord?> GetAsync(string id, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand("SELECT id, name, created_at, settings FROM tenants WHERE id = $id", c);
        command.Parameters.AddWithValue("$id", id);
        using var reader = command.ExecuteReader();
        return reader.Read() ? Read(reader) : null;
    });

    /// <inheritdoc />
    public Task<IReadOnlyList<TenantRecord>> ListAsync(CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand("SELECT id, name, created_at, settings FROM tenants ORDER BY created_at, id", c);
        using var reader = command.ExecuteReader();
        var list = new List<TenantRecord>();
        while (reader.Read())
            list.Add(Read(reader));
        return (IReadOnlyList<TenantRecord>)list;
    });

    /// <inheritdoc />
    public Task<bool> UpdateAsync(TenantRecord tenant, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("UPDATE tenants SET name = $name, settings = $settings WHERE id = $id", c);
        Bind(command, tenant);
        return command.ExecuteNonQuery() == 1;
    }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> DeleteAsync(string id, DateTimeOffset when, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var tx = c.BeginTransaction();
        using var delete = new SqliteCommand("DELETE FROM tenants WHERE id = $id", c, tx);
        delete.Parameters.AddWithValue("$id", id);
        if (delete.ExecuteNonQuery() != 1)
            return false;
        using var revoke = new SqliteCommand("UPDATE api_keys SET revoked_at = $when WHERE tenant_id = $id AND revoked_at IS NULL", c, tx);
        revoke.Parameters.AddWithValue("$id", id);
        revoke.Parameters.AddWithValue("$when", when.ToUnixTimeMilliseconds());
        revoke.ExecuteNonQuery();
        tx.Commit();
        return true;
    }, cancellationToken);

    private static void Bind(SqliteCommand command, TenantRecord tenant)
    {
        command.Parameters.AddWithValue("$id", tenant.Id);
        command.Parameters.AddWithValue("$name", tenant.Name);
        command.Parameters.AddWithValue("$created", tenant.CreatedAt.ToUnixTimeMilliseconds());
        command.Parameters.AddWithValue("$settings", tenant.Settings);
    }

    private static TenantRecord Read(SqliteDataReader r) =>
        new(r.GetString(0), r.GetString(1), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(2)), r.GetString(3));
}
