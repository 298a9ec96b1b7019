using System.Formats.Tar;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging.Abstractions;
using Moat.Storage.Oci;
using Moat.Storage.Sqlite;
using Moat.Storage.Templates;

namespace Moat.Tests;

/// <summary>
/// Hostile layers against the unpacker, judged from the host: a victim directory outside the
/// store must stay untouched, a refused layer must leave nothing in the store.
/// </summary>
public sealed class TemplatesLayerSafetyTests : IDisposable
{
    private readonly string _data = Path.Combine(Path.GetTempPath(), "moat-layers-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly string _victim = Path.Combine(Path.GetTempPath(), "moat-victim-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly SqliteDatabase _database;
    private readonly ImageStore _store;

    public TemplatesLayerSafetyTests()
    {
        Directory.CreateDirectory(_victim);
        File.WriteAllText(Path.Combine(_victim, "secret"), "host secret");
        _database = new SqliteDatabase(Path.Combine(_data, "moat.db"));
        _store = new ImageStore(_database, _data, new LayerLimits(), NullLogger<ImageStore>.Instance);
    }

    public void Dispose()
    {
        _database.Dispose();
        ImageStore.RemoveQuietly(_data);
        ImageStore.RemoveQuietly(_victim);
    }

    private Task<string> AddAsync(byte[] layer, ImageStore? store = null) =>
        (store ?? _store).AddLayerAsync(_ => Task.FromResult<Stream>(new MemoryStream(layer)), null, CancellationToken.None);

    private async Task<LayerRejectedException> RejectedAsync(byte[] layer, ImageStore? store = null)
    {
        var ex = await Assert.ThrowsAsync<LayerRejectedException>(() => AddAsync(layer, store));
        AssertStoreEmpty(store ?? _store);
        AssertVictimUntouched();
        return ex;
    }

    private static void AssertStoreEmpty(ImageStore store) =>
        Assert.Empty(Directory.EnumerateFileSystemEntries(store.LayersDirectory));

    private void AssertVictimUntouched()
    {
        Assert.Equal(new[] { "secret" }, Directory.EnumerateFileSystemEntries(_victim).Select(p => Path.GetFileName(p)!).ToArray());
        Assert.Equal("host secret", File.ReadAllText(Path.Combine(_victim, "secret")));
        Assert.Equal(1UL, HostFile.Stat(Path.Combine(_victim, "secret")).Nlink);
    }

    [Fact]
    public async Task A_dotdot_entry_is_refused()
    {
        var ex = await RejectedAsync(new LayerTar().File("../../../../../../.." + _victim + "/pwned", "x").Bytes());
        Assert.Equal("unsafe_layer", ex.Code);
        Assert.Contains("..", ex.Message);
    }

    [Fact]
    public async Task An_absolute_entry_lands_inside_the_layer()
    {
        var id = await AddAsync(new LayerTar().File(_victim + "/pwned", "x").Bytes());

        AssertVictimUntouched();
        Assert.Equal("x", File.ReadAllText(Path.Combine(_store.LayerPath(id), _victim.TrimStart('/'), "pwned")));
    }

    [Fact]
    public async Task A_file_through_a_symlink_to_the_host_is_refused()
    {
        var ex = await RejectedAsync(new LayerTar().Symlink("evil", _victim).File("evil/pwned", "x").Bytes());
        Assert.Equal("unsafe_layer", ex.Code);
        Assert.Contains("symlink", ex.Message);
    }

    [Fact]
    public async Task A_file_through_a_relative_symlink_chain_is_refused()
    {
        var depth = string.Concat(Enumerable.Repeat("../", 12));
        await RejectedAsync(new LayerTar().Dir("a").Symlink("a/up", depth + _victim.TrimStart('/')).File("a/up/pwned", "x").Bytes());
        await RejectedAsync(new LayerTar().Symlink("b", ".").Symlink("c", "b/b/b/../../..").File("c/pwned", "x").Bytes());
    }

    [Fact]
    public async Task A_directory_entry_through_a_symlink_is_refused()
    {
        await RejectedAsync(new LayerTar().Symlink("evil", _victim).Dir("evil/sub").Bytes());
    }

    [Fact]
    public async Task A_symlink_replaced_by_a_directory_does_not_reach_its_target()
    {
        // The later directory entry replaces the link itself; nothing is written where it pointed.
        var id = await AddAsync(new LayerTar().Symlink("evil", _victim).Dir("evil").File("evil/pwned", "x").Bytes());

        AssertVictimUntouched();
        Assert.True(File.Exists(Path.Combine(_store.LayerPath(id), "evil", "pwned")));
    }

    [Fact]
    public async Task A_hardlink_to_a_host_file_is_refused()
    {
        var ex = await RejectedAsync(new LayerTar().Hardlink("stolen", _victim + "/secret").Bytes());
        Assert.Contains("not a file of this layer", ex.Message);
        await RejectedAsync(new LayerTar().Hardlink("stolen", "../../../../../../../.." + _victim + "/secret").Bytes());
    }

    [Fact]
    public async Task A_hardlink_through_a_symlink_is_refused()
    {
        await RejectedAsync(new LayerTar().Symlink("evil", _victim).Hardlink("stolen", "evil/secret").Bytes());
    }

    [Fact]
    public async Task A_hardlink_within_the_layer_works()
    {
        var id = await AddAsync(new LayerTar().File("bin/a", "program", 0x1ED).Hardlink("bin/b", "bin/a").Bytes());

        var b = Path.Combine(_store.LayerPath(id), "bin", "b");
        Assert.Equal("program", File.ReadAllText(b));
        Assert.Equal(2UL, HostFile.Stat(b).Nlink);
    }

    [Fact]
    public async Task Device_nodes_are_skipped()
    {
        var id = await AddAsync(new LayerTar().Dir("dev").Device("dev/mem", TarEntryType.CharacterDevice, 1, 1).Device("dev/sda", TarEntryType.BlockDevice, 8, 0).File("ok", "y").Bytes());

        var layer = _store.LayerPath(id);
        Assert.False(Path.Exists(Path.Combine(layer, "dev", "mem")));
        Assert.False(Path.Exists(Path.Combine(layer, "dev", "sda")));
        Assert.True(File.Exists(Path.Combine(layer, "ok")));
    }

    [Fact]
    public async Task Archive_xattrs_cannot_set_overlay_attributes()
    {
        var id = await AddAsync(new LayerTar().Dir("d").Pax("d/f", new() { ["SCHILY.xattr.trusted.overlay.redirect"] = "/etc", ["SCHILY.xattr.trusted.overlay.opaque"] = "y" }, "x"u8.ToArray()).Bytes());

        var file = Path.Combine(_store.LayerPath(id), "d", "f");
        Assert.True(File.Exists(file));
        Assert.Null(HostFile.Attribute(file, "trusted.overlay.redirect"));
        Assert.Null(HostFile.Attribute(file, "trusted.overlay.opaque"));
    }

    [Fact]
    public async Task Paths_deeper_than_the_limit_are_refused()
    {
        var deep = string.Join('/', Enumerable.Repeat("d", 200)) + "/f";
        var ex = await RejectedAsync(new LayerTar().File(deep, "x").Bytes());
        Assert.Equal("layer_too_deep", ex.Code);
    }

    [Fact]
    public async Task A_file_declaring_100_GiB_is_refused_before_any_data_is_read()
    {
        // Only a header claims the size: nothing behind it, nothing written.
        var tar = TestImages.RawHeader("huge", '0', 100L << 30);
        var ex = await RejectedAsync(tar);
        Assert.Equal("layer_too_large", ex.Code);
    }

    [Fact]
    public async Task A_gnu_sparse_file_is_refused()
    {
        var tar = TestImages.RawHeader("sparse", 'S', 512).Concat(new byte[1024 + 512]).ToArray();
        var ex = await RejectedAsync(tar);
        Assert.Equal("unsupported_layer_entry", ex.Code);
    }

    [Fact]
    public async Task A_pax_sparse_file_is_refused()
    {
        var ex = await RejectedAsync(new LayerTar().Pax("GNUSparseFile.0/sparse", new() { ["GNU.sparse.major"] = "1", ["GNU.sparse.minor"] = "0", ["GNU.sparse.realsize"] = (100L << 30).ToString(), ["GNU.sparse.name"] = "sparse" }, new byte[512]).Bytes());
        Assert.Equal("unsupported_layer_entry", ex.Code);
    }

    [Fact]
    public async Task A_gigabyte_of_zeros_costs_no_disk()
    {
        // A zip bomb: 1 GiB of zeros is ~1 MB of gzip. Unpacked, it is a hole.
        var blob = Path.Combine(_data, "zeros.tar.gz");
        await using (var file = File.Create(blob))
        await using (var gz = new System.IO.Compression.GZipStream(file, System.IO.Compression.CompressionLevel.Fastest))
        await using (var writer = new TarWriter(gz, TarEntryFormat.Pax))
        {
            await writer.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, "zeros") { DataStream = new ZeroStream(1L << 30) });
        }
        var id = await _store.AddLayerAsync(_ => Task.FromResult<Stream>(File.OpenRead(blob)), null, CancellationToken.None);

