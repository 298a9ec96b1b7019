using Microsoft.Data.Sqlite;

namespace Moat.Storage.Sqlite;

/// <summary>
/// The node's SQLite database (WAL mode) in the data directory. Readers run concurrently; writers
/// are serialized here so that no request ever waits on SQLite's own busy loop.
/// </summary>
public sealed class SqliteDatabase : IDisposable
{
    /// <summary>The schema version a database is migrated to.</summary>
    public const int SchemaVersion = 3;
    private readonly string _connectionString;
    private readonly SemaphoreSlim _writeLock = new(1, 1);

    /// <summary>Opens (creating and migrating if needed) the database at <paramref name="path"/>.</summary>
    public SqliteDatabase(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        _connectionString = new SqliteConnectionStringBuilder { DataSource = path, Pooling = true, DefaultTimeout = 30 }.ToString();
        using var connection = Open();
        Execute(connection, "PRAGMA journal_mode=WAL;");
        Migrate(connection);
    }

    /// <summary>A new pooled connection, ready to use.</summary>
    public SqliteConnection Open()
    {
        var connection = new SqliteConnection(_connectionString);
        connection.Open();
        Execute(connection, "PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000; PRAGMA foreign_keys=ON;");
        return connection;
    }

    /// <summary>Runs <paramref name="write"/> as the only writer.</summary>
    public async Task<T> WriteAsync<T>(Func<SqliteConnection, T> write, CancellationToken cancellationToken)
    {
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var connection = Open();
            return write(connection);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>Runs a read.</summary>
    public Task<T> ReadAsync<T>(Func<SqliteConnection, T> read)
    {
        using var connection = Open();
        return Task.FromResult(read(connection));
    }

    private static void Migrate(SqliteConnection connection)
    {
        long version = (long)new SqliteCommand("PRAGMA user_version;", connection).ExecuteScalar()!;
        if (version >= SchemaVersion)
            return;
        if (version < 1)
            MigrateToV1(connection);
        if (version < 2)
            MigrateToV2(connection);
        if (version < 3)
            TenancySchema.MigrateToV3(connection);
    }

    private static void MigrateToV1(SqliteConnection connection)
    {
        using var tx = connection.BeginTransaction();
        Execute(connection, """
            CREATE TABLE IF NOT EXISTS sandboxes (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL,
                state TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                ended_at INTEGER,
                record TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS sandboxes_by_tenant ON sandboxes(tenant_id, created_at DESC);
            CREATE INDEX IF NOT EXISTS sandboxes_by_state ON sandboxes(state);
            CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL,
                name TEXT NOT NULL,
                prefix TEXT NOT NULL,
                secret_hash BLOB NOT NULL,
                role TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                last_used_at INTEGER,
                revoked_at INTEGER
            );
            CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys(tenant_id);
            CREATE TABLE IF NOT EXISTS templates (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                tenant_id TEXT,
                layers TEXT NOT NULL,
                config TEXT NOT NULL,
                size_bytes INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            );
            CREATE UNIQUE INDEX IF NOT EXISTS templates_by_name ON templates(ifnull(tenant_id, ''), name);
            """, tx);
        Execute(connection, "PRAGMA user_version = 1;", tx);
        tx.Commit();
    }

    /// <summary>
    /// Version 2, the image store: a template is a (tenant, name) pointing at an image (several
    /// names and tenants may share one, so the image id is no longer the key); the layers it is
    /// made of are recorded with their sizes; the build cache and per-tenant registry credentials.
    /// </summary>
    private static void MigrateToV2(SqliteConnection connection)
    {
        using var tx = connection.BeginTransaction();
        Execute(connection, """
            CREATE TABLE template_images (
                tenant TEXT NOT NULL,
                name TEXT NOT NULL,
                image_id TEXT NOT NULL,
                layers TEXT NOT NULL,
                config TEXT NOT NULL,
                size_bytes INTEGER NOT NULL,
                source TEXT NOT NULL,
                meta TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (tenant, name)
            );
            INSERT INTO template_images (tenant, name, image_id, layers, config, size_bytes, source, meta, created_at)
                SELECT ifnull(tenant_id, ''), name, 'sha256:' || id, layers, config, size_bytes, 'builtin', '{}', created_at FROM templates;
            DROP TABLE templates;
            CREATE TABLE layers (
                diff_id TEXT PRIMARY KEY,
                size_bytes INTEGER NOT NULL,
                entries INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            );
            CREATE TABLE build_cache (
                key TEXT PRIMARY KEY,
                diff_id TEXT,
                config TEXT NOT NULL,
                created_at INTEGER NOT NULL
            );
            CREATE TABLE registry_credentials (
                tenant TEXT NOT NULL,
                registry TEXT NOT NULL,
                username TEXT NOT NULL,
                secret BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (tenant, registry)
            );
            """, tx);
        Execute(connection, "PRAGMA user_version = 2;", tx);
        tx.Commit();
    }

    internal static void Execute(SqliteConnection connection, string sql, SqliteTransaction? tx = null)
    {
        using var command = new SqliteCommand(sql, connection, tx);
        command.ExecuteNonQuery();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _writeLock.Dispose();
        SqliteConnection.ClearAllPools();
    }
}
