using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Win32.SafeHandles;
using Moat.Core.Errors;

namespace Moat.Storage.Oci;

/// <summary>What unpacking a layer found.</summary>
/// <param name="DiffId">sha256 (hex) of the uncompressed tar: the layer's OCI diff id.</param>
/// <param name="Bytes">Declared bytes of its files.</param>
/// <param name="Entries">Entries read.</param>
/// <param name="SkippedDevices">Device nodes that were not created.</param>
public sealed record LayerUnpackResult(string DiffId, long Bytes, int Entries, int SkippedDevices);

/// <summary>
/// Unpacks one OCI/Docker layer tar into an empty directory, for use as an overlayfs lower
/// layer. Every entry is hostile until proven otherwise:
/// <list type="bullet">
/// <item>names are split into components; <c>..</c> anywhere is refused; a leading <c>/</c> is taken relative to the root;</item>
/// <item>every directory on the way is opened relative to its parent with <c>O_NOFOLLOW</c>, so an
/// entry that would pass through a symlink (made earlier by the same layer) is refused rather than followed;</item>
/// <item>files are created with <c>O_CREAT|O_EXCL|O_NOFOLLOW</c>, links with <c>linkat</c> / <c>symlinkat</c>
/// relative to their directory; a hard link must name a file already unpacked from this layer;</item>
/// <item>device nodes are skipped; sparse entries are refused; extended attributes of the archive are ignored
/// (a layer must not set <c>trusted.overlay.*</c>);</item>
/// <item>entry count, path depth and length and total size are capped; runs of zeros are written as holes;</item>
/// <item>OCI whiteouts become overlayfs ones: <c>.wh.NAME</c> a character device 0:0 named NAME, <c>.wh..wh..opq</c>
/// the <c>trusted.overlay.opaque=y</c> attribute of its directory.</item>
/// </list>
/// On any failure the destination is removed: a refused layer leaves nothing behind.
/// </summary>
public static class LayerUnpacker
{
    private const string WhiteoutPrefix = ".wh.";
    private const string OpaqueMarker = ".wh..wh..opq";
    private const string WhiteoutMeta = ".wh..wh.";
    private const int ChunkSize = 256 * 1024;

    /// <summary>
    /// Unpacks the uncompressed tar <paramref name="tar"/> into <paramref name="destination"/>, which
    /// must not exist yet; its parent must. The stream is read to its end (its digest is the diff id).
    /// </summary>
    public static async Task<LayerUnpackResult> UnpackAsync(Stream tar, string destination, LayerLimits limits, CancellationToken cancellationToken)
    {
        var parent = Path.GetDirectoryName(Path.GetFullPath(destination))!;
        var leaf = Path.GetFileName(destination);
        using var parentHandle = DirectoryHandle.OpenRoot(parent);
        if (parentHandle.Stat(leaf) is not null)
            throw new IOException($"{destination} already exists");
        var hashing = new HashingReadStream(tar);
        try
        {
            using var root = parentHandle.CreateDirectory(leaf, 0x1ED);
            var state = new UnpackState(root, limits, parent);
            await state.RunAsync(hashing, cancellationToken).ConfigureAwait(false);
            // The diff id covers the whole stream, the tar's end padding included.
            await hashing.DrainAsync(cancellationToken).ConfigureAwait(false);
            state.FinishDirectories();
            return new LayerUnpackResult(hashing.HexDigest(), state.Bytes, state.Entries, state.SkippedDevices);
        }
        catch (Exception ex)
        {
            try
            {
                parentHandle.RemoveTree(leaf);
            }
            catch (IOException)
            {
                // Reported below with the original failure; a stray staging directory is cleaned at the next start.
            }
            if (ex is MoatException or OperationCanceledException)
                throw;
            if (ex is InvalidDataException or FormatException or EndOfStreamException)
                throw new LayerRejectedException("invalid_layer", $"the layer is not a valid tar archive: {ex.Message}");
            if (ex is NotSupportedException)
                throw new LayerRejectedException("unsupported_layer_entry", $"the layer has an entry Moat does not unpack: {ex.Message}");
            throw;
        }
    }

