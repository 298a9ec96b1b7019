using Microsoft.Data.Sqlite;

namespace Moat.Storage.Sqlite;

/// <summary>
/// Schema version 3: tenants (with their quotas and rate limits), the hash-chained audit log and
/// daily usage. The audit table refuses UPDATE and DELETE by trigger; the hash chain (checked by
/// <c>moat audit verify</c>) catches whoever drops the triggers and edits the file anyway.
/// </summary>
internal static class TenancySchema
{
    public static void MigrateToV3(SqliteConnection connection)
    {
        using var tx = connection.BeginTransaction();
        SqliteDatabase.Execute(connection, """
            CREATE TABLE tenants (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                settings TEXT NOT NULL
            );
            INSERT INTO tenants (id, name, created_at, settings) VALUES ('default', 'default', CAST(strftime('%s','now') AS INTEGER) * 1000, '{}');
            INSERT OR IGNORE INTO tenants (id, name, created_at, settings)
                SELECT DISTINCT tenant_id, tenant_id, CAST(strftime('%s','now') AS INTEGER) * 1000, '{}' FROM api_keys;
            CREATE TABLE audit_log (
                seq INTEGER PRIMARY KEY,
                time INTEGER NOT NULL,
                kind TEXT NOT NULL,
                tenant_id TEXT,
                key_id TEXT,
                sandbox_id TEXT,
                action TEXT NOT NULL,
                result TEXT,
                data TEXT,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            );
            CREATE INDEX audit_by_tenant ON audit_log(tenant_id, seq);
            CREATE INDEX audit_by_sandbox ON audit_log(sandbox_id, seq);
            CREATE INDEX audit_by_time ON audit_log(time);
            CREATE TABLE audit_head (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                seq INTEGER NOT NULL,
                hash TEXT NOT NULL
            );
            CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
            CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
            CREATE TABLE usage_daily (
                tenant_id TEXT NOT NULL,
                day TEXT NOT NULL,
                vcpu_seconds REAL NOT NULL,
                memory_gib_seconds REAL NOT NULL,
                disk_gib_hours REAL NOT NULL,
                sandbox_seconds REAL NOT NULL,
                PRIMARY KEY (tenant_id, day)
            );
            """, tx);
        SqliteDatabase.Execute(connection, "PRAGMA user_version = 3;", tx);
        tx.Commit();
    }
}
