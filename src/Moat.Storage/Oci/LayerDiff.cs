using System.Formats.Tar;
using Moat.Core.Errors;

namespace Moat.Storage.Oci;

/// <summary>
/// Turns the writable (upper) directory of a sandbox's overlay into an OCI layer tar: what a
/// build step changed. The tree is the sandbox's, so it is read as hostile — every name opened
/// relative to its directory without following links, files opened non-blocking (a FIFO never
/// hangs the reader). Overlayfs's own markers become OCI ones: a character device 0:0 a
/// <c>.wh.NAME</c> whiteout, a directory with <c>trusted.overlay.opaque=y</c> a <c>.wh..wh..opq</c>.
/// Entries unchanged since <see cref="Snapshot"/> (what the platform made when the sandbox started)
/// are left out.
/// </summary>
public static class LayerDiff
{
    /// <summary>Top-level names of a sandbox's writable layer that are the platform's (the agent's mount point), never the sandbox's.</summary>
    public static readonly IReadOnlySet<string> PlatformEntries = new HashSet<string>(StringComparer.Ordinal) { ".moat" };

    /// <summary>Paths (relative, no leading slash) and change times of everything in <paramref name="upper"/>.</summary>
    public static Dictionary<string, long> Snapshot(string upper)
    {
        var result = new Dictionary<string, long>(StringComparer.Ordinal);
        using var root = DirectoryHandle.OpenRoot(upper);
        Walk(root, "", (path, status) => result[path] = status.CtimeTicks, 0);
        return result;
    }

    private static void Walk(DirectoryHandle dir, string prefix, Action<string, FileStatus> visit, int depth)
    {
        if (depth > 256)
            return;
        foreach (var name in dir.List())
        {
            if (dir.Stat(name) is not { } status)
                continue;
            var path = prefix.Length == 0 ? name : prefix + "/" + name;
            visit(path, status);
            if (status.IsDirectory)
            {
                using var child = dir.OpenDirectory(name);
                if (child is not null)
                    Walk(child, path, visit, depth + 1);
            }
        }
    }

    private sealed record Entry(string Path, FileStatus Status, bool Opaque, string? LinkTarget);

