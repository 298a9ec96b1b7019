using System.Collections.Concurrent;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Storage.Oci;
using Moat.Storage.Sqlite;

namespace Moat.Storage.Templates;

/// <summary>
/// The content-addressed store every template shares: unpacked layers at
/// <c>DATA/layers/sha256/DIFFID</c> (one directory per layer, keyed by the digest of its
/// uncompressed tar, unpacked once whatever image or tenant brings it), blobs being downloaded at
/// <c>DATA/blobs/sha256/DIGEST</c>, and scratch space for imports at <c>DATA/tmp</c>.
/// </summary>
public sealed partial class ImageStore
{
    private readonly SqliteDatabase _database;
    private readonly ILogger<ImageStore> _logger;
    private readonly ConcurrentDictionary<string, SemaphoreSlim> _layerLocks = new();

    /// <summary>Creates the store's directories under <paramref name="dataDirectory"/>.</summary>
    public ImageStore(SqliteDatabase database, string dataDirectory, LayerLimits limits, ILogger<ImageStore> logger)
    {
        _database = database;
        _logger = logger;
        Limits = limits;
        LayersDirectory = Path.Combine(dataDirectory, "layers", "sha256");
        BlobsDirectory = Path.Combine(dataDirectory, "blobs", "sha256");
        TempDirectory = Path.Combine(dataDirectory, "tmp");
        Directory.CreateDirectory(LayersDirectory);
        Directory.CreateDirectory(BlobsDirectory);
        Directory.CreateDirectory(TempDirectory);
        CleanStaging();
    }

    /// <summary>Unpacked layers, by diff id.</summary>
    public string LayersDirectory { get; }

    /// <summary>Blobs (downloads in progress and finished), by digest.</summary>
    public string BlobsDirectory { get; }

    /// <summary>Scratch space (imports being read); emptied of dead processes' leftovers at start.</summary>
    public string TempDirectory { get; }

    /// <summary>What one layer may hold.</summary>
    public LayerLimits Limits { get; }

    /// <summary>The directory of a layer (hex diff id).</summary>
    public string LayerPath(string diffIdHex) => Path.Combine(LayersDirectory, diffIdHex);

    /// <summary>Whether a layer is unpacked.</summary>
    public bool HasLayer(string diffIdHex) => Directory.Exists(LayerPath(diffIdHex));

    /// <summary>A fresh scratch directory, removed by the caller.</summary>
    public string NewTempDirectory(string purpose)
    {
        var path = Path.Combine(TempDirectory, $"{purpose}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..12]}");
        Directory.CreateDirectory(path);
        return path;
    }