    private sealed class UnpackState(DirectoryHandle root, LayerLimits limits, string hostDirectory)
    {
        private readonly List<(string Name, DirectoryHandle Handle)> _chain = [];
        private readonly List<(string[] Parts, DateTimeOffset Mtime)> _directories = [];
        private readonly byte[] _buffer = new byte[ChunkSize];
        private long _sinceSpaceCheck;

        public long Bytes { get; private set; }
        public int Entries { get; private set; }
        public int SkippedDevices { get; private set; }

        public async Task RunAsync(Stream tar, CancellationToken cancellationToken)
        {
            try
            {
                await using var reader = new TarReader(tar, leaveOpen: true);
                while (await NextEntryAsync(reader, cancellationToken).ConfigureAwait(false) is { } entry)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    if (entry.EntryType == TarEntryType.GlobalExtendedAttributes)
                        continue;
                    if (++Entries > limits.MaxEntries)
                        throw new LayerRejectedException("layer_too_many_entries", $"the layer has more than {limits.MaxEntries} entries", ErrorKind.TooLarge);
                    await ApplyAsync(entry, cancellationToken).ConfigureAwait(false);
                }
            }
            catch (EndOfStreamException) when (Entries == 0 && tar is HashingReadStream { BytesRead: 0 })
            {
                // An empty stream is an empty layer (a build step that changed nothing).
            }
            finally
            {
                ResetChain();
            }
        }

        /// <summary>
        /// The next header. A header whose numeric fields overflow (System.Formats.Tar throws
        /// OverflowException for some base-256 values; found by the long fuzz run) is a malformed
        /// layer like any other, not a server error.
        /// </summary>
        private static async ValueTask<TarEntry?> NextEntryAsync(TarReader reader, CancellationToken cancellationToken)
        {
            try
            {
                return await reader.GetNextEntryAsync(copyData: false, cancellationToken).ConfigureAwait(false);
            }
            catch (OverflowException ex)
            {
                throw new LayerRejectedException("invalid_layer", $"the layer has a malformed tar header: {ex.Message}");
            }
        }

