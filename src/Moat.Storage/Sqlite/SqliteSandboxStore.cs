using System.Text.Json;
using Microsoft.Data.Sqlite;
using Moat.Core.Sandboxes;
using Moat.Core.State;

namespace Moat.Storage.Sqlite;

/// <summary>Sandbox records in SQLite: indexed columns for queries, the whole record as JSON.</summary>
public sealed class SqliteSandboxStore(SqliteDatabase database) : ISandboxStore
{
    /// <inheritdoc />
    public Task InsertAsync(SandboxRecord record, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("INSERT INTO sandboxes (id, tenant_id, state, created_at, ended_at, record) VALUES ($id, $tenant, $state, $created, $ended, $record)", c);
        Bind(command, record);
        return command.ExecuteNonQuery();
    }, cancellationToken);

    /// <inheritdoc />
    public Task UpdateAsync(SandboxRecord record, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("UPDATE sandboxes SET state = $state, ended_at = $ended, record = $record WHERE id = $id", c);
        Bind(command, record);
        return command.ExecuteNonQuery();
    }, cancellationToken);

    /// <inheritdoc />
    public Task<SandboxRecord?> GetAsync(string id, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand("SELECT record FROM sandboxes WHERE id = $id", c);
        command.Parameters.AddWithValue("$id", id);
        return command.ExecuteScalar() is string json ? Parse(json) : null;
    });

    /// <inheritdoc />
    public Task<IReadOnlyList<SandboxRecord>> ListAsync(SandboxQuery query, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        var sql = "SELECT record FROM sandboxes WHERE 1=1";
        using var command = new SqliteCommand { Connection = c };
        if (query.TenantId is not null)
        {
            sql += " AND tenant_id = $tenant";
            command.Parameters.AddWithValue("$tenant", query.TenantId);
        }
        if (query.States.Count > 0)
        {
            var names = query.States.Select((s, i) => $"$s{i}").ToList();
            sql += $" AND state IN ({string.Join(',', names)})";
            int i = 0;
            foreach (var state in query.States)
                command.Parameters.AddWithValue($"$s{i++}", state.Name());
        }
        sql += " ORDER BY created_at DESC";
        command.CommandText = sql;
        var result = new List<SandboxRecord>();
        using var reader = command.ExecuteReader();
        while (reader.Read() && result.Count < query.Limit)
        {
            var record = Parse(reader.GetString(0));
            if (record is not null && query.Metadata.All(kv => record.Spec.Metadata.TryGetValue(kv.Key, out var v) && v == kv.Value))
                result.Add(record);
        }
        return (IReadOnlyList<SandboxRecord>)result;
    });

    /// <summary>Deletes records of sandboxes that ended before <paramref name="before"/>.</summary>
    public Task<int> PruneAsync(DateTimeOffset before, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("DELETE FROM sandboxes WHERE ended_at IS NOT NULL AND ended_at < $before", c);
        command.Parameters.AddWithValue("$before", before.ToUnixTimeMilliseconds());
        return command.ExecuteNonQuery();
    }, cancellationToken);

    private static void Bind(SqliteCommand command, SandboxRecord record)
    {
        command.Parameters.AddWithValue("$id", record.Id);
        command.Parameters.AddWithValue("$tenant", record.TenantId);
        command.Parameters.AddWithValue("$state", record.State.Name());
        command.Parameters.AddWithValue("$created", record.CreatedAt.ToUnixTimeMilliseconds());
        command.Parameters.AddWithValue("$ended", record.EndedAt is { } e ? e.ToUnixTimeMilliseconds() : DBNull.Value);
        command.Parameters.AddWithValue("$record", JsonSerializer.Serialize(record, StorageJson.Default.SandboxRecord));
    }

    private static SandboxRecord? Parse(string json) => JsonSerializer.Deserialize(json, StorageJson.Default.SandboxRecord);
}
