using System.Security.Cryptography;
using Moat.Core.Errors;
using Moat.Core.Templates;
using Moat.Storage.Oci;

namespace Moat.Storage.Templates;

/// <summary>One layer of an image being brought in: how to open its blob, and what it must hash to.</summary>
/// <param name="Digest">Digest of the blob as stored (compressed), checked while it is read; null when the source has none (a docker save layer is its own diff id).</param>
/// <param name="DiffId">Digest of the uncompressed tar, from the image config.</param>
/// <param name="Size">Bytes of the blob, for progress (0 when unknown).</param>
/// <param name="Open">Opens the blob.</param>
public sealed record ImageLayerSource(string? Digest, string DiffId, long Size, Func<CancellationToken, Task<Stream>> Open);

/// <summary>An image resolved from a layout, an archive or a registry, before its layers are in the store.</summary>
public sealed record ResolvedImage(string ImageId, OciImageConfig Config, IReadOnlyList<ImageLayerSource> Layers);

/// <summary>What happens to one layer while an image comes in (for progress displays).</summary>
public sealed record LayerProgress(string DiffId, string Status, long Bytes, long Total);

/// <summary>
/// The one way an image enters the store, wherever it comes from: its config checked (linux/amd64,
/// one diff id per layer), each missing layer unpacked once with its digests verified, then the
/// template saved pointing at it.
/// </summary>
public static class ImageAssembly
{
    /// <summary>The image config's runtime settings as Moat honours them.</summary>
    public static ImageConfig ToImageConfig(OciImageConfig config)
    {
        var c = config.Config;
        var env = c?.Env is { Count: > 0 } e ? e.Where(x => x.Contains('=')).ToList() : new ImageConfig().Env.ToList();
        if (!env.Any(x => x.StartsWith("PATH=", StringComparison.Ordinal)))
            env.Insert(0, new ImageConfig().Env[0]);
        return new ImageConfig
        {
            Env = env,
            WorkingDir = c?.WorkingDir ?? "",
            User = c?.User ?? "",
            Entrypoint = c?.Entrypoint ?? [],
            Cmd = c?.Cmd ?? [],
        };
    }

    /// <summary>Refuses images Moat cannot run here, with the reason.</summary>
    public static void CheckRunnable(OciImageConfig config, int layerCount)
    {
        if (config.Architecture is { Length: > 0 } arch && arch != "amd64")
            throw new MoatException(ErrorKind.InvalidArgument, "unsupported_platform", $"the image is for {config.Os ?? "?"}/{arch}; this host runs linux/amd64 images");
        if (config.Os is { Length: > 0 } os && os != "linux")
            throw new MoatException(ErrorKind.InvalidArgument, "unsupported_platform", $"the image is for {os}; Moat runs linux images");
        var diffIds = config.Rootfs?.DiffIds ?? [];
        if (diffIds.Count != layerCount)
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"the image has {layerCount} layers but its config names {diffIds.Count} diff ids");
        if (layerCount == 0)
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", "the image has no layers");
        if (layerCount > 120)
            throw new MoatException(ErrorKind.InvalidArgument, "too_many_layers", $"the image has {layerCount} layers; overlayfs stacks at most 120 here (flatten it)");
    }

    /// <summary>Brings every layer of <paramref name="image"/> into the store (at most <paramref name="parallel"/> at once) and saves the template.</summary>
    public static async Task<TemplateRecord> SaveAsync(TemplateStore templates, ResolvedImage image, string name, string tenant, string source, TemplateStart? start, IProgress<LayerProgress>? progress, int parallel, CancellationToken cancellationToken)
    {
        TemplateStore.ValidName(name);
        var diffIds = await FetchLayersAsync(templates.Images, image, progress, parallel, cancellationToken).ConfigureAwait(false);
        return await templates.SaveAsync(new TemplateRecord
        {
            Tenant = tenant,
            Name = name,
            ImageId = image.ImageId,
            Layers = diffIds,
            Config = ToImageConfig(image.Config),
            Source = source,
            Start = start,
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Brings every layer of <paramref name="image"/> into the store; returns their hex diff ids, lowest first.</summary>
    public static async Task<string[]> FetchLayersAsync(ImageStore images, ResolvedImage image, IProgress<LayerProgress>? progress, int parallel, CancellationToken cancellationToken)
    {
        CheckRunnable(image.Config, image.Layers.Count);
        var diffIds = new string[image.Layers.Count];
        await Parallel.ForAsync(0, image.Layers.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, parallel), CancellationToken = cancellationToken }, async (i, ct) =>
        {
            var layer = image.Layers[i];
            var expected = Digests.Hex(layer.DiffId, "layer diff id");
            if (images.HasLayer(expected))
            {
                progress?.Report(new LayerProgress(expected, "exists", layer.Size, layer.Size));
                diffIds[i] = expected;
                return;
            }
            progress?.Report(new LayerProgress(expected, "unpacking", 0, layer.Size));
            HashingReadStream? hashing = null;
            diffIds[i] = await images.AddLayerAsync(async c =>
            {
                var blob = await layer.Open(c).ConfigureAwait(false);
                hashing = new HashingReadStream(blob);
                return hashing;
            }, layer.DiffId, ct, async c =>
            {
                if (layer.Digest is null || hashing is null)
                    return;
                await hashing.DrainAsync(c).ConfigureAwait(false);
                var actual = hashing.HexDigest();
                if (actual != Digests.Hex(layer.Digest))
                    throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"layer blob {layer.Digest} has digest sha256:{actual}");
            }).ConfigureAwait(false);
            progress?.Report(new LayerProgress(expected, "done", layer.Size, layer.Size));
        }).ConfigureAwait(false);
        return diffIds;
    }

    /// <summary>sha256:HEX of some bytes.</summary>
    public static string DigestOf(ReadOnlySpan<byte> bytes) => "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>Checks that <paramref name="bytes"/> hash to <paramref name="digest"/>.</summary>
    public static void Verify(ReadOnlySpan<byte> bytes, string digest, string what)
    {
        Digests.Hex(digest, what);
        var actual = DigestOf(bytes);
        if (actual != digest)
            throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"the {what} should have digest {digest} but has {actual}");
    }
}
