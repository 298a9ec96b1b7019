using System.Buffers.Binary;
using System.Text;

namespace Moat.Runtimes.Microvm;

/// <summary>
/// The guest kernel of the microVM tier: its image, its release, and the modules the initramfs
/// must carry because the kernel has them as modules rather than built in (in load order,
/// dependencies first).
/// </summary>
/// <param name="Image">What QEMU boots (<c>-kernel</c>).</param>
/// <param name="Release">The kernel release (what <c>uname -r</c> says inside).</param>
/// <param name="Modules">Module files to load at boot, dependencies first.</param>
internal sealed record GuestKernel(string Image, string Release, IReadOnlyList<string> Modules)
{
    /// <summary>Drivers the guest needs: the virtio transport of microvm, its disks and its serial port, and the filesystems of the sandbox's root.</summary>
    public static readonly IReadOnlyList<string> Required = ["virtio_mmio", "virtio_blk", "virtio_console", "virtio_net", "ext4", "overlay"];

    /// <summary>Finds the kernel and works out its modules; a clear error when something is missing.</summary>
    public static GuestKernel Resolve(string image, string modulesOption)
    {
        if (string.IsNullOrEmpty(image) || !File.Exists(image))
            throw new FileNotFoundException($"no guest kernel at '{image}' (run build/kernel.sh, or set Moat:Qemu:Kernel)");
        image = Path.GetFullPath(image);
        var dir = Path.GetDirectoryName(image)!;
        var modules = !string.IsNullOrEmpty(modulesOption) ? modulesOption : Path.Combine(dir, "modules");
        bool haveModules = Directory.Exists(modules);
        if (!string.IsNullOrEmpty(modulesOption) && !haveModules)
            throw new DirectoryNotFoundException($"Moat:Qemu:KernelModules '{modulesOption}' does not exist");
        string release = File.Exists(Path.Combine(dir, "release")) ? File.ReadAllText(Path.Combine(dir, "release")).Trim()
            : haveModules ? Path.GetFileName(new DirectoryInfo(modules).ResolveLinkTarget(true)?.FullName ?? Path.GetFullPath(modules).TrimEnd('/'))
            : VersionString(image) ?? "unknown";
        return new GuestKernel(image, release, haveModules ? ModulesToLoad(Path.GetFullPath(modules)) : []);
    }

    /// <summary>A short key that changes when the kernel or its modules change.</summary>
    public string Stamp()
    {
        var info = new FileInfo(Image);
        var text = $"{Release}|{info.Length}|{info.LastWriteTimeUtc.Ticks}|{string.Join(',', Modules)}";
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16];
    }

    private static IReadOnlyList<string> ModulesToLoad(string modulesDir)
    {
        var builtin = new HashSet<string>(StringComparer.Ordinal);
        var builtinList = Path.Combine(modulesDir, "modules.builtin");
        if (File.Exists(builtinList))
        {
            foreach (var line in File.ReadLines(builtinList))
                builtin.Add(ModuleName(line));
        }
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(modulesDir, "*.ko*", SearchOption.AllDirectories))
        {
            if (file.EndsWith(".ko", StringComparison.Ordinal) || file.EndsWith(".ko.xz", StringComparison.Ordinal) || file.EndsWith(".ko.zst", StringComparison.Ordinal) || file.EndsWith(".ko.gz", StringComparison.Ordinal))
                files.TryAdd(ModuleName(file), file);
        }
        var order = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        void Visit(string name, string neededBy)
        {
            if (builtin.Contains(name) || !seen.Add(name))
                return;
            if (!files.TryGetValue(name, out var file))
                throw new InvalidOperationException($"the guest kernel has no {name} (needed by {neededBy}), neither built in nor as a module in {modulesDir}");
            foreach (var dep in Dependencies(file))
                Visit(dep, name);
            order.Add(file);
        }
        foreach (var name in Required)
            Visit(name, "Moat");
        return order;
    }

    private static string ModuleName(string path)
    {
        var name = Path.GetFileName(path.Trim());
        int ko = name.IndexOf(".ko", StringComparison.Ordinal);
        return (ko > 0 ? name[..ko] : name).Replace('-', '_');
    }

    /// <summary>The <c>depends=</c> entry of a module's .modinfo ELF section (uncompressed modules only; compressed ones list none here).</summary>
    internal static IReadOnlyList<string> Dependencies(string moduleFile)
    {
        if (!moduleFile.EndsWith(".ko", StringComparison.Ordinal))
            return [];
        var elf = File.ReadAllBytes(moduleFile);
        var modinfo = Section(elf, ".modinfo");
        foreach (var entry in Encoding.ASCII.GetString(modinfo).Split('\0'))
        {
            if (entry.StartsWith("depends=", StringComparison.Ordinal))
                return entry["depends=".Length..].Split(',', StringSplitOptions.RemoveEmptyEntries).Select(d => d.Replace('-', '_')).ToList();
        }
        return [];
    }

    private static ReadOnlySpan<byte> Section(byte[] elf, string wanted)
    {
        if (elf.Length < 64 || elf[0] != 0x7F || elf[1] != (byte)'E' || elf[4] != 2 /* ELFCLASS64 */)
            throw new InvalidDataException("not a 64-bit ELF kernel module");
        var span = elf.AsSpan();
        long shoff = BinaryPrimitives.ReadInt64LittleEndian(span[0x28..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3A..]);
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3C..]);
        int shstrndx = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3E..]);
        var strtab = span.Slice(checked((int)(shoff + (long)shstrndx * shentsize)), shentsize);
        long strOffset = BinaryPrimitives.ReadInt64LittleEndian(strtab[0x18..]);
        for (int i = 0; i < shnum; i++)
        {
            var h = span.Slice(checked((int)(shoff + (long)i * shentsize)), shentsize);
            int nameOffset = (int)BinaryPrimitives.ReadUInt32LittleEndian(h);
            var nameStart = span[checked((int)(strOffset + nameOffset))..];
            var name = Encoding.ASCII.GetString(nameStart[..nameStart.IndexOf((byte)0)]);
            if (name == wanted)
                return span.Slice(checked((int)BinaryPrimitives.ReadInt64LittleEndian(h[0x18..])), checked((int)BinaryPrimitives.ReadInt64LittleEndian(h[0x20..])));
        }
        return [];
    }

    /// <summary>"Linux version X" from a kernel image (bzImage header string or an uncompressed ELF's banner).</summary>
    private static string? VersionString(string image)
    {
        var bytes = File.ReadAllBytes(image);
        // bzImage: offset of the version string at 0x20E (relative to 0x200) when the header says HdrS.
        if (bytes.Length > 0x210 && Encoding.ASCII.GetString(bytes, 0x202, 4) == "HdrS")
        {
            int at = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(0x20E)) + 0x200;
            if (at < bytes.Length)
            {
                int end = Array.IndexOf(bytes, (byte)' ', at);
                return end > at ? Encoding.ASCII.GetString(bytes, at, end - at) : null;
            }
        }
        var marker = "Linux version "u8;
        int index = bytes.AsSpan().IndexOf(marker);
        if (index < 0)
            return null;
        int start = index + marker.Length, stop = Array.IndexOf(bytes, (byte)' ', start);
        return stop > start ? Encoding.ASCII.GetString(bytes, start, stop - start) : null;
    }
}