    /// <summary>
    /// Writes the changes under <paramref name="upper"/> since <paramref name="baseline"/> as tar entries to
    /// <paramref name="writer"/>; top-level names in <paramref name="excluded"/> are left out.
    /// Returns the number of entries (0: the step changed nothing).
    /// </summary>
    public static async Task<int> WriteAsync(string upper, IReadOnlyDictionary<string, long> baseline, IReadOnlySet<string> excluded, TarWriter writer, LayerLimits limits, CancellationToken cancellationToken)
    {
        List<Entry> entries;
        using (var root = DirectoryHandle.OpenRoot(upper))
            entries = Collect(root, "", baseline, excluded, 0);
        if (entries.Count > limits.MaxEntries)
            throw new LayerRejectedException("layer_too_many_entries", $"the step made more than {limits.MaxEntries} changes", ErrorKind.TooLarge);
        using var rootHandle = DirectoryHandle.OpenRoot(upper);
        long bytes = 0;
        foreach (var entry in entries)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var s = entry.Status;
            var slash = entry.Path.LastIndexOf('/');
            var parentPath = slash < 0 ? "" : entry.Path[..slash];
            var name = slash < 0 ? entry.Path : entry.Path[(slash + 1)..];
            if (s.IsWhiteout)
            {
                await writer.WriteEntryAsync(Header(TarEntryType.RegularFile, Join(parentPath, ".wh." + name), s), cancellationToken).ConfigureAwait(false);
                continue;
            }
            if (s.IsDirectory)
            {
                await writer.WriteEntryAsync(Header(TarEntryType.Directory, entry.Path + "/", s), cancellationToken).ConfigureAwait(false);
                if (entry.Opaque)
                    await writer.WriteEntryAsync(Header(TarEntryType.RegularFile, entry.Path + "/.wh..wh..opq", s), cancellationToken).ConfigureAwait(false);
                continue;
            }
            if (s.IsSymlink)
            {
                var link = Header(TarEntryType.SymbolicLink, entry.Path, s);
                link.LinkName = entry.LinkTarget!;
                await writer.WriteEntryAsync(link, cancellationToken).ConfigureAwait(false);
                continue;
            }
            if (s.Type == DirectoryHandle.SIfIfo)
            {
                await writer.WriteEntryAsync(Header(TarEntryType.Fifo, entry.Path, s), cancellationToken).ConfigureAwait(false);
                continue;
            }
            if (!s.IsRegular)
                continue; // sockets and device nodes do not go into layers
            using var parent = OpenPath(rootHandle, parentPath);
            using var handle = parent?.OpenFileForRead(name);
            if (handle is null)
                continue; // gone, or replaced by something else meanwhile
            await using var data = new FileStream(handle, FileAccess.Read, 1 << 16);
            bytes += data.Length;
            if (bytes > limits.MaxBytes)
                throw new LayerRejectedException("layer_too_large", $"the step's changes add up to more than {limits.MaxBytes} bytes", ErrorKind.TooLarge);
            var file = Header(TarEntryType.RegularFile, entry.Path, s);
            file.DataStream = data;
            await writer.WriteEntryAsync(file, cancellationToken).ConfigureAwait(false);
        }
        return entries.Count;
    }

    private static string Join(string parent, string name) => parent.Length == 0 ? name : parent + "/" + name;

    private static PaxTarEntry Header(TarEntryType type, string name, FileStatus s) => new(type, name)
    {
        Mode = (UnixFileMode)(s.Mode & 0xFFF),
        Uid = s.Uid,
        Gid = s.Gid,
        ModificationTime = s.Mtime,
    };

    private static DirectoryHandle? OpenPath(DirectoryHandle root, string path)
    {
        var current = root.OpenDirectory(".");
        foreach (var part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            DirectoryHandle? next;
            try
            {
                next = current?.OpenDirectory(part);
            }
            catch (NotADirectoryException)
            {
                next = null;
            }
            current?.Dispose();
            current = next;
            if (current is null)
                return null;
        }
        return current;
    }

    /// <summary>Changed entries below <paramref name="dir"/>, parents before children; a directory is kept when it changed or holds a change.</summary>
    private static List<Entry> Collect(DirectoryHandle dir, string prefix, IReadOnlyDictionary<string, long> baseline, IReadOnlySet<string> excluded, int depth)
    {
        var result = new List<Entry>();
        if (depth > 256)
            throw new LayerRejectedException("layer_too_deep", "the step made a tree deeper than 256 directories", ErrorKind.TooLarge);
        foreach (var name in dir.List().Order(StringComparer.Ordinal))
        {
            if (depth == 0 && excluded.Contains(name))
                continue;
            if (dir.Stat(name) is not { } status)
                continue;
            var path = prefix.Length == 0 ? name : prefix + "/" + name;
            bool changed = !baseline.TryGetValue(path, out var ctime) || ctime != status.CtimeTicks;
            if (status.IsDirectory)
            {
                if (dir.GetAttribute(name, "trusted.overlay.redirect") is not null)
                    throw new MoatException(ErrorKind.InvalidArgument, "unsupported_change", $"the step renamed a directory of a lower layer ({path}), which overlayfs recorded as a redirect; builds cannot export that");
                bool opaque = dir.GetAttribute(name, "trusted.overlay.opaque") is [(byte)'y', ..];
                List<Entry> children;
                using (var child = dir.OpenDirectory(name))
                    children = child is null ? [] : Collect(child, path, baseline, excluded, depth + 1);
                if (changed || opaque || children.Count > 0)
                {
                    result.Add(new Entry(path, status, opaque, null));
                    result.AddRange(children);
                }
                continue;
            }
            if (!changed)
                continue;
            result.Add(new Entry(path, status, false, status.IsSymlink ? dir.ReadLink(name) : null));
        }
        return result;
    }
}
