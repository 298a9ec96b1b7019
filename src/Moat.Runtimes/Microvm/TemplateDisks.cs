using System.Collections.Concurrent;
using System.IO.Enumeration;
using Moat.Core.Host;
using Moat.Core.Templates;

namespace Moat.Runtimes.Microvm;

/// <summary>
/// One ext4 image per template, the root of every microVM made from it: built once with
/// <c>mkfs.ext4 -d</c> from the template's layers merged (a read-only overlay of them, mounted
/// just for the copy), then attached read-only to every VM, which shares the host's page cache
/// of it. Images are sparse: only the data takes space.
/// </summary>
internal sealed class TemplateDisks(string cacheDirectory, ProcessRunner runner)
{
    private readonly ConcurrentDictionary<string, Lazy<Task<string>>> _building = new();

    /// <summary>The image of <paramref name="template"/>, built if missing.</summary>
    public async Task<string> EnsureAsync(TemplateImage template, CancellationToken cancellationToken)
    {
        var path = Path.Combine(cacheDirectory, $"template-{template.Id}.ext4");
        if (File.Exists(path))
            return path;
        var build = _building.GetOrAdd(template.Id, _ => new Lazy<Task<string>>(() => BuildAsync(template, path)));
        try
        {
            // Not cancelled with one caller: another sandbox may be waiting for the same image.
            return await build.Value.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (build.Value.IsCompleted)
                _building.TryRemove(new KeyValuePair<string, Lazy<Task<string>>>(template.Id, build));
        }
    }

    private async Task<string> BuildAsync(TemplateImage template, string path)
    {
        if (template.LayerPaths.Count == 0)
            throw new InvalidOperationException($"template {template.Name} has no layers");
        Directory.CreateDirectory(cacheDirectory);
        var work = Path.Combine(cacheDirectory, $"build-{template.Id[..Math.Min(16, template.Id.Length)]}-{Environment.ProcessId}");
        var merged = Path.Combine(work, "root");
        var temp = Path.Combine(work, "image.ext4");
        if (Directory.Exists(work))
            Directory.Delete(work, recursive: true);
        Directory.CreateDirectory(merged);
        bool mounted = false;
        try
        {
            string source;
            if (template.LayerPaths.Count == 1)
                source = template.LayerPaths[0];
            else
            {
                // overlayfs without an upper layer is read-only; short links keep the option string
                // within a page however deep the layer store is.
                var links = Path.Combine(work, "l");
                Directory.CreateDirectory(links);
                var lowers = new List<string>();
                for (int i = template.LayerPaths.Count - 1; i >= 0; i--)
                {
                    var link = Path.Combine(links, i.ToString(System.Globalization.CultureInfo.InvariantCulture));
                    File.CreateSymbolicLink(link, template.LayerPaths[i]);
                    lowers.Add(link);
                }
                Linux.Mount("overlay", merged, "overlay", Linux.MsReadOnly, $"lowerdir={string.Join(':', lowers)}");
                mounted = true;
                source = merged;
            }
            var (bytes, inodes) = Measure(source);
            // Room for ext4's own metadata and block rounding; the guest never writes to it.
            long sizeMiB = Math.Max(64, (long)(bytes * 1.2 / (1 << 20)) + 64);
            long inodeCount = inodes + inodes / 4 + 1024;
            using (var file = File.Create(temp))
                file.SetLength(sizeMiB << 20);
            await runner.RunAsync("mkfs.ext4", ["-q", "-F", "-d", source, "-L", "moat-template", "-m", "0", "-N", inodeCount.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "-O", "^has_journal", "-E", "root_owner=0:0,nodiscard", "-T", "default", temp],
                new HostCommandOptions { Timeout = TimeSpan.FromMinutes(10) }, CancellationToken.None).ConfigureAwait(false);
            File.Move(temp, path, overwrite: true);
            return path;
        }
        finally
        {
            if (mounted)
                Linux.Unmount(merged);
            try
            {
                Directory.Delete(work, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>Bytes the tree's files take (rounded to blocks) and how many entries it has; symlinks are not followed.</summary>
    private static (long Bytes, long Inodes) Measure(string root)
    {
        long bytes = 0, inodes = 1;
        var entries = new FileSystemEnumerable<long>(root, (ref FileSystemEntry e) => e.IsDirectory ? 4096 : (e.Length + 4095) / 4096 * 4096,
            new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0, IgnoreInaccessible = false, ReturnSpecialDirectories = false })
        {
            ShouldRecursePredicate = (ref FileSystemEntry e) => (e.Attributes & FileAttributes.ReparsePoint) == 0,
        };
        foreach (var size in entries)
        {
            bytes += size;
            inodes++;
        }
        return (bytes, inodes);
    }
}