        private async Task ApplyAsync(TarEntry entry, CancellationToken cancellationToken)
        {
            var parts = Split(entry.Name, limits);
            if (entry is PaxTarEntry pax && pax.ExtendedAttributes.Keys.Any(k => k.StartsWith("GNU.sparse.", StringComparison.Ordinal)))
                throw new LayerRejectedException("unsupported_layer_entry", $"entry {entry.Name} is a sparse file, which Moat does not unpack");
            if (parts.Length == 0)
            {
                if (entry.EntryType != TarEntryType.Directory)
                    throw new LayerRejectedException("unsafe_layer", $"entry '{entry.Name}' names the layer's root but is not a directory");
                root.ChmodSelf((uint)entry.Mode);
                root.ChownSelf(entry.Uid, entry.Gid);
                return;
            }
            var name = parts[^1];
            var dirParts = parts[..^1];

            if (name.StartsWith(WhiteoutPrefix, StringComparison.Ordinal) && entry.EntryType is TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.HardLink or TarEntryType.SymbolicLink or TarEntryType.Directory)
            {
                var dir = Parent(dirParts, create: true, entry.Name)!;
                if (name == OpaqueMarker)
                    dir.SetAttribute("trusted.overlay.opaque", "y"u8);
                else if (!name.StartsWith(WhiteoutMeta, StringComparison.Ordinal))
                {
                    var hidden = name[WhiteoutPrefix.Length..];
                    if (hidden.Length == 0 || hidden is "." or "..")
                        throw new LayerRejectedException("unsafe_layer", $"whiteout '{entry.Name}' names no file");
                    // A whiteout hides lower layers only: a file of this very layer by that name stays.
                    if (dir.Stat(hidden) is null)
                        dir.MakeNode(hidden, DirectoryHandle.SIfChr, 0);
                }
                return;
            }

            switch (entry.EntryType)
            {
                case TarEntryType.Directory:
                {
                    var dir = Parent(dirParts, create: true, entry.Name)!;
                    var existing = dir.Stat(name);
                    if (existing is { IsDirectory: false })
                        Replace(dir, name);
                    using var child = dir.CreateDirectory(name, 0x1C0);
                    child.ChownSelf(entry.Uid, entry.Gid);
                    child.ChmodSelf((uint)entry.Mode);
                    _directories.Add((parts, entry.ModificationTime));
                    break;
                }
                case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                {
                    if (entry.Length < 0 || Bytes + entry.Length > limits.MaxBytes)
                        throw new LayerRejectedException("layer_too_large", $"the layer's files add up to more than {limits.MaxBytes} bytes (entry {entry.Name} declares {entry.Length})", ErrorKind.TooLarge);
                    Bytes += entry.Length;
                    var dir = Parent(dirParts, create: true, entry.Name)!;
                    ClearFor(dir, name);
                    using var file = dir.CreateFile(name, 0x180);
                    await WriteDataAsync(entry, file, cancellationToken).ConfigureAwait(false);
                    DirectoryHandle.SetFileMetadata(file, entry.Uid, entry.Gid, (uint)entry.Mode, entry.ModificationTime, entry.Name);
                    break;
                }
                case TarEntryType.SymbolicLink:
                {
                    if (entry.LinkName.Length == 0 || entry.LinkName.Length > limits.MaxPathLength || entry.LinkName.Contains('\0'))
                        throw new LayerRejectedException("unsafe_layer", $"symlink {entry.Name} has an empty or invalid target");
                    var dir = Parent(dirParts, create: true, entry.Name)!;
                    ClearFor(dir, name);
                    // The target is stored as given: inside the sandbox it resolves within the sandbox's root.
                    dir.Symlink(entry.LinkName, name);
                    dir.Chown(name, entry.Uid, entry.Gid);
                    dir.SetTimes(name, entry.ModificationTime);
                    break;
                }
                case TarEntryType.HardLink:
                {
                    string[] target;
                    try
                    {
                        target = Split(entry.LinkName, limits);
                    }
                    catch (LayerRejectedException)
                    {
                        throw new LayerRejectedException("unsafe_layer", $"hard link {entry.Name} points outside the layer ({entry.LinkName})");
                    }
                    if (target.Length == 0)
                        throw new LayerRejectedException("unsafe_layer", $"hard link {entry.Name} points at the layer's root");
                    // Opened first, without creating anything: the target must already be in this layer.
                    using var source = OpenDetached(target[..^1]);
                    if (source?.Stat(target[^1]) is not { } status || status.IsDirectory)
                        throw new LayerRejectedException("unsafe_layer", $"hard link {entry.Name} points at {entry.LinkName}, which is not a file of this layer");
                    var dir = Parent(dirParts, create: true, entry.Name)!;
                    if (string.Join('/', target) == string.Join('/', parts))
                        break;
                    ClearFor(dir, name);
                    dir.Link(source, target[^1], name);
                    break;
                }
                case TarEntryType.Fifo:
                {
                    var dir = Parent(dirParts, create: true, entry.Name)!;
                    ClearFor(dir, name);
                    dir.MakeNode(name, DirectoryHandle.SIfIfo | ((uint)entry.Mode & 0x1FF), 0);
                    dir.Chown(name, entry.Uid, entry.Gid);
                    break;
                }
                case TarEntryType.CharacterDevice or TarEntryType.BlockDevice:
                    // The runtime provides /dev; an image's device nodes would be a way to the host's devices.
                    SkippedDevices++;
                    break;
                case TarEntryType.SparseFile:
                    throw new LayerRejectedException("unsupported_layer_entry", $"entry {entry.Name} is a sparse file, which Moat does not unpack");
                default:
                    throw new LayerRejectedException("unsupported_layer_entry", $"entry {entry.Name} has a tar type Moat does not unpack ({entry.EntryType})");
            }
        }

