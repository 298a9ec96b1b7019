using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace Moat.Tests;

/// <summary>Builds layer tars entry by entry, hostile ones included, in memory.</summary>
public sealed class LayerTar
{
    private readonly MemoryStream _buffer = new();
    private readonly TarWriter _writer;

    public LayerTar(TarEntryFormat format = TarEntryFormat.Pax)
    {
        Format = format;
        _writer = new TarWriter(_buffer, format, leaveOpen: true);
    }

    public TarEntryFormat Format { get; }

    private TarEntry Entry(TarEntryType type, string name) => Format switch
    {
        TarEntryFormat.Gnu => new GnuTarEntry(type, name),
        TarEntryFormat.Ustar => new UstarTarEntry(type, name),
        _ => new PaxTarEntry(type, name),
    };

    public LayerTar Dir(string name, int mode = 0x1ED, int uid = 0)
    {
        var e = Entry(TarEntryType.Directory, name);
        e.Mode = (UnixFileMode)mode;
        e.Uid = uid;
        e.Gid = uid;
        _writer.WriteEntry(e);
        return this;
    }

    public LayerTar File(string name, string content, int mode = 0x1A4, int uid = 0) => File(name, Encoding.UTF8.GetBytes(content), mode, uid);

    public LayerTar File(string name, byte[] content, int mode = 0x1A4, int uid = 0)
    {
        var e = Entry(TarEntryType.RegularFile, name);
        e.Mode = (UnixFileMode)mode;
        e.Uid = uid;
        e.Gid = uid;
        e.DataStream = new MemoryStream(content);
        _writer.WriteEntry(e);
        return this;
    }

    public LayerTar FileFrom(string name, Stream content, int mode = 0x1A4)
    {
        var e = Entry(TarEntryType.RegularFile, name);
        e.Mode = (UnixFileMode)mode;
        e.DataStream = content;
        _writer.WriteEntry(e);
        return this;
    }

    public LayerTar Symlink(string name, string target)
    {
        var e = Entry(TarEntryType.SymbolicLink, name);
        e.LinkName = target;
        e.Mode = (UnixFileMode)0x1FF;
        _writer.WriteEntry(e);
        return this;
    }

    public LayerTar Hardlink(string name, string target)
    {
        var e = Entry(TarEntryType.HardLink, name);
        e.LinkName = target;
        e.Mode = (UnixFileMode)0x1A4;
        _writer.WriteEntry(e);
        return this;
    }

    public LayerTar Device(string name, TarEntryType type, int major, int minor)
    {
        var e = (PosixTarEntry)Entry(type, name);
        e.DeviceMajor = major;
        e.DeviceMinor = minor;
        e.Mode = (UnixFileMode)0x1B6;
        _writer.WriteEntry(e);
        return this;
    }

    public LayerTar Fifo(string name)
    {
        var e = Entry(TarEntryType.Fifo, name);
        e.Mode = (UnixFileMode)0x1A4;
        _writer.WriteEntry(e);
        return this;
    }

    public LayerTar Pax(string name, Dictionary<string, string> attributes, byte[] content)
    {
        var e = new PaxTarEntry(TarEntryType.RegularFile, name, attributes) { DataStream = new MemoryStream(content), Mode = (UnixFileMode)0x1A4 };
        _writer.WriteEntry(e);
        return this;
    }

    /// <summary>The uncompressed tar.</summary>
    public byte[] Bytes()
    {
        _writer.Dispose();
        return _buffer.ToArray();
    }

    /// <summary>The tar, gzip-compressed.</summary>
    public byte[] Gzip() => TestImages.Gzip(Bytes());
}

/// <summary>Test images: OCI layouts and docker-save archives written from layer tars, with correct digests.</summary>
public static class TestImages
{
    public static byte[] Gzip(byte[] data)
    {
        using var output = new MemoryStream();
        using (var gz = new GZipStream(output, CompressionLevel.Fastest, leaveOpen: true))
            gz.Write(data);
        return output.ToArray();
    }

    public static string Sha(byte[] data) => "sha256:" + Convert.ToHexStringLower(SHA256.HashData(data));

    /// <summary>An image config naming the layers' diff ids.</summary>
    public static byte[] Config(IEnumerable<byte[]> uncompressedLayers, string arch = "amd64", string[]? env = null, string? workdir = null, string? user = null, string[]? entrypoint = null, string[]? cmd = null)
    {
        var config = new JsonObject();
        if (env is not null)
            config["Env"] = new JsonArray(env.Select(e => (JsonNode)e!).ToArray());
        if (workdir is not null)
            config["WorkingDir"] = workdir;
        if (user is not null)
            config["User"] = user;
        if (entrypoint is not null)
            config["Entrypoint"] = new JsonArray(entrypoint.Select(e => (JsonNode)e!).ToArray());
        if (cmd is not null)
            config["Cmd"] = new JsonArray(cmd.Select(e => (JsonNode)e!).ToArray());
        var doc = new JsonObject
        {
            ["architecture"] = arch,
            ["os"] = "linux",
            ["config"] = config,
            ["rootfs"] = new JsonObject { ["type"] = "layers", ["diff_ids"] = new JsonArray(uncompressedLayers.Select(l => (JsonNode)Sha(l)!).ToArray()) },
        };
        return Encoding.UTF8.GetBytes(doc.ToJsonString());
    }

