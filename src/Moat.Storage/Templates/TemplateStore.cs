using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Templates;
using Moat.Storage.Oci;
using Moat.Storage.Sqlite;

namespace Moat.Storage.Templates;

/// <summary>A template as the store keeps it: a name in a tenant (or public) pointing at an image.</summary>
public sealed record TemplateRecord
{
    /// <summary>Owning tenant; empty for a public template the operator shares with every tenant.</summary>
    public required string Tenant { get; init; }
    /// <summary>Template name, unique within its tenant.</summary>
    public required string Name { get; init; }
    /// <summary>Image id: the digest of the image config (<c>sha256:...</c>).</summary>
    public required string ImageId { get; init; }
    /// <summary>Layer diff ids (hex), lowest first.</summary>
    public required IReadOnlyList<string> Layers { get; init; }
    /// <summary>The image config Moat honours.</summary>
    public required ImageConfig Config { get; init; }
    /// <summary>Declared bytes of the layers' files.</summary>
    public long SizeBytes { get; init; }
    /// <summary>Where it came from: <c>builtin</c>, <c>import:FILE</c>, <c>pull:REF@DIGEST</c>, <c>build</c>, <c>tag:NAME</c>.</summary>
    public string Source { get; init; } = "";
    /// <summary>Start command and ready check, if any.</summary>
    public TemplateStart? Start { get; init; }
    /// <summary>When it was made.</summary>
    public DateTimeOffset CreatedAt { get; init; }

    /// <summary>Whether every tenant sees it.</summary>
    public bool IsPublic => Tenant.Length == 0;
}

/// <summary>
/// Templates: names (per tenant, or public) over images in the <see cref="ImageStore"/>. A tenant's
/// own template shadows a public one of the same name; another tenant's does not exist for it.
/// </summary>
public sealed partial class TemplateStore(SqliteDatabase database, ImageStore images, ILogger<TemplateStore> logger) : ITemplateStore
{
    private const string Columns = "tenant, name, image_id, layers, config, size_bytes, source, meta, created_at";
    private readonly SemaphoreSlim _builtinLock = new(1, 1);

    /// <summary>The content store.</summary>
    public ImageStore Images => images;

    /// <summary>Root of the layer store.</summary>
    public string LayersDirectory => images.LayersDirectory;

    /// <summary>Checks a template name: 1-128 characters of letters, digits and <c>._-:/</c>, starting with a letter or digit.</summary>
    public static string ValidName(string? name)
    {
        if (string.IsNullOrEmpty(name) || name.Length > 128 || !char.IsAsciiLetterOrDigit(name[0])
            || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-' or ':' or '/') || name.Contains(".."))
            throw MoatException.Invalid("invalid_template_name", $"'{name}' is not a valid template name: use 1-128 letters, digits and . _ - : /, starting with a letter or digit");
        return name;
    }

    /// <inheritdoc />
    public async Task<TemplateImage?> ResolveAsync(string name, string tenantId, CancellationToken cancellationToken)
    {
        var record = await GetAsync(name, tenantId, cancellationToken).ConfigureAwait(false);
        return record is null ? null : ToImage(record);
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<TemplateImage>> ListAsync(string tenantId, CancellationToken cancellationToken) =>
        (await ListRecordsAsync(tenantId, cancellationToken).ConfigureAwait(false)).Select(ToImage).ToList();

    /// <summary>What a sandbox is launched from.</summary>
    public TemplateImage ToImage(TemplateRecord record) => new()
    {
        // The hex digest alone: runtimes use the id in host paths (and overlayfs splits options on ':').
        Id = record.ImageId.StartsWith("sha256:", StringComparison.Ordinal) ? record.ImageId[7..] : record.ImageId,
        Name = record.Name,
        LayerPaths = record.Layers.Select(images.LayerPath).ToList(),
        Config = record.Config,
        Start = record.Start,
        CheckpointTier = SandboxSnapshots.CheckpointTierOf(record),
    };

    /// <summary>The template a tenant means by <paramref name="name"/>: its own, else a public one.</summary>
    public Task<TemplateRecord?> GetAsync(string name, string tenantId, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand($"SELECT {Columns} FROM template_images WHERE name = $name AND (tenant = $tenant OR tenant = '') ORDER BY tenant = '' LIMIT 1", c);
        command.Parameters.AddWithValue("$name", name);
        command.Parameters.AddWithValue("$tenant", tenantId);
        using var reader = command.ExecuteReader();
        return reader.Read() ? Read(reader) : null;
    });

    /// <summary>A template exactly in <paramref name="tenant"/> (empty: public).</summary>
    public Task<TemplateRecord?> GetExactAsync(string name, string tenant, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand($"SELECT {Columns} FROM template_images WHERE name = $name AND tenant = $tenant", c);
        command.Parameters.AddWithValue("$name", name);
        command.Parameters.AddWithValue("$tenant", tenant);
        using var reader = command.ExecuteReader();
        return reader.Read() ? Read(reader) : null;
    });

