using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Templates;
using Moat.Storage.Oci;

namespace Moat.Storage.Templates;

/// <summary>
/// <c>moat template import</c>: an OCI image layout (a folder with <c>oci-layout</c>, <c>index.json</c>
/// and <c>blobs/</c>) or a <c>docker save</c> archive (or the tar of a layout), from a path on this
/// machine or a stream sent to the API. Archives are unpacked with the same safe unpacker as layers
/// into scratch space and read from there without following any link; every blob is checked
/// against its digest.
/// </summary>
public sealed partial class TemplateImporter(TemplateStore templates, ILogger<TemplateImporter> logger)
{
    /// <summary>An archive may be at most this many times the size a layer may be (it holds all of them).</summary>
    private const int ArchiveToLayerRatio = 4;

    /// <summary>Imports from a path: a layout or docker-save folder, or an archive file (tar, tar.gz).</summary>
    public async Task<TemplateRecord> ImportPathAsync(string path, string name, string tenant, TemplateStart? start, IProgress<LayerProgress>? progress, CancellationToken cancellationToken)
    {
        TemplateStore.ValidName(name);
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full))
        {
            using var layout = ImageLayout.OpenFolder(full);
            var image = ReadImage(layout, full);
            LogImporting(logger, name, full);
            return await ImageAssembly.SaveAsync(templates, image, name, tenant, "import:" + Path.GetFileName(full.TrimEnd('/')), start, progress, 2, cancellationToken).ConfigureAwait(false);
        }
        if (!File.Exists(full))
            throw new MoatException(ErrorKind.NotFound, "import_not_found", $"{path} is neither an OCI layout folder nor an archive file");
        await using var archive = File.OpenRead(full);
        return await ImportArchiveAsync(archive, Path.GetFileName(full), name, tenant, start, progress, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Imports from an archive stream (a <c>docker save</c> tar, or the tar of an OCI layout; gzip or zstd allowed).</summary>
    public async Task<TemplateRecord> ImportArchiveAsync(Stream archive, string label, string name, string tenant, TemplateStart? start, IProgress<LayerProgress>? progress, CancellationToken cancellationToken)
    {
        TemplateStore.ValidName(name);
        var images = templates.Images;
        var scratch = images.NewTempDirectory("import");
        try
        {
            var root = Path.Combine(scratch, "image");
            var limits = images.Limits with { MaxBytes = images.Limits.MaxBytes * ArchiveToLayerRatio, MaxEntries = 100_000 };
            await using (var tar = await LayerCompression.OpenAsync(archive, cancellationToken).ConfigureAwait(false))
            {
                try
                {
                    await LayerUnpacker.UnpackAsync(tar, root, limits, cancellationToken).ConfigureAwait(false);
                }
                catch (LayerRejectedException ex)
                {
                    throw new MoatException(ex.Kind, ex.Code, $"the archive {label} was refused: {ex.Message}");
                }
            }
            using var layout = ImageLayout.OpenFolder(root);
            var image = ReadImage(layout, label);
            LogImporting(logger, name, label);
            return await ImageAssembly.SaveAsync(templates, image, name, tenant, "import:" + label, start, progress, 2, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ImageStore.RemoveQuietly(scratch);
        }
    }

    /// <summary>Reads an OCI layout (index.json) or a docker-save folder (manifest.json).</summary>
    internal static ResolvedImage ReadImage(ImageLayout layout, string label)
    {
        if (layout.Exists("index.json"))
            return ReadOciLayout(layout);
        if (layout.Exists("manifest.json"))
            return ReadDockerArchive(layout);
        throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"{label} has neither index.json (an OCI layout) nor manifest.json (a docker save archive)");
    }

    private static ResolvedImage ReadOciLayout(ImageLayout layout)
    {
        var index = OciJson.Parse(layout.ReadSmall("index.json"), OciJson.Default.OciIndex, "index.json");
        var descriptor = PickManifest(index.Manifests, "index.json");
        for (int depth = 0; MediaTypes.IsIndex(descriptor.MediaType); depth++)
        {
            if (depth > 4)
                throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", "the layout's indexes nest more than 4 deep");
            var nested = layout.ReadBlob(descriptor.Digest, "index");
            descriptor = PickManifest(OciJson.Parse(nested, OciJson.Default.OciIndex, "index").Manifests, $"index {descriptor.Digest}");
        }
        var manifestBytes = layout.ReadBlob(descriptor.Digest, "manifest");
        var manifest = OciJson.Parse(manifestBytes, OciJson.Default.OciManifest, "manifest");
        if (manifest.Config is null)
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", "the manifest has no config");
        var configBytes = layout.ReadBlob(manifest.Config.Digest, "config");
        var config = OciJson.Parse(configBytes, OciJson.Default.OciImageConfig, "config");
        var diffIds = config.Rootfs?.DiffIds ?? [];
        var layers = manifest.Layers.Select((l, i) => new ImageLayerSource(l.Digest, i < diffIds.Count ? diffIds[i] : "", l.Size,
            _ => Task.FromResult(layout.OpenBlob(l.Digest)))).ToList();
        ImageAssembly.CheckRunnable(config, layers.Count);
        return new ResolvedImage(manifest.Config.Digest, config, layers);
    }

    private static ResolvedImage ReadDockerArchive(ImageLayout layout)
    {
        var images = OciJson.Parse(layout.ReadSmall("manifest.json"), OciJson.Default.ListDockerArchiveImage, "manifest.json");
        if (images.Count == 0)
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", "manifest.json lists no image");
        if (images.Count > 1)
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"the archive holds {images.Count} images; save one image per archive");
        var image = images[0];
        var configBytes = layout.ReadSmall(image.Config);
        var config = OciJson.Parse(configBytes, OciJson.Default.OciImageConfig, "config");
        var diffIds = config.Rootfs?.DiffIds ?? [];
        // A docker-save layer is an uncompressed tar (its diff id is its digest) or an OCI blob named by digest.
        var layers = image.Layers.Select((path, i) => new ImageLayerSource(path.StartsWith("blobs/sha256/", StringComparison.Ordinal) ? "sha256:" + path["blobs/sha256/".Length..] : null,
            i < diffIds.Count ? diffIds[i] : "", 0, _ => Task.FromResult(layout.Open(path)))).ToList();
        ImageAssembly.CheckRunnable(config, layers.Count);
        return new ResolvedImage(ImageAssembly.DigestOf(configBytes), config, layers);
    }

    /// <summary>The manifest to use from an index: the only one, else linux/amd64.</summary>
    internal static OciDescriptor PickManifest(IReadOnlyList<OciDescriptor> manifests, string where)
    {
        if (manifests.Count == 0)
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"{where} lists no manifest");
        var usable = manifests.Where(m => m.Platform is null || (m.Platform.Os == "linux" && m.Platform.Architecture == "amd64")).ToList();
        // Attestation manifests (buildx) carry platform unknown/unknown: never the image.
        usable.RemoveAll(m => m.Annotations?.ContainsKey("vnd.docker.reference.type") == true);
        if (usable.Count == 0)
            throw new MoatException(ErrorKind.InvalidArgument, "unsupported_platform", $"{where} has no linux/amd64 image (it has {string.Join(", ", manifests.Select(m => m.Platform is { } p ? $"{p.Os}/{p.Architecture}" : "?"))})");
        return usable.FirstOrDefault(m => m.Platform is not null) ?? usable[0];
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Importing template {Name} from {Source}")]
    private static partial void LogImporting(ILogger logger, string name, string source);
}

