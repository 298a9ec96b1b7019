using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;
using Moat.Core.Errors;
using Moat.Core.Templates;
using Moat.Storage.Oci;
using Moat.Storage.Sqlite;
using Moat.Storage.Templates;

namespace Moat.Tests;

/// <summary>The template records: upgrade from schema 1, names per tenant, shadowing, garbage collection of layers.</summary>
public sealed class TemplatesStoreTests : IDisposable
{
    private readonly string _data = Path.Combine(Path.GetTempPath(), "moat-tstore-" + Guid.NewGuid().ToString("N")[..8]);

    public void Dispose() => ImageStore.RemoveQuietly(_data);

    private (SqliteDatabase Db, ImageStore Images, TemplateStore Templates) Open()
    {
        var db = new SqliteDatabase(Path.Combine(_data, "moat.db"));
        var images = new ImageStore(db, _data, new LayerLimits(), NullLogger<ImageStore>.Instance);
        return (db, images, new TemplateStore(db, images, NullLogger<TemplateStore>.Instance));
    }

    [Fact]
    public async Task A_schema_1_database_is_upgraded_and_keeps_its_templates()
    {
        // What version 1 wrote: the built-in keyed by the digest of its tarball, one layer directory.
        Directory.CreateDirectory(_data);
        var digest = new string('a', 64);
        Directory.CreateDirectory(Path.Combine(_data, "layers", "sha256", digest, "etc"));
        using (var connection = new SqliteConnection($"Data Source={Path.Combine(_data, "moat.db")}"))
        {
            connection.Open();
            foreach (var sql in new[]
            {
                "CREATE TABLE sandboxes (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, state TEXT NOT NULL, created_at INTEGER NOT NULL, ended_at INTEGER, record TEXT NOT NULL)",
                "CREATE TABLE api_keys (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL, prefix TEXT NOT NULL, secret_hash BLOB NOT NULL, role TEXT NOT NULL, created_at INTEGER NOT NULL, last_used_at INTEGER, revoked_at INTEGER)",
                "CREATE TABLE templates (id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id TEXT, layers TEXT NOT NULL, config TEXT NOT NULL, size_bytes INTEGER NOT NULL, created_at INTEGER NOT NULL)",
                $"INSERT INTO templates VALUES ('{digest}', 'base', NULL, '[\"{digest}\"]', '{{\"env\":[\"PATH=/bin\",\"LANG=C.UTF-8\"]}}', 1234, 1700000000000)",
                $"INSERT INTO templates VALUES ('{new string('b', 64)}', 'mine', 'tenant-a', '[\"{digest}\"]', '{{}}', 99, 1700000000000)",
                "PRAGMA user_version = 1",
            })
            {
                using var command = new SqliteCommand(sql, connection);
                command.ExecuteNonQuery();
            }
        }
        SqliteConnection.ClearAllPools();

        var (db, _, templates) = Open();
        using (db)
        {
            var builtin = await templates.GetAsync("base", "tenant-z", CancellationToken.None);
            Assert.NotNull(builtin);
            Assert.True(builtin.IsPublic);
            Assert.Equal("sha256:" + digest, builtin.ImageId);
            Assert.Equal(["PATH=/bin", "LANG=C.UTF-8"], builtin.Config.Env);
            Assert.Equal(1234, builtin.SizeBytes);
            var image = await templates.ResolveAsync("base", "tenant-z", CancellationToken.None);
            Assert.Equal(Path.Combine(_data, "layers", "sha256", digest), Assert.Single(image!.LayerPaths));
            Assert.NotNull(await templates.GetAsync("mine", "tenant-a", CancellationToken.None));
            Assert.Null(await templates.GetAsync("mine", "tenant-b", CancellationToken.None));
            using var version = new SqliteCommand("PRAGMA user_version", db.Open());
            Assert.Equal(SqliteDatabase.SchemaVersion, (long)version.ExecuteScalar()!); // migrated all the way from 1
        }
    }

    [Fact]
    public async Task A_tenants_own_template_shadows_a_public_one_and_names_are_checked()
    {
        var (db, images, templates) = Open();
        using (db)
        {
            var a = await images.AddLayerAsync(_ => Task.FromResult<Stream>(new MemoryStream(new LayerTar().File("a", "public").Bytes())), null, CancellationToken.None);
            var b = await images.AddLayerAsync(_ => Task.FromResult<Stream>(new MemoryStream(new LayerTar().File("a", "own").Bytes())), null, CancellationToken.None);
            await templates.SaveAsync(new TemplateRecord { Tenant = "", Name = "py", ImageId = "sha256:" + a, Layers = [a], Config = new ImageConfig() }, CancellationToken.None);
            await templates.SaveAsync(new TemplateRecord { Tenant = "t1", Name = "py", ImageId = "sha256:" + b, Layers = [b], Config = new ImageConfig() }, CancellationToken.None);

            Assert.Equal(b, (await templates.GetAsync("py", "t1", CancellationToken.None))!.Layers[0]);
            Assert.Equal(a, (await templates.GetAsync("py", "t2", CancellationToken.None))!.Layers[0]);
            Assert.Single(await templates.ListRecordsAsync("t1", CancellationToken.None), t => t.Name == "py");
            foreach (var bad in new[] { "", "-x", "a b", "../x", "x..y", new string('n', 129), "~hidden" })
                Assert.Equal("invalid_template_name", Assert.Throws<MoatException>(() => TemplateStore.ValidName(bad)).Code);
            TemplateStore.ValidName("team/app:1.0_rc-2");
        }
    }

    [Fact]
    public async Task Layers_no_template_uses_are_collected_but_shared_ones_stay()
    {
        var (db, images, templates) = Open();
        using (db)
        {
            var shared = await images.AddLayerAsync(_ => Task.FromResult<Stream>(new MemoryStream(new LayerTar().File("s", "1").Bytes())), null, CancellationToken.None);
            var own = await images.AddLayerAsync(_ => Task.FromResult<Stream>(new MemoryStream(new LayerTar().File("o", "2").Bytes())), null, CancellationToken.None);
            await templates.SaveAsync(new TemplateRecord { Tenant = "t", Name = "one", ImageId = "sha256:1", Layers = [shared, own], Config = new ImageConfig() }, CancellationToken.None);
            await templates.SaveAsync(new TemplateRecord { Tenant = "t", Name = "two", ImageId = "sha256:2", Layers = [shared], Config = new ImageConfig() }, CancellationToken.None);
            // Fresh layers are kept for an hour (an import may not have saved its template yet): age them.
            await db.WriteAsync(c => new SqliteCommand("UPDATE layers SET created_at = 0", c).ExecuteNonQuery(), CancellationToken.None);

            await templates.DeleteAsync("one", "t", CancellationToken.None);
            Assert.Equal(1, await images.CollectGarbageAsync(CancellationToken.None));

            Assert.True(images.HasLayer(shared));
            Assert.False(images.HasLayer(own));
            Assert.DoesNotContain(Directory.EnumerateDirectories(images.LayersDirectory), d => Path.GetFileName(d).StartsWith('.'));
        }
    }
}