    /// <summary>
    /// Unpacks a layer blob (gzip, zstd or plain tar, told apart by content) into the store unless
    /// it is there already, and checks that its uncompressed digest is <paramref name="expectedDiffId"/>
    /// (when given). Returns the hex diff id. Nothing of a refused or mismatching layer is kept.
    /// </summary>
    /// <param name="openBlob">Opens the (compressed) layer blob.</param>
    /// <param name="expectedDiffId">The diff id the image config names, or null to take what the content hashes to.</param>
    /// <param name="beforeCommit">Runs after unpacking and before the layer joins the store (checks of the blob's own digest).</param>
    /// <param name="cancellationToken">Cancels; what was unpacked is removed.</param>
    public async Task<string> AddLayerAsync(Func<CancellationToken, Task<Stream>> openBlob, string? expectedDiffId, CancellationToken cancellationToken, Func<CancellationToken, Task>? beforeCommit = null)
    {
        string? expectedHex = expectedDiffId is null ? null : Digests.Hex(expectedDiffId, "layer diff id");
        if (expectedHex is not null && HasLayer(expectedHex))
            return expectedHex;
        var gate = expectedHex is null ? null : _layerLocks.GetOrAdd(expectedHex, _ => new SemaphoreSlim(1, 1));
        if (gate is not null)
            await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (expectedHex is not null && HasLayer(expectedHex))
                return expectedHex;
            var staging = Path.Combine(LayersDirectory, $".partial-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..12]}");
            LayerUnpackResult result;
            var blob = await openBlob(cancellationToken).ConfigureAwait(false);
            await using (blob.ConfigureAwait(false))
            {
                await using (var tar = await LayerCompression.OpenAsync(blob, cancellationToken, leaveOpen: true).ConfigureAwait(false))
                    result = await LayerUnpacker.UnpackAsync(tar, staging, Limits, cancellationToken).ConfigureAwait(false);
                if (expectedHex is not null && result.DiffId != expectedHex)
                {
                    RemoveQuietly(staging);
                    throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"a layer's content has digest sha256:{result.DiffId}, but the image config says sha256:{expectedHex}");
                }
                if (beforeCommit is not null)
                {
                    try
                    {
                        // The blob is still open: a check of its own digest reads what the decompressor left.
                        await beforeCommit(cancellationToken).ConfigureAwait(false);
                    }
                    catch
                    {
                        RemoveQuietly(staging);
                        throw;
                    }
                }
            }
            var final = LayerPath(result.DiffId);
            try
            {
                Directory.Move(staging, final);
            }
            catch (IOException) when (Directory.Exists(final))
            {
                // Another process unpacked the same layer meanwhile: one copy is enough.
                RemoveQuietly(staging);
            }
            await _database.WriteAsync(c =>
            {
                using var insert = new SqliteCommand("INSERT OR REPLACE INTO layers (diff_id, size_bytes, entries, created_at) VALUES ($id, $size, $entries, $now)", c);
                insert.Parameters.AddWithValue("$id", result.DiffId);
                insert.Parameters.AddWithValue("$size", result.Bytes);
                insert.Parameters.AddWithValue("$entries", result.Entries);
                insert.Parameters.AddWithValue("$now", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
                return insert.ExecuteNonQuery();
            }, cancellationToken).ConfigureAwait(false);
            LogLayerAdded(_logger, result.DiffId[..12], result.Entries, result.Bytes, result.SkippedDevices);
            return result.DiffId;
        }
        finally
        {
            gate?.Release();
        }
    }

    /// <summary>Records a layer unpacked by an older Moat (no row yet) with a known size.</summary>
    public Task RecordLayerAsync(string diffIdHex, long sizeBytes, CancellationToken cancellationToken) => _database.WriteAsync(c =>
    {
        using var insert = new SqliteCommand("INSERT OR IGNORE INTO layers (diff_id, size_bytes, entries, created_at) VALUES ($id, $size, 0, 0)", c);
        insert.Parameters.AddWithValue("$id", diffIdHex);
        insert.Parameters.AddWithValue("$size", sizeBytes);
        return insert.ExecuteNonQuery();
    }, cancellationToken);

    /// <summary>Declared bytes of the given layers (0 for layers the store has no record of).</summary>
    public Task<long> SizeOfAsync(IEnumerable<string> diffIdHexes) => _database.ReadAsync(c =>
    {
        long total = 0;
        foreach (var id in diffIdHexes)
        {
            using var command = new SqliteCommand("SELECT size_bytes FROM layers WHERE diff_id = $id", c);
            command.Parameters.AddWithValue("$id", id);
            if (command.ExecuteScalar() is long size)
                total += size;
        }
        return total;
    });

    /// <summary>Removes every layer no template or build-cache entry refers to; returns how many.</summary>
    public async Task<int> CollectGarbageAsync(CancellationToken cancellationToken)
    {
        var referenced = await _database.ReadAsync(c =>
        {
            var set = new HashSet<string>(StringComparer.Ordinal);
            using (var command = new SqliteCommand("SELECT layers FROM template_images", c))
            using (var reader = command.ExecuteReader())
            {
                while (reader.Read())
                    set.UnionWith(System.Text.Json.JsonSerializer.Deserialize(reader.GetString(0), StorageJson.Default.ListString) ?? []);
            }
            using (var command = new SqliteCommand("SELECT diff_id FROM build_cache WHERE diff_id IS NOT NULL", c))
            using (var reader = command.ExecuteReader())
            {
                while (reader.Read())
                    set.Add(reader.GetString(0));
            }
            // Layers an import or build unpacked in the last hour may belong to a template not saved yet.
            using (var command = new SqliteCommand("SELECT diff_id FROM layers WHERE created_at > $since", c))
            {
                command.Parameters.AddWithValue("$since", DateTimeOffset.UtcNow.AddHours(-1).ToUnixTimeMilliseconds());
                using var reader = command.ExecuteReader();
                while (reader.Read())
                    set.Add(reader.GetString(0));
            }
            return set;
        }).ConfigureAwait(false);
        int removed = 0;
        foreach (var dir in Directory.EnumerateDirectories(LayersDirectory))
        {
            var hex = Path.GetFileName(dir);
            if (hex.StartsWith('.') || referenced.Contains(hex))
                continue;
            var gate = _layerLocks.GetOrAdd(hex, _ => new SemaphoreSlim(1, 1));
            await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                // Renamed first, so a half-deleted layer is never mistaken for a whole one.
                var doomed = Path.Combine(LayersDirectory, $".deleting-{Environment.ProcessId}-{hex}");
                Directory.Move(dir, doomed);
                RemoveQuietly(doomed);
                await _database.WriteAsync(c =>
                {
                    using var delete = new SqliteCommand("DELETE FROM layers WHERE diff_id = $id", c);
                    delete.Parameters.AddWithValue("$id", hex);
                    return delete.ExecuteNonQuery();
                }, cancellationToken).ConfigureAwait(false);
                removed++;
            }
            catch (IOException ex)
            {
                LogGcFailed(_logger, hex, ex);
            }
            finally
            {
                gate.Release();
            }
        }
        return removed;
    }

    /// <summary>Removes a directory tree without following any symlink in it.</summary>
    public static void RemoveQuietly(string path)
    {
        try
        {
            var parent = Path.GetDirectoryName(Path.GetFullPath(path))!;
            using var handle = DirectoryHandle.OpenRoot(parent);
            handle.RemoveTree(Path.GetFileName(path));
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Staging and scratch directories of processes that are gone.</summary>
    private void CleanStaging()
    {
        foreach (var (dir, prefixes) in new[] { (LayersDirectory, new[] { ".partial-", ".deleting-" }), (TempDirectory, new[] { "" }) })
        {
            foreach (var path in Directory.EnumerateDirectories(dir))
            {
                var name = Path.GetFileName(path);
                var prefix = prefixes.FirstOrDefault(p => name.StartsWith(p, StringComparison.Ordinal) && (p.Length > 0 || true));
                if (prefix is null)
                    continue;
                var rest = name[prefix.Length..];
                var pidText = prefix.Length == 0 ? rest.Split('-').ElementAtOrDefault(1) : rest.Split('-')[0];
                if (int.TryParse(pidText, out int pid) && pid != Environment.ProcessId && !File.Exists($"/proc/{pid}/stat"))
                    RemoveQuietly(path);
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Unpacked layer {DiffId}: {Entries} entries, {Bytes} bytes, {Devices} device nodes skipped")]
    private static partial void LogLayerAdded(ILogger logger, string diffId, int entries, long bytes, int devices);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not remove unused layer {DiffId}")]
    private static partial void LogGcFailed(ILogger logger, string diffId, Exception exception);
}
