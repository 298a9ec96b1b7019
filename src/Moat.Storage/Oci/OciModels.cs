using System.IO.Compression;
using System.Text.Json;
using System.Text.Json.Serialization;
using Moat.Core.Errors;

namespace Moat.Storage.Oci;

/// <summary>Media types of the OCI image spec and of Docker's v2 schema 2, which registries still serve.</summary>
public static class MediaTypes
{
    public const string OciIndex = "application/vnd.oci.image.index.v1+json";
    public const string OciManifest = "application/vnd.oci.image.manifest.v1+json";
    public const string OciConfig = "application/vnd.oci.image.config.v1+json";
    public const string OciLayer = "application/vnd.oci.image.layer.v1.tar";
    public const string OciLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    public const string OciLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd";
    public const string DockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json";
    public const string DockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
    public const string DockerConfig = "application/vnd.docker.container.image.v1+json";
    public const string DockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// <summary>Whether a manifest of this type lists other manifests (an index / manifest list).</summary>
    public static bool IsIndex(string? mediaType) => mediaType is OciIndex or DockerManifestList;

    /// <summary>What a registry is asked for: every manifest kind Moat reads.</summary>
    public static readonly string[] Accept = [OciIndex, DockerManifestList, OciManifest, DockerManifest];
}

/// <summary>A content descriptor.</summary>
public sealed record OciDescriptor
{
    public string MediaType { get; init; } = "";
    public string Digest { get; init; } = "";
    public long Size { get; init; }
    public OciPlatform? Platform { get; init; }
    public IReadOnlyDictionary<string, string>? Annotations { get; init; }
}

/// <summary>Platform of a manifest in an index.</summary>
public sealed record OciPlatform
{
    public string Architecture { get; init; } = "";
    public string Os { get; init; } = "";
    public string? Variant { get; init; }
}

/// <summary>An image index or manifest list (the two have the same shape).</summary>
public sealed record OciIndex
{
    public int SchemaVersion { get; init; }
    public string? MediaType { get; init; }
    public IReadOnlyList<OciDescriptor> Manifests { get; init; } = [];
}

/// <summary>An image manifest (OCI or Docker v2 schema 2).</summary>
public sealed record OciManifest
{
    public int SchemaVersion { get; init; }
    public string? MediaType { get; init; }
    public OciDescriptor? Config { get; init; }
    public IReadOnlyList<OciDescriptor> Layers { get; init; } = [];
}

/// <summary>The parts of an image config Moat reads.</summary>
public sealed record OciImageConfig
{
    public string? Architecture { get; init; }
    public string? Os { get; init; }
    public OciContainerConfig? Config { get; init; }
    public OciRootfs? Rootfs { get; init; }
}

/// <summary>The config's <c>config</c> object.</summary>
public sealed record OciContainerConfig
{
    public IReadOnlyList<string>? Env { get; init; }
    public IReadOnlyList<string>? Entrypoint { get; init; }
    public IReadOnlyList<string>? Cmd { get; init; }
    public string? WorkingDir { get; init; }
    public string? User { get; init; }
    public IReadOnlyDictionary<string, string>? Labels { get; init; }
}

/// <summary>The config's <c>rootfs</c>: the diff ids of its layers, lowest first.</summary>
public sealed record OciRootfs
{
    public string Type { get; init; } = "layers";
    [JsonPropertyName("diff_ids")]
    public IReadOnlyList<string> DiffIds { get; init; } = [];
}

/// <summary>One image of <c>manifest.json</c> in a <c>docker save</c> archive.</summary>
public sealed record DockerArchiveImage
{
    [JsonPropertyName("Config")]
    public string Config { get; init; } = "";
    [JsonPropertyName("RepoTags")]
    public IReadOnlyList<string>? RepoTags { get; init; }
    [JsonPropertyName("Layers")]
    public IReadOnlyList<string> Layers { get; init; } = [];
}