        private async Task WriteDataAsync(TarEntry entry, SafeFileHandle file, CancellationToken cancellationToken)
        {
            var data = entry.DataStream;
            long offset = 0;
            if (data is not null)
            {
                int n;
                while ((n = await data.ReadAsync(_buffer, cancellationToken).ConfigureAwait(false)) > 0)
                {
                    // Zeros become holes: a "sparse" bomb of zeros costs no disk.
                    if (_buffer.AsSpan(0, n).IndexOfAnyExcept((byte)0) >= 0)
                        RandomAccess.Write(file, _buffer.AsSpan(0, n), offset);
                    offset += n;
                    _sinceSpaceCheck += n;
                    if (_sinceSpaceCheck > 64L << 20)
                    {
                        _sinceSpaceCheck = 0;
                        CheckSpace();
                    }
                }
            }
            if (offset != entry.Length)
                throw new LayerRejectedException("invalid_layer", $"entry {entry.Name} declares {entry.Length} bytes but has {offset}");
            RandomAccess.SetLength(file, offset);
        }

        private void CheckSpace()
        {
            var usage = Moat.Core.Host.Linux.StatFilesystem(hostDirectory);
            if (usage.FreeBytes < limits.ReserveFreeBytes)
                throw new MoatException(ErrorKind.Unavailable, "disk_full", $"the data directory's filesystem has only {usage.FreeBytes >> 20} MiB free; unpacking stopped (it keeps {limits.ReserveFreeBytes >> 20} MiB)");
        }

        /// <summary>Makes room for a non-directory entry: whatever is there (a whiteout, a file, a directory tree) goes.</summary>
        private void ClearFor(DirectoryHandle dir, string name)
        {
            if (dir.Stat(name) is { } existing)
            {
                if (existing.IsDirectory)
                    Replace(dir, name);
                else
                    dir.Unlink(name);
            }
        }

        private void Replace(DirectoryHandle dir, string name)
        {
            // The cached chain holds only the entry's own parents, never what is replaced below them.
            var display = dir.Display == "/" ? name : dir.Display.TrimStart('/') + "/" + name;
            dir.RemoveTree(name);
            _directories.RemoveAll(d => (string.Join('/', d.Parts) + "/").StartsWith(display + "/", StringComparison.Ordinal));
        }

        /// <summary>
        /// The directory holding an entry, opened component by component from the root without
        /// following symlinks; missing directories are created (0755, as tar does). Reuses the
        /// handles of the previous entry's directory.
        /// </summary>
        private DirectoryHandle? Parent(string[] dirParts, bool create, string entryName)
        {
            int common = 0;
            while (common < _chain.Count && common < dirParts.Length && _chain[common].Name == dirParts[common])
                common++;
            for (int i = _chain.Count - 1; i >= common; i--)
            {
                _chain[i].Handle.Dispose();
                _chain.RemoveAt(i);
            }
            for (int i = common; i < dirParts.Length; i++)
            {
                var current = i == 0 ? root : _chain[i - 1].Handle;
                DirectoryHandle? next;
                try
                {
                    next = create ? current.CreateDirectory(dirParts[i], 0x1ED) : current.OpenDirectory(dirParts[i]);
                }
                catch (NotADirectoryException)
                {
                    throw new LayerRejectedException("unsafe_layer", $"entry {entryName} goes through {string.Join('/', dirParts[..(i + 1)])}, which is a symlink or a file in this layer; Moat does not follow links while unpacking");
                }
                if (next is null)
                    return null;
                _chain.Add((dirParts[i], next));
            }
            return dirParts.Length == 0 ? root : _chain[^1].Handle;
        }