    /// <summary>Templates a tenant sees: its own and the public ones it does not shadow.</summary>
    public Task<IReadOnlyList<TemplateRecord>> ListRecordsAsync(string tenantId, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand($"SELECT {Columns} FROM template_images WHERE (tenant = $tenant OR tenant = '') AND name NOT LIKE '~%' ORDER BY name, tenant = ''", c);
        command.Parameters.AddWithValue("$tenant", tenantId);
        using var reader = command.ExecuteReader();
        var list = new List<TemplateRecord>();
        while (reader.Read())
        {
            var record = Read(reader);
            if (list.Count > 0 && list[^1].Name == record.Name)
                continue; // a public one shadowed by the tenant's own
            list.Add(record);
        }
        return (IReadOnlyList<TemplateRecord>)list;
    });

    /// <summary>Creates or replaces the template (tenant, name).</summary>
    public Task<TemplateRecord> SaveAsync(TemplateRecord record, CancellationToken cancellationToken)
    {
        ValidName(record.Name);
        return SaveCoreAsync(record, cancellationToken);
    }

    /// <summary>
    /// Saves a working template of a build (its name starts with <c>~</c>, which no user name may):
    /// listed nowhere, resolvable by its tenant while the build runs a step in it.
    /// </summary>
    internal Task<TemplateRecord> SaveHiddenAsync(TemplateRecord record, CancellationToken cancellationToken) =>
        record.Name.StartsWith('~') ? SaveCoreAsync(record, cancellationToken) : throw new ArgumentException("hidden templates start with ~", nameof(record));

    private async Task<TemplateRecord> SaveCoreAsync(TemplateRecord record, CancellationToken cancellationToken)
    {
        foreach (var layer in record.Layers)
        {
            if (!images.HasLayer(layer))
                throw new InvalidOperationException($"layer {layer} is not in the store");
        }
        var size = record.SizeBytes > 0 ? record.SizeBytes : await images.SizeOfAsync(record.Layers).ConfigureAwait(false);
        var saved = record with { SizeBytes = size, CreatedAt = record.CreatedAt == default ? DateTimeOffset.UtcNow : record.CreatedAt };
        await database.WriteAsync(c =>
        {
            using var upsert = new SqliteCommand($"INSERT OR REPLACE INTO template_images ({Columns}) VALUES ($tenant, $name, $image, $layers, $config, $size, $source, $meta, $created)", c);
            upsert.Parameters.AddWithValue("$tenant", saved.Tenant);
            upsert.Parameters.AddWithValue("$name", saved.Name);
            upsert.Parameters.AddWithValue("$image", saved.ImageId);
            upsert.Parameters.AddWithValue("$layers", JsonSerializer.Serialize(saved.Layers.ToList(), StorageJson.Default.ListString));
            upsert.Parameters.AddWithValue("$config", JsonSerializer.Serialize(saved.Config, StorageJson.Default.ImageConfig));
            upsert.Parameters.AddWithValue("$size", saved.SizeBytes);
            upsert.Parameters.AddWithValue("$source", saved.Source);
            upsert.Parameters.AddWithValue("$meta", JsonSerializer.Serialize(new TemplateMeta { Start = saved.Start }, StorageJson.Default.TemplateMeta));
            upsert.Parameters.AddWithValue("$created", saved.CreatedAt.ToUnixTimeMilliseconds());
            return upsert.ExecuteNonQuery();
        }, cancellationToken).ConfigureAwait(false);
        LogSaved(logger, saved.Name, saved.IsPublic ? "public" : saved.Tenant, saved.ImageId, saved.Source);
        return saved;
    }

    /// <summary>Removes the template (tenant, name); false when there was none.</summary>
    public Task<bool> DeleteAsync(string name, string tenant, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var delete = new SqliteCommand("DELETE FROM template_images WHERE name = $name AND tenant = $tenant", c);
        delete.Parameters.AddWithValue("$name", name);
        delete.Parameters.AddWithValue("$tenant", tenant);
        return delete.ExecuteNonQuery() > 0;
    }, cancellationToken);

    /// <summary>
    /// Makes sure a public template <paramref name="name"/> exists, importing it from a rootfs
    /// tarball made by Moat's own set-up when it does not (or when the tarball changed). The tarball
    /// goes through the same unpacker as any image: the built-in is an ordinary one-layer template.
    /// </summary>
    public async Task<TemplateImage> EnsureBuiltinAsync(string name, string tarball, ImageConfig config, CancellationToken cancellationToken)
    {
        if (!File.Exists(tarball))
            throw new MoatException(ErrorKind.Unavailable, "builtin_template_missing", $"the built-in template '{name}' needs {tarball}; run ./run.sh (or build/templates.sh) to build it");
        await _builtinLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        // Another process (a one-shot `moat run`, a second server) may import at the same time.
        using var crossProcess = await LockFileAsync(Path.Combine(images.LayersDirectory, "..", ".import.lock"), cancellationToken).ConfigureAwait(false);
        try
        {
            string digest = await DigestAsync(tarball, cancellationToken).ConfigureAwait(false);
            var existing = await GetExactAsync(name, "", cancellationToken).ConfigureAwait(false);
            if (existing is not null && existing.Layers.Count == 1 && existing.Layers[0] == digest && images.HasLayer(digest))
                return ToImage(existing);
            if (!images.HasLayer(digest))
                LogImporting(logger, name, tarball);
            // The built-in's tarball is its own diff id, and its image id the digest of a config naming it.
            await images.AddLayerAsync(_ => Task.FromResult<Stream>(File.OpenRead(tarball)), "sha256:" + digest, cancellationToken).ConfigureAwait(false);
            await images.RecordLayerAsync(digest, new FileInfo(tarball).Length, cancellationToken).ConfigureAwait(false);
            var record = await SaveAsync(new TemplateRecord
            {
                Tenant = "",
                Name = name,
                ImageId = "sha256:" + digest,
                Layers = [digest],
                Config = config,
                SizeBytes = new FileInfo(tarball).Length,
                Source = "builtin",
            }, cancellationToken).ConfigureAwait(false);
            return ToImage(record);
        }
        finally
        {
            _builtinLock.Release();
        }
    }

    private static TemplateRecord Read(SqliteDataReader reader)
    {
        var meta = JsonSerializer.Deserialize(reader.GetString(7), StorageJson.Default.TemplateMeta) ?? new TemplateMeta();
        return new TemplateRecord
        {
            Tenant = reader.GetString(0),
            Name = reader.GetString(1),
            ImageId = reader.GetString(2),
            Layers = JsonSerializer.Deserialize(reader.GetString(3), StorageJson.Default.ListString) ?? [],
            Config = JsonSerializer.Deserialize(reader.GetString(4), StorageJson.Default.ImageConfig) ?? new ImageConfig(),
            SizeBytes = reader.GetInt64(5),
            Source = reader.GetString(6),
            Start = meta.Start,
            CreatedAt = DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(8)),
        };
    }

    private static async Task<FileStream> LockFileAsync(string path, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        while (true)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException)
            {
                await Task.Delay(100, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    private static async Task<string> DigestAsync(string path, CancellationToken cancellationToken)
    {
        // Cache the digest next to the tarball: hashing 200 MB at every start would cost seconds.
        var stamp = path + ".sha256";
        var info = new FileInfo(path);
        string key = $"{info.Length}:{info.LastWriteTimeUtc.Ticks}";
        if (File.Exists(stamp))
        {
            var parts = (await File.ReadAllTextAsync(stamp, cancellationToken).ConfigureAwait(false)).Trim().Split(' ');
            if (parts.Length == 2 && parts[1] == key)
                return parts[0];
        }
        await using var stream = File.OpenRead(path);
        var digest = Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, cancellationToken).ConfigureAwait(false));
        try
        {
            await File.WriteAllTextAsync(stamp, $"{digest} {key}", cancellationToken).ConfigureAwait(false);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return digest;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Importing built-in template {Name} from {Tarball}")]
    private static partial void LogImporting(ILogger logger, string name, string tarball);

    [LoggerMessage(Level = LogLevel.Information, Message = "Template {Name} ({Tenant}) is image {ImageId} from {Source}")]
    private static partial void LogSaved(ILogger logger, string name, string tenant, string imageId, string source);
}

/// <summary>What a template row keeps beyond its columns.</summary>
internal sealed record TemplateMeta
{
    public TemplateStart? Start { get; init; }
}