    /// <summary>Writes an OCI image layout with one image (gzip layers) and returns the manifest's digest.</summary>
    public static string WriteLayout(string directory, IReadOnlyList<byte[]> uncompressedLayers, byte[]? config = null, bool gzip = true, string tag = "latest")
    {
        var blobs = Path.Combine(directory, "blobs", "sha256");
        Directory.CreateDirectory(blobs);
        config ??= Config(uncompressedLayers);
        var layerDescriptors = new JsonArray();
        foreach (var layer in uncompressedLayers)
        {
            var blob = gzip ? Gzip(layer) : layer;
            WriteBlob(blobs, blob);
            layerDescriptors.Add(new JsonObject { ["mediaType"] = gzip ? "application/vnd.oci.image.layer.v1.tar+gzip" : "application/vnd.oci.image.layer.v1.tar", ["digest"] = Sha(blob), ["size"] = blob.Length });
        }
        var manifest = ManifestFor(config, layerDescriptors);
        WriteBlob(blobs, config);
        WriteBlob(blobs, manifest);
        System.IO.File.WriteAllText(Path.Combine(directory, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");
        var index = new JsonObject
        {
            ["schemaVersion"] = 2,
            ["mediaType"] = "application/vnd.oci.image.index.v1+json",
            ["manifests"] = new JsonArray(new JsonObject { ["mediaType"] = "application/vnd.oci.image.manifest.v1+json", ["digest"] = Sha(manifest), ["size"] = manifest.Length, ["annotations"] = new JsonObject { ["org.opencontainers.image.ref.name"] = tag } }),
        };
        System.IO.File.WriteAllText(Path.Combine(directory, "index.json"), index.ToJsonString());
        return Sha(manifest);
    }

    public static byte[] ManifestFor(byte[] config, JsonArray layers) => Encoding.UTF8.GetBytes(new JsonObject
    {
        ["schemaVersion"] = 2,
        ["mediaType"] = "application/vnd.oci.image.manifest.v1+json",
        ["config"] = new JsonObject { ["mediaType"] = "application/vnd.oci.image.config.v1+json", ["digest"] = Sha(config), ["size"] = config.Length },
        ["layers"] = layers,
    }.ToJsonString());

    public static void WriteBlob(string blobs, byte[] blob) => System.IO.File.WriteAllBytes(Path.Combine(blobs, Sha(blob)[7..]), blob);

    /// <summary>A docker-save archive (manifest.json, HEX.json config, ID/layer.tar layers).</summary>
    public static byte[] DockerSave(IReadOnlyList<byte[]> uncompressedLayers, byte[]? config = null, string repoTag = "test:latest")
    {
        config ??= Config(uncompressedLayers);
        using var buffer = new MemoryStream();
        using (var writer = new TarWriter(buffer, TarEntryFormat.Pax, leaveOpen: true))
        {
            var layerPaths = new JsonArray();
            foreach (var layer in uncompressedLayers)
            {
                var id = Sha(layer)[7..];
                writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, id + "/") { Mode = (UnixFileMode)0x1ED });
                writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, id + "/layer.tar") { DataStream = new MemoryStream(layer), Mode = (UnixFileMode)0x1A4 });
                layerPaths.Add(id + "/layer.tar");
            }
            var configName = Sha(config)[7..] + ".json";
            writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, configName) { DataStream = new MemoryStream(config), Mode = (UnixFileMode)0x1A4 });
            var manifest = new JsonArray(new JsonObject { ["Config"] = configName, ["RepoTags"] = new JsonArray(repoTag), ["Layers"] = layerPaths });
            writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "manifest.json") { DataStream = new MemoryStream(Encoding.UTF8.GetBytes(manifest.ToJsonString())), Mode = (UnixFileMode)0x1A4 });
        }
        return buffer.ToArray();
    }

    /// <summary>A raw ustar header (for entries TarWriter will not write, such as a size with no data behind it).</summary>
    public static byte[] RawHeader(string name, char type, long size)
    {
        var h = new byte[512];
        Encoding.ASCII.GetBytes(name).CopyTo(h, 0);
        Encoding.ASCII.GetBytes("0000644\0").CopyTo(h, 100);
        Encoding.ASCII.GetBytes("0000000\0").CopyTo(h, 108);
        Encoding.ASCII.GetBytes("0000000\0").CopyTo(h, 116);
        // Base-256 (GNU) size: high bit set, big-endian value.
        h[124] = 0x80;
        for (int i = 0; i < 8; i++)
            h[135 - i] = (byte)(size >> (8 * i));
        Encoding.ASCII.GetBytes("00000000000\0").CopyTo(h, 136);
        h[156] = (byte)type;
        Encoding.ASCII.GetBytes("ustar  \0").CopyTo(h, 257);
        for (int i = 148; i < 156; i++)
            h[i] = (byte)' ';
        int sum = h.Sum(b => b);
        Encoding.ASCII.GetBytes(Convert.ToString(sum, 8).PadLeft(6, '0') + "\0 ").CopyTo(h, 148);
        return h;
    }
}

/// <summary>lstat and xattrs of host paths, for host-side checks (never following a final symlink).</summary>
internal static class HostFile
{
    public static Moat.Storage.Oci.FileStatus Stat(string path)
    {
        using var dir = Moat.Storage.Oci.DirectoryHandle.OpenRoot(Path.GetDirectoryName(path)!);
        return dir.Stat(Path.GetFileName(path)) ?? throw new FileNotFoundException(path);
    }

    public static byte[]? Attribute(string path, string attribute)
    {
        using var dir = Moat.Storage.Oci.DirectoryHandle.OpenRoot(Path.GetDirectoryName(path)!);
        return dir.GetAttribute(Path.GetFileName(path), attribute);
    }
}
