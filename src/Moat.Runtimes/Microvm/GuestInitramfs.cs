using System.Security.Cryptography;
using System.Text;

namespace Moat.Runtimes.Microvm;

/// <summary>
/// The initramfs every microVM boots: the agent as <c>/init</c> (with its loader and libraries
/// where the ELF interpreter path and the loader's default search path expect them), the kernel
/// modules the guest kernel lacks built in with their load order, and Moat's seccomp profile
/// compiled to BPF. Built once per agent build and kernel, cached as an uncompressed newc cpio
/// (decompressing would cost every boot more than the smaller file saves).
/// </summary>
internal static class GuestInitramfs
{
    private const int FormatVersion = 1;

    /// <summary>The cached initramfs for this agent and kernel, built if missing.</summary>
    public static string Ensure(string cacheDirectory, string agentDirectory, GuestKernel kernel)
    {
        var seccomp = GuestSeccomp.Compile(Moat.Runtimes.Seccomp.SeccompProfile.Json);
        var key = Key(agentDirectory, kernel, seccomp);
        Directory.CreateDirectory(cacheDirectory);
        var path = Path.Combine(cacheDirectory, $"initramfs-{key}.cpio");
        if (File.Exists(path))
            return path;
        var temp = $"{path}.{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp";
        try
        {
            using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write))
            using (var cpio = new NewcArchive(file))
            {
                foreach (var dir in new[] { "dev", "proc", "sys", "lib", "lib64", "lib/x86_64-linux-gnu", "moat", "moat/modules", "lower", "scratch", "newroot", "cgroup" })
                    cpio.Directory(dir);
                // The kernel opens /dev/console for init's stdio before any devtmpfs exists.
                cpio.CharacterDevice("dev/console", 5, 1, 0x180);
                cpio.File("init", File.ReadAllBytes(Path.Combine(agentDirectory, "moat-agent")), 0x1ED);
                foreach (var lib in Directory.EnumerateFiles(Path.Combine(agentDirectory, "lib")).Order(StringComparer.Ordinal))
                {
                    var name = Path.GetFileName(lib);
                    var target = name.StartsWith("ld-linux", StringComparison.Ordinal) ? $"lib64/{name}" : $"lib/x86_64-linux-gnu/{name}";
                    cpio.File(target, File.ReadAllBytes(lib), 0x1ED);
                }
                var load = new StringBuilder();
                foreach (var module in kernel.Modules)
                {
                    var inside = $"/moat/modules/{Path.GetFileName(module)}";
                    cpio.File(inside, File.ReadAllBytes(module));
                    load.Append(inside).Append('\n');
                }
                cpio.File("moat/modules.load", Encoding.UTF8.GetBytes(load.ToString()));
                cpio.File("moat/seccomp.bpf", seccomp);
                cpio.File("moat/masked-paths", Encoding.UTF8.GetBytes(string.Join('\n', MaskedPaths) + "\n"));
                cpio.File("moat/readonly-paths", Encoding.UTF8.GetBytes(string.Join('\n', Oci.OciSpecBuilder.ReadonlyPaths) + "\n"));
            }
            File.Move(temp, path, overwrite: true);
        }
        finally
        {
            File.Delete(temp);
        }
        return path;
    }

    /// <summary>
    /// The container tiers' masked paths, hidden in the guest too. All but /proc/sysrq-trigger:
    /// there it reaches only the guest's own kernel, and root in a sandbox may crash its own VM.
    /// </summary>
    private static IEnumerable<string> MaskedPaths => Oci.OciSpecBuilder.MaskedPaths.Where(p => p != "/proc/sysrq-trigger");

    private static string Key(string agentDirectory, GuestKernel kernel, byte[] seccomp)
    {
        var agent = Path.Combine(agentDirectory, "moat-agent");
        var stampFile = Path.Combine(agentDirectory, ".stamp");
        var info = new FileInfo(agent);
        var agentStamp = File.Exists(stampFile) ? File.ReadAllText(stampFile).Trim() : $"{info.Length:x}{info.LastWriteTimeUtc.Ticks:x}";
        var text = $"{FormatVersion}|{agentStamp}|{kernel.Stamp()}|{Convert.ToHexString(SHA256.HashData(seccomp))}|{string.Join(',', MaskedPaths)}|{string.Join(',', Oci.OciSpecBuilder.ReadonlyPaths)}";
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16];
    }
}
