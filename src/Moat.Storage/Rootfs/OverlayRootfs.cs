using Microsoft.Extensions.Logging;
using Moat.Core.Host;
using Moat.Core.Templates;

namespace Moat.Storage.Rootfs;

/// <summary>
/// A sandbox's root filesystem for the container tiers: the template's layers read-only at the
/// bottom of an overlayfs, and on top a writable layer on the sandbox's own ext4 scratch volume,
/// whose size is the sandbox's disk limit. Nothing of the template is copied.
/// </summary>
public sealed partial class OverlayRootfs(ScratchVolumes scratch, ILogger<OverlayRootfs> logger)
{
    /// <summary>Paths of a prepared rootfs.</summary>
    public readonly record struct Layout(string Root, string ScratchMount, string ScratchImage);

    /// <summary>Where the pieces of a sandbox's rootfs live inside its directory.</summary>
    public static Layout LayoutOf(string sandboxDirectory) => new(
        Path.Combine(sandboxDirectory, "rootfs"),
        Path.Combine(sandboxDirectory, "scratch"),
        Path.Combine(sandboxDirectory, "scratch.img"));

    /// <summary>
    /// Mounts the rootfs and returns its path; on failure undoes what it did.
    /// <paramref name="platformLayers"/> (the agent) are stacked above the template's layers.
    /// </summary>
    public async Task<Layout> PrepareAsync(TemplateImage template, IReadOnlyList<string> platformLayers, string sandboxDirectory, int diskMiB, CancellationToken cancellationToken)
    {
        if (template.LayerPaths.Count == 0)
            throw new InvalidOperationException($"template {template.Name} has no layers");
        var layout = LayoutOf(sandboxDirectory);
        try
        {
            await scratch.CreateAsync(layout.ScratchImage, diskMiB, cancellationToken).ConfigureAwait(false);
            Directory.CreateDirectory(layout.ScratchMount);
            using (var loop = Linux.AttachLoop(layout.ScratchImage, readOnly: false))
                Linux.Mount(loop.Path, layout.ScratchMount, "ext4", Linux.MsNoSuid | Linux.MsNoDev, "errors=remount-ro,noinit_itable");
            var upper = Path.Combine(layout.ScratchMount, "upper");
            var work = Path.Combine(layout.ScratchMount, "work");
            Directory.CreateDirectory(upper);
            Directory.CreateDirectory(work);
            Directory.CreateDirectory(layout.Root);
            // overlayfs lists lower layers top first.
            Linux.MountOverlay(layout.Root, [.. platformLayers, .. template.LayerPaths.Reverse()], upper, work);
            return layout;
        }
        catch
        {
            Release(sandboxDirectory);
            throw;
        }
    }

    /// <summary>Unmounts and deletes everything <see cref="PrepareAsync"/> made. Idempotent.</summary>
    public void Release(string sandboxDirectory)
    {
        var layout = LayoutOf(sandboxDirectory);
        foreach (var mount in new[] { layout.Root, layout.ScratchMount })
        {
            try
            {
                Linux.Unmount(mount);
            }
            catch (IOException ex)
            {
                LogUnmountFailed(logger, mount, ex);
            }
        }
        try
        {
            File.Delete(layout.ScratchImage);
        }
        catch (IOException ex)
        {
            LogUnmountFailed(logger, layout.ScratchImage, ex);
        }
    }

    /// <summary>Bytes used and available on the writable layer.</summary>
    public static Linux.FsUsage? Usage(string sandboxDirectory)
    {
        var mount = LayoutOf(sandboxDirectory).ScratchMount;
        try
        {
            return Linux.StatFilesystem(mount);
        }
        catch (IOException)
        {
            return null;
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not release {Path}")]
    private static partial void LogUnmountFailed(ILogger logger, string path, Exception exception);
}
