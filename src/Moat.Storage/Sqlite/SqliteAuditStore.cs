using System.Runtime.CompilerServices;
using Microsoft.Data.Sqlite;
using Moat.Core.State;

namespace Moat.Storage.Sqlite;

/// <summary>The audit chain in SQLite: inserts only (triggers refuse updates and deletes).</summary>
public sealed class SqliteAuditStore(SqliteDatabase database) : IAuditStore
{
    private const string Columns = "seq, time, kind, tenant_id, key_id, sandbox_id, action, result, data, prev_hash, hash";

    /// <inheritdoc />
    public Task AppendAsync(IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        if (entries.Count == 0)
            return 0;
        using var tx = c.BeginTransaction();
        using var insert = new SqliteCommand($"INSERT INTO audit_log ({Columns}) VALUES ($seq, $time, $kind, $tenant, $key, $sandbox, $action, $result, $data, $prev, $hash)", c, tx);
        var p = new[] { "$seq", "$time", "$kind", "$tenant", "$key", "$sandbox", "$action", "$result", "$data", "$prev", "$hash" }.Select(n => insert.Parameters.Add(n, SqliteType.Text)).ToArray();
        foreach (var e in entries)
        {
            p[0].Value = e.Seq;
            p[1].Value = e.Time.ToUnixTimeMilliseconds();
            p[2].Value = e.Kind;
            p[3].Value = (object?)e.TenantId ?? DBNull.Value;
            p[4].Value = (object?)e.KeyId ?? DBNull.Value;
            p[5].Value = (object?)e.SandboxId ?? DBNull.Value;
            p[6].Value = e.Action;
            p[7].Value = (object?)e.Result ?? DBNull.Value;
            p[8].Value = (object?)e.Data ?? DBNull.Value;
            p[9].Value = e.PrevHash;
            p[10].Value = e.Hash;
            insert.ExecuteNonQuery();
        }
        var last = entries[^1];
        using var head = new SqliteCommand("INSERT INTO audit_head (id, seq, hash) VALUES (1, $seq, $hash) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash", c, tx);
        head.Parameters.AddWithValue("$seq", last.Seq);
        head.Parameters.AddWithValue("$hash", last.Hash);
        head.ExecuteNonQuery();
        tx.Commit();
        return entries.Count;
    }, cancellationToken);

    /// <inheritdoc />
    public Task<(long Seq, string Hash)?> HeadAsync(CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand("SELECT seq, hash FROM audit_head WHERE id = 1", c);
        using var reader = command.ExecuteReader();
        return reader.Read() ? ((long, string)?)(reader.GetInt64(0), reader.GetString(1)) : null;
    });

    /// <inheritdoc />
    public Task<IReadOnlyList<AuditEntry>> QueryAsync(AuditQuery query, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        var where = new List<string> { "seq > $after" };
        using var command = new SqliteCommand { Connection = c };
        command.Parameters.AddWithValue("$after", query.AfterSeq);
        if (query.TenantId is not null)
        {
            where.Add("tenant_id = $tenant");
            command.Parameters.AddWithValue("$tenant", query.TenantId);
        }
        if (query.SandboxId is not null)
        {
            where.Add("sandbox_id = $sandbox");
            command.Parameters.AddWithValue("$sandbox", query.SandboxId);
        }
        if (query.Kind is not null)
        {
            where.Add("kind = $kind");
            command.Parameters.AddWithValue("$kind", query.Kind);
        }
        if (query.Since is { } since)
        {
            where.Add("time >= $since");
            command.Parameters.AddWithValue("$since", since.ToUnixTimeMilliseconds());
        }
        if (query.Until is { } until)
        {
            where.Add("time < $until");
            command.Parameters.AddWithValue("$until", until.ToUnixTimeMilliseconds());
        }
        command.CommandText = $"SELECT {Columns} FROM audit_log WHERE {string.Join(" AND ", where)} ORDER BY seq LIMIT $limit";
        command.Parameters.AddWithValue("$limit", query.Limit);
        using var reader = command.ExecuteReader();
        var list = new List<AuditEntry>();
        while (reader.Read())
            list.Add(Read(reader));
        return (IReadOnlyList<AuditEntry>)list;
    });

    /// <inheritdoc />
    public async IAsyncEnumerable<AuditEntry> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        long after = 0;
        while (true)
        {
            var page = await QueryAsync(new AuditQuery { AfterSeq = after, Limit = 5000 }, cancellationToken).ConfigureAwait(false);
            foreach (var e in page)
                yield return e;
            if (page.Count < 5000)
                yield break;
            after = page[^1].Seq;
        }
    }

    private static AuditEntry Read(SqliteDataReader r) => new()
    {
        Seq = r.GetInt64(0),
        Time = DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(1)),
        Kind = r.GetString(2),
        TenantId = r.IsDBNull(3) ? null : r.GetString(3),
        KeyId = r.IsDBNull(4) ? null : r.GetString(4),
        SandboxId = r.IsDBNull(5) ? null : r.GetString(5),
        Action = r.GetString(6),
        Result = r.IsDBNull(7) ? null : r.GetString(7),
        Data = r.IsDBNull(8) ? null : r.GetString(8),
        PrevHash = r.GetString(9),
        Hash = r.GetString(10),
    };
}