/// <summary>
/// An image folder read without following links: every path is opened component by component
/// with <c>O_NOFOLLOW</c>, so a symlink planted in an uploaded archive cannot make Moat read a host file.
/// </summary>
internal sealed class ImageLayout : IDisposable
{
    private const int MaxDocumentBytes = 4 << 20;
    private readonly DirectoryHandle _root;
    private readonly string _label;

    private ImageLayout(DirectoryHandle root, string label)
    {
        _root = root;
        _label = label;
    }

    public static ImageLayout OpenFolder(string directory) => new(DirectoryHandle.OpenRoot(directory), directory);

    public bool Exists(string path)
    {
        var (dir, name) = Walk(path, throwIfMissing: false);
        using (dir)
            return dir?.Stat(name) is { IsRegular: true };
    }

    /// <summary>
    /// Opens a regular file of the layout; a clear error when it is missing or not a plain file.
    /// A symlink (docker save links duplicate layers) is resolved by name within the layout —
    /// never by the kernel — and may not leave it.
    /// </summary>
    public Stream Open(string path)
    {
        for (int hops = 0; hops < 8; hops++)
        {
            var (dir, name) = Walk(path, throwIfMissing: true);
            using (dir)
            {
                if (dir!.Stat(name) is { IsSymlink: true })
                {
                    var target = dir.ReadLink(name);
                    if (target.StartsWith('/'))
                        throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"{path} is a link to an absolute path");
                    path = Normalize(Path.GetDirectoryName(path) is { Length: > 0 } parent ? parent + "/" + target : target, path);
                    continue;
                }
                var handle = dir.OpenFileForRead(name) ?? throw Missing(path);
                return new FileStream(handle, FileAccess.Read, 1 << 16);
            }
        }
        throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"{path}: too many links");
    }

    /// <summary>Resolves . and .. by name; a path that climbs out of the layout is refused.</summary>
    private static string Normalize(string path, string original)
    {
        var stack = new List<string>();
        foreach (var part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            if (part == ".")
                continue;
            if (part == "..")
            {
                if (stack.Count == 0)
                    throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"{original} links outside the image");
                stack.RemoveAt(stack.Count - 1);
                continue;
            }
            stack.Add(part);
        }
        return string.Join('/', stack);
    }

    /// <summary>lstat of a path of the folder (its last component not followed); null when missing.</summary>
    public FileStatus? Stat(string path)
    {
        var parts = LayerUnpacker.Split(path, new LayerLimits());
        if (parts.Length == 0)
            return _root.StatSelf();
        var (dir, name) = Walk(path, throwIfMissing: false);
        using (dir)
            return dir?.Stat(name);
    }

    /// <summary>A symlink's target, as stored.</summary>
    public string ReadLink(string path)
    {
        var (dir, name) = Walk(path, throwIfMissing: true);
        using (dir)
            return dir!.ReadLink(name);
    }

    /// <summary>
    /// What a COPY source names: a path of the folder, or a <c>*</c>/<c>?</c> pattern in its last
    /// component. <c>..</c> may not climb out; a leading <c>/</c> is the folder's root.
    /// </summary>
    public List<(string Path, FileStatus Status)> Glob(string pattern, int line)
    {
        string[] parts;
        try
        {
            parts = LayerUnpacker.Split(pattern, new LayerLimits());
        }
        catch (LayerRejectedException)
        {
            throw MoatException.Invalid("copy_outside_context", $"Dockerfile line {line}: {pattern} is outside the build context");
        }
        var path = string.Join('/', parts);
        if (parts.Length == 0 || !(parts[^1].Contains('*') || parts[^1].Contains('?')))
            return Stat(path) is { } s ? [(path, s)] : [];
        if (parts[..^1].Any(p => p.Contains('*') || p.Contains('?')))
            throw MoatException.Invalid("unsupported_instruction", $"Dockerfile line {line}: wildcards are supported in the last part of a COPY source only");
        var parent = string.Join('/', parts[..^1]);
        var regex = new System.Text.RegularExpressions.Regex("^" + System.Text.RegularExpressions.Regex.Escape(parts[^1]).Replace("\\*", ".*").Replace("\\?", ".") + "$");
        var result = new List<(string, FileStatus)>();
        using var dir = OpenDirectoryAt(parent);
        if (dir is null)
            return result;
        foreach (var name in dir.List().Order(StringComparer.Ordinal))
        {
            if (regex.IsMatch(name) && dir.Stat(name) is { } status)
                result.Add((parent.Length == 0 ? name : parent + "/" + name, status));
        }
        return result;
    }

    /// <summary>Everything below a directory of the folder, not following links, parents before children.</summary>
    public List<(string Path, FileStatus Status)> Tree(string directory)
    {
        var result = new List<(string, FileStatus)>();
        using var dir = OpenDirectoryAt(directory);
        if (dir is not null)
            Collect(dir, directory, result, 0);
        return result;
    }

    private static void Collect(DirectoryHandle dir, string prefix, List<(string, FileStatus)> result, int depth)
    {
        if (depth > 128 || result.Count > 200_000)
            throw new MoatException(ErrorKind.TooLarge, "context_too_large", "the build context is deeper than 128 directories or has more than 200000 entries");
        foreach (var name in dir.List().Order(StringComparer.Ordinal))
        {
            if (dir.Stat(name) is not { } status)
                continue;
            var path = prefix.Length == 0 ? name : prefix + "/" + name;
            result.Add((path, status));
            if (status.IsDirectory)
            {
                using var child = dir.OpenDirectory(name);
                if (child is not null)
                    Collect(child, path, result, depth + 1);
            }
        }
    }

    private DirectoryHandle? OpenDirectoryAt(string path)
    {
        var current = _root.OpenDirectory(".");
        foreach (var part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            DirectoryHandle? next;
            try
            {
                next = current!.OpenDirectory(part);
            }
            catch (NotADirectoryException)
            {
                next = null;
            }
            current!.Dispose();
            current = next;
            if (current is null)
                return null;
        }
        return current;
    }

    public Stream OpenBlob(string digest) => Open("blobs/sha256/" + Digests.Hex(digest, "blob digest"));

    /// <summary>A small document (JSON), bounded.</summary>
    public byte[] ReadSmall(string path)
    {
        using var stream = Open(path);
        using var buffer = new MemoryStream();
        var chunk = new byte[65536];
        int n;
        while ((n = stream.Read(chunk)) > 0)
        {
            if (buffer.Length + n > MaxDocumentBytes)
                throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"{path} is larger than {MaxDocumentBytes} bytes");
            buffer.Write(chunk, 0, n);
        }
        return buffer.ToArray();
    }

    /// <summary>A small blob, checked against its digest.</summary>
    public byte[] ReadBlob(string digest, string what)
    {
        var bytes = ReadSmall("blobs/sha256/" + Digests.Hex(digest, what + " digest"));
        ImageAssembly.Verify(bytes, digest, what);
        return bytes;
    }

    private (DirectoryHandle? Dir, string Name) Walk(string path, bool throwIfMissing)
    {
        var parts = LayerUnpacker.Split(path, new LayerLimits());
        if (parts.Length == 0)
            throw Missing(path);
        var current = _root.OpenDirectory(".")!;
        foreach (var part in parts[..^1])
        {
            DirectoryHandle? next;
            try
            {
                next = current.OpenDirectory(part);
            }
            catch (NotADirectoryException)
            {
                next = null;
            }
            current.Dispose();
            if (next is null)
            {
                if (throwIfMissing)
                    throw Missing(path);
                return (null, "");
            }
            current = next;
        }
        return (current, parts[^1]);
    }

    private MoatException Missing(string path) => new(ErrorKind.InvalidArgument, "invalid_image", $"the image has no file {path} (in {_label})");

    public void Dispose() => _root.Dispose();
}
