using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Templates;
using Moat.Storage.Oci;

namespace Moat.Storage.Templates;

/// <summary>What a pull is allowed and how it runs.</summary>
public sealed record PullOptions
{
    /// <summary>Registries reachable and how.</summary>
    public RegistryAccess Access { get; init; } = new();
    /// <summary>Layers downloaded (and unpacked) at once.</summary>
    public int Concurrency { get; init; } = 3;
    /// <summary>A credential to use instead of the tenant's stored one.</summary>
    public RegistryCredential? Credential { get; init; }
}

/// <summary>
/// <c>moat template pull</c>: resolves a reference on its registry (an index or manifest list gives
/// its linux/amd64 image), fetches and verifies the manifest and config, then downloads the layers
/// the store lacks — several at once, each resumable from where an interrupted pull stopped and
/// checked against its digest — and unpacks each as soon as it is complete.
/// </summary>
public sealed partial class TemplatePuller(TemplateStore templates, RegistryCredentialStore credentials, ILogger<TemplatePuller> logger)
{
    /// <summary>Pulls <paramref name="reference"/> as template <paramref name="name"/> of <paramref name="tenant"/> (empty: public).</summary>
    public async Task<TemplateRecord> PullAsync(string reference, string name, string tenant, TemplateStart? start, PullOptions options, IProgress<LayerProgress>? progress, CancellationToken cancellationToken)
    {
        TemplateStore.ValidName(name);
        var image = await FetchAsync(reference, tenant, options, progress, cancellationToken).ConfigureAwait(false);
        return await templates.SaveAsync(new TemplateRecord
        {
            Tenant = tenant,
            Name = name,
            ImageId = image.ImageId,
            Layers = image.Layers,
            Config = image.Config,
            Source = image.Source,
            Start = start,
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A pulled image whose layers are in the store, not (yet) a template.</summary>
    public sealed record FetchedImage(string ImageId, IReadOnlyList<string> Layers, ImageConfig Config, string Source);

    /// <summary>Brings an image's layers into the store (using <paramref name="tenant"/>'s login) without naming it.</summary>
    public async Task<FetchedImage> FetchAsync(string reference, string tenant, PullOptions options, IProgress<LayerProgress>? progress, CancellationToken cancellationToken)
    {
        var image = ImageReference.Parse(reference);
        var credential = options.Credential ?? await credentials.GetAsync(tenant, image.Registry, cancellationToken).ConfigureAwait(false);
        using var client = new RegistryClient(image, credential, options.Access);
        LogPulling(logger, image.ToString());
        var resolved = await ResolveAsync(client, progress, cancellationToken).ConfigureAwait(false);
        var images = templates.Images;
        try
        {
            var diffIds = await ImageAssembly.FetchLayersAsync(images, resolved.Image, progress, options.Concurrency, cancellationToken).ConfigureAwait(false);
            return new FetchedImage(resolved.Image.ImageId, diffIds, ImageAssembly.ToImageConfig(resolved.Image.Config), $"pull:{image.Registry}/{image.Repository}@{resolved.ManifestDigest}");
        }
        catch (MoatException ex) when (ex.Kind == Moat.Core.Errors.ErrorKind.InvalidArgument || ex is LayerRejectedException)
        {
            // Content that is wrong (a bad digest, a hostile or broken layer) is not resumed from:
            // only a download cut by the network is.
            foreach (var layer in resolved.Image.Layers)
            {
                if (layer.Digest is { } d && Digests.TryHex(d, out var hex))
                    File.Delete(Path.Combine(images.BlobsDirectory, hex + ".partial"));
            }
            throw;
        }
        finally
        {
            // Layers in the store need their downloads no more; an unfinished .partial stays for the next pull to resume.
            foreach (var layer in resolved.Image.Layers)
            {
                if (layer.Digest is { } d && Digests.TryHex(d, out var hex) && Digests.TryHex(layer.DiffId, out var diffHex) && images.HasLayer(diffHex))
                    File.Delete(Path.Combine(images.BlobsDirectory, hex + ".partial"));
            }
        }
    }

    private async Task<(ResolvedImage Image, string ManifestDigest)> ResolveAsync(RegistryClient client, IProgress<LayerProgress>? progress, CancellationToken cancellationToken)
    {
        var (bytes, mediaType, digest) = await client.GetManifestAsync(client.Image.Reference, cancellationToken).ConfigureAwait(false);
        for (int depth = 0; MediaTypes.IsIndex(mediaType) || IsIndexDocument(bytes); depth++)
        {
            if (depth > 3)
                throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", "the registry's indexes nest more than 3 deep");
            var index = OciJson.Parse(bytes, OciJson.Default.OciIndex, "index");
            var pick = TemplateImporter.PickManifest(index.Manifests, $"{client.Image}");
            (bytes, mediaType, digest) = await client.GetManifestAsync(pick.Digest, cancellationToken).ConfigureAwait(false);
        }
        var manifest = OciJson.Parse(bytes, OciJson.Default.OciManifest, "manifest");
        if (manifest.SchemaVersion != 2 || manifest.Config is null)
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"{client.Image} has a manifest Moat does not read (schema {manifest.SchemaVersion}; only schema 2 / OCI)");
        var configBytes = await client.GetSmallBlobAsync(manifest.Config.Digest, cancellationToken).ConfigureAwait(false);
        var config = OciJson.Parse(configBytes, OciJson.Default.OciImageConfig, "config");
        var diffIds = config.Rootfs?.DiffIds ?? [];
        ImageAssembly.CheckRunnable(config, manifest.Layers.Count);
        var blobs = templates.Images.BlobsDirectory;
        var layers = manifest.Layers.Select((layer, i) =>
        {
            var hex = Digests.Hex(layer.Digest, "layer digest");
            var diffId = diffIds[i];
            return new ImageLayerSource(layer.Digest, diffId, layer.Size, async ct =>
            {
                var partial = Path.Combine(blobs, hex + ".partial");
                var diffHex = Digests.Hex(diffId, "layer diff id");
                progress?.Report(new LayerProgress(diffHex, "downloading", 0, layer.Size));
                // Unpacked while it downloads; the partial file is what a later pull resumes from.
                return await client.OpenBlobAsync(layer.Digest, layer.Size, partial, bytes => progress?.Report(new LayerProgress(diffHex, bytes >= layer.Size ? "unpacking" : "downloading", bytes, layer.Size)), ct).ConfigureAwait(false);
            });
        }).ToList();
        return (new ResolvedImage(manifest.Config.Digest, config, layers), digest);
    }

    private static bool IsIndexDocument(byte[] bytes)
    {
        // Some registries send indexes as application/json: look at the document itself.
        var text = System.Text.Encoding.UTF8.GetString(bytes, 0, Math.Min(bytes.Length, 4096));
        return text.Contains("\"manifests\"", StringComparison.Ordinal) && !text.Contains("\"layers\"", StringComparison.Ordinal);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Pulling {Image}")]
    private static partial void LogPulling(ILogger logger, string image);
}
