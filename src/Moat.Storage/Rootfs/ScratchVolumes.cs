using System.Collections.Concurrent;
using Moat.Core.Host;

namespace Moat.Storage.Rootfs;

/// <summary>
/// Per-sandbox writable volumes: a sparse ext4 image of exactly the sandbox's disk size. One
/// formatted image per size is made once (mkfs.ext4, no journal: the volume dies with the
/// sandbox) and every sandbox gets a sparse copy — about 1 MB of real writes, not a mkfs.
/// </summary>
public sealed class ScratchVolumes(string cacheDirectory, ProcessRunner runner)
{
    private readonly ConcurrentDictionary<int, Lazy<Task<string>>> _formatted = new();

    /// <summary>Creates <paramref name="image"/>, a fresh empty ext4 volume of <paramref name="sizeMiB"/>.</summary>
    public async Task CreateAsync(string image, int sizeMiB, CancellationToken cancellationToken)
    {
        var template = await _formatted.GetOrAdd(sizeMiB, size => new Lazy<Task<string>>(() => FormatAsync(size))).Value.ConfigureAwait(false);
        Linux.CopySparse(template, image);
    }

    private async Task<string> FormatAsync(int sizeMiB)
    {
        Directory.CreateDirectory(cacheDirectory);
        var path = Path.Combine(cacheDirectory, $"scratch-v2-{sizeMiB}m.ext4");
        if (File.Exists(path))
            return path;
        var temp = path + $".{Environment.ProcessId}.tmp";
        File.Delete(temp);
        using (var file = File.Create(temp))
            file.SetLength((long)sizeMiB << 20);
        // Root-owned 0755 root directory; no reserved blocks (the whole quota is the user's);
        // lazy init so that formatting writes only metadata.
        await runner.RunAsync("mkfs.ext4", ["-q", "-F", "-m", "0", "-T", "default", "-O", "^has_journal", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", "-L", "moat-scratch", temp], cancellationToken: CancellationToken.None).ConfigureAwait(false);
        File.Move(temp, path, overwrite: true);
        return path;
    }
}