        /// <summary>Opens a directory of the layer without touching the cached chain; null when it is missing.</summary>
        private DirectoryHandle? OpenDetached(string[] dirParts)
        {
            var handles = new List<DirectoryHandle>();
            try
            {
                var current = DuplicateRoot();
                handles.Add(current);
                foreach (var part in dirParts)
                {
                    DirectoryHandle? next;
                    try
                    {
                        next = current.OpenDirectory(part);
                    }
                    catch (NotADirectoryException)
                    {
                        return null;
                    }
                    if (next is null)
                        return null;
                    handles.Add(next);
                    current = next;
                }
                handles.Remove(current);
                return current;
            }
            finally
            {
                foreach (var h in handles)
                    h.Dispose();
            }
        }

        private DirectoryHandle DuplicateRoot() => root.OpenDirectory(".") ?? throw new IOException("the layer root vanished");

        private void ResetChain()
        {
            foreach (var (_, handle) in _chain)
                handle.Dispose();
            _chain.Clear();
        }

        /// <summary>Directory times last: creating children changed them.</summary>
        public void FinishDirectories()
        {
            foreach (var (parts, mtime) in _directories.AsEnumerable().Reverse())
            {
                using var parent = OpenDetached(parts[..^1]);
                if (parent?.Stat(parts[^1]) is { IsDirectory: true })
                    parent.SetTimes(parts[^1], mtime);
            }
        }
    }

    /// <summary>
    /// An entry name as path components below the root: empty and <c>.</c> components dropped,
    /// a leading <c>/</c> ignored, <c>..</c> refused.
    /// </summary>
    internal static string[] Split(string name, LayerLimits limits)
    {
        if (name.Length > limits.MaxPathLength)
            throw new LayerRejectedException("unsafe_layer", $"entry name is longer than {limits.MaxPathLength} characters");
        if (name.Contains('\0'))
            throw new LayerRejectedException("unsafe_layer", "entry name contains a NUL byte");
        var parts = name.Split('/', StringSplitOptions.RemoveEmptyEntries).Where(p => p != ".").ToArray();
        foreach (var part in parts)
        {
            if (part == "..")
                throw new LayerRejectedException("unsafe_layer", $"entry '{Printable(name)}' has a '..' component; layer entries must stay inside the layer");
            if (Encoding.UTF8.GetByteCount(part) > 255)
                throw new LayerRejectedException("unsafe_layer", $"entry '{Printable(name)}' has a component longer than 255 bytes");
        }
        if (parts.Length > limits.MaxDepth)
            throw new LayerRejectedException("layer_too_deep", $"entry '{Printable(name)[..Math.Min(80, name.Length)]}…' is {parts.Length} directories deep; the limit is {limits.MaxDepth}", ErrorKind.TooLarge);
        return parts;
    }

    private static string Printable(string s) => new(s.Select(c => char.IsControl(c) ? '?' : c).ToArray());
}

/// <summary>A read-only stream that hashes (SHA-256) everything read through it.</summary>
internal sealed class HashingReadStream(Stream inner) : Stream
{
    private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

    public long BytesRead { get; private set; }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => BytesRead; set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int n = inner.Read(buffer);
        _hash.AppendData(buffer[..n]);
        BytesRead += n;
        return n;
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int n = await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        _hash.AppendData(buffer.Span[..n]);
        BytesRead += n;
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <summary>Reads (and hashes) whatever is left.</summary>
    public async Task DrainAsync(CancellationToken cancellationToken)
    {
        var buffer = new byte[81920];
        while (await ReadAsync(buffer, cancellationToken).ConfigureAwait(false) > 0)
        {
        }
    }

    public string HexDigest() => Convert.ToHexStringLower(_hash.GetHashAndReset());

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
            _hash.Dispose();
        base.Dispose(disposing);
    }
}