        var stat = HostFile.Stat(Path.Combine(_store.LayerPath(id), "zeros"));
        Assert.Equal(1L << 30, stat.Size);
        Assert.True(stat.Blocks * 512 < 1 << 20, $"the zeros take {stat.Blocks * 512} bytes of disk");
    }

    [Fact]
    public async Task A_million_entry_layer_is_refused_and_cleaned_up()
    {
        var store = new ImageStore(_database, _data, new LayerLimits { MaxEntries = 100_000 }, NullLogger<ImageStore>.Instance);
        var pipe = new Pipe();
        var writing = Task.Run(async () =>
        {
            await using var stream = pipe.Writer.AsStream();
            await using var writer = new TarWriter(stream, TarEntryFormat.Ustar);
            try
            {
                for (int i = 0; i < 1_000_000; i++)
                    await writer.WriteEntryAsync(new UstarTarEntry(TarEntryType.RegularFile, $"d{i / 1000}/f{i}"));
            }
            catch (Exception ex) when (ex is IOException or InvalidOperationException or OperationCanceledException)
            {
                // The reader gave up: expected.
            }
        });
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var ex = await Assert.ThrowsAsync<LayerRejectedException>(() => store.AddLayerAsync(_ => Task.FromResult(pipe.Reader.AsStream()), null, CancellationToken.None));
        await pipe.Reader.CompleteAsync();
        await writing;

        Assert.Equal("layer_too_many_entries", ex.Code);
        AssertStoreEmpty(store);
        Assert.True(clock.Elapsed < TimeSpan.FromMinutes(2), $"took {clock.Elapsed}");
    }

    [Fact]
    public async Task Whiteouts_become_overlay_whiteouts()
    {
        var id = await AddAsync(new LayerTar().Dir("a").File("a/.wh.gone", "").Dir("b").File("b/.wh..wh..opq", "").File("b/new", "n").Bytes());

        var layer = _store.LayerPath(id);
        var gone = HostFile.Stat(Path.Combine(layer, "a", "gone"));
        Assert.True(gone.IsWhiteout);
        Assert.Equal("y", System.Text.Encoding.ASCII.GetString(HostFile.Attribute(Path.Combine(layer, "b"), "trusted.overlay.opaque")!));
        Assert.False(Path.Exists(Path.Combine(layer, "b", ".wh..wh..opq")));
    }

    [Fact]
    public async Task Ownership_modes_and_setuid_bits_are_kept()
    {
        var id = await AddAsync(new LayerTar().Dir("home/user", 0x1C0, 1000).File("home/user/f", "x", 0x9ED, 1000).Bytes());

        var f = HostFile.Stat(Path.Combine(_store.LayerPath(id), "home", "user", "f"));
        Assert.Equal(1000, f.Uid);
        Assert.Equal(0x9EDu, f.Mode & 0xFFF);
        Assert.Equal(0x1C0u, HostFile.Stat(Path.Combine(_store.LayerPath(id), "home", "user")).Mode & 0xFFF);
    }

    [Fact]
    public async Task A_truncated_archive_is_refused()
    {
        var full = new LayerTar().File("a", new byte[10_000]).Bytes();
        await RejectedAsync(full[..3000]);
    }

    [Fact]
    public async Task The_same_layer_is_unpacked_once()
    {
        var layer = new LayerTar().File("x", "1").Bytes();
        var a = await AddAsync(layer);
        var b = await _store.AddLayerAsync(_ => throw new InvalidOperationException("must not be opened again"), TestImages.Sha(layer), CancellationToken.None);

        Assert.Equal(a, b);
        Assert.Single(Directory.EnumerateDirectories(_store.LayersDirectory));
    }

    [Fact]
    public async Task A_layer_whose_digest_does_not_match_its_diff_id_is_refused()
    {
        var layer = new LayerTar().File("x", "1").Bytes();
        var ex = await Assert.ThrowsAsync<Moat.Core.Errors.MoatException>(() => _store.AddLayerAsync(_ => Task.FromResult<Stream>(new MemoryStream(layer)), TestImages.Sha("other"u8.ToArray()), CancellationToken.None));

        Assert.Equal("digest_mismatch", ex.Code);
        AssertStoreEmpty(_store);
    }

    private sealed class ZeroStream(long size) : Stream
    {
        private long _read;
        private long _left => size - _read;
        public override bool CanRead => true;
        public override bool CanSeek => true;
        public override bool CanWrite => false;
        public override long Length => size;
        public override long Position { get => _read; set => _read = value; }
        public override int Read(byte[] buffer, int offset, int count)
        {
            int n = (int)Math.Min(count, _left);
            Array.Clear(buffer, offset, n);
            _read += n;
            return n;
        }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => _read = origin switch { SeekOrigin.Begin => offset, SeekOrigin.Current => _read + offset, _ => size + offset };
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