/// <summary>Source-generated JSON for OCI documents (read leniently: registries add fields).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, ReadCommentHandling = JsonCommentHandling.Skip)]
[JsonSerializable(typeof(OciIndex))]
[JsonSerializable(typeof(OciManifest))]
[JsonSerializable(typeof(OciImageConfig))]
[JsonSerializable(typeof(List<DockerArchiveImage>))]
[JsonSerializable(typeof(RegistryTokenResponse))]
public sealed partial class OciJson : JsonSerializerContext
{
    /// <summary>Parses an OCI document, with one clear error for every way it can be wrong.</summary>
    public static T Parse<T>(ReadOnlySpan<byte> json, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type, string what)
    {
        try
        {
            return JsonSerializer.Deserialize(json, type) ?? throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"the image's {what} is JSON null");
        }
        catch (JsonException ex)
        {
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"the image's {what} is not valid: {ex.Message.Split(" Path:")[0]}");
        }
    }
}

/// <summary>The answer of a registry's token endpoint.</summary>
public sealed record RegistryTokenResponse
{
    public string? Token { get; init; }
    [JsonPropertyName("access_token")]
    public string? AccessToken { get; init; }
    [JsonPropertyName("expires_in")]
    public int? ExpiresIn { get; init; }
}

/// <summary>Digests as OCI writes them: <c>sha256:</c> and 64 lowercase hex digits.</summary>
public static class Digests
{
    /// <summary>The hex part of a sha256 digest; a clear error for anything else (other algorithms, path tricks).</summary>
    public static string Hex(string digest, string what = "digest")
    {
        if (!TryHex(digest, out var hex))
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_digest", $"{what} '{(digest.Length > 80 ? digest[..80] + "…" : digest)}' is not a sha256 digest");
        return hex;
    }

    /// <summary>Whether <paramref name="digest"/> is sha256:64-hex.</summary>
    public static bool TryHex(string? digest, out string hex)
    {
        hex = "";
        if (digest is null || !digest.StartsWith("sha256:", StringComparison.Ordinal) || digest.Length != 71)
            return false;
        var h = digest[7..];
        if (!h.All(c => c is >= '0' and <= '9' or >= 'a' and <= 'f'))
            return false;
        hex = h;
        return true;
    }
}

/// <summary>Layer blobs to tar streams, by content, not by what the manifest claims.</summary>
public static class LayerCompression
{
    /// <summary>Wraps <paramref name="blob"/> in the decompressor its first bytes call for (gzip, zstd or none).</summary>
    /// <remarks>Disposing the returned stream leaves <paramref name="blob"/> open when <paramref name="leaveOpen"/> is set.</remarks>
    public static async Task<Stream> OpenAsync(Stream blob, CancellationToken cancellationToken, bool leaveOpen = false)
    {
        var head = new byte[4];
        int n = 0;
        while (n < head.Length)
        {
            int r = await blob.ReadAsync(head.AsMemory(n), cancellationToken).ConfigureAwait(false);
            if (r == 0)
                break;
            n += r;
        }
        var whole = new PrefixedStream(head.AsMemory(0, n), blob, leaveOpen);
        if (n >= 2 && head[0] == 0x1f && head[1] == 0x8b)
            return new GZipStream(whole, CompressionMode.Decompress);
        if (n >= 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd)
            return new ZstdSharp.DecompressionStream(whole);
        return whole;
    }
}

/// <summary>Bytes already read, then the rest of a stream.</summary>
internal sealed class PrefixedStream(ReadOnlyMemory<byte> prefix, Stream inner, bool leaveOpen) : Stream
{
    private ReadOnlyMemory<byte> _prefix = prefix;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        if (_prefix.Length > 0)
        {
            int n = Math.Min(buffer.Length, _prefix.Length);
            _prefix.Span[..n].CopyTo(buffer);
            _prefix = _prefix[n..];
            return n;
        }
        return inner.Read(buffer);
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_prefix.Length > 0)
            return ValueTask.FromResult(Read(buffer.Span));
        return inner.ReadAsync(buffer, cancellationToken);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && !leaveOpen)
            inner.Dispose();
        base.Dispose(disposing);
    }
}
