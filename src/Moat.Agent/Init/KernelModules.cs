using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Init;

/// <summary>
/// VM guest: loads the kernel modules the host put into the initramfs (virtio transport, block,
/// console, overlayfs where the guest kernel has them as modules), in the order of the list the
/// host wrote, dependencies first. Parameters come from the kernel command line as
/// <c>module.param=value</c>, the way modprobe reads them.
/// </summary>
internal static unsafe class KernelModules
{
    private const int EEXIST = 17;

    /// <summary>Loads every module named in <paramref name="listFile"/> (one path per line); false if one failed.</summary>
    public static bool LoadListed(string listFile)
    {
        var list = Libc.ReadSmallText(listFile);
        if (list is null)
            return true; // nothing to load: the kernel has what it needs built in
        var cmdline = (Libc.ReadSmallText("/proc/cmdline") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries);
        bool ok = true;
        foreach (var raw in list.Split('\n'))
        {
            string path = raw.Trim();
            if (path.Length == 0)
                continue;
            string name = Path.GetFileName(path);
            name = name[..name.IndexOf(".ko", StringComparison.Ordinal)].Replace('-', '_');
            var parameters = new System.Text.StringBuilder();
            foreach (var arg in cmdline)
            {
                if (arg.StartsWith(name + ".", StringComparison.Ordinal))
                    parameters.Append(parameters.Length > 0 ? " " : "").Append(arg, name.Length + 1, arg.Length - name.Length - 1);
            }
            int fd;
            fixed (byte* p = Libc.Z(path))
                fd = Libc.open(p, Libc.O_RDONLY | Libc.O_CLOEXEC, 0);
            if (fd < 0)
            {
                AgentLog.Write($"module {path}: open failed (errno {Libc.Errno})");
                ok = false;
                continue;
            }
            int r;
            // Compressed modules are decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE).
            int flags = path.EndsWith(".ko", StringComparison.Ordinal) ? 0 : 4;
            fixed (byte* p = Libc.Z(parameters.ToString()))
                r = Native.moat_finit_module(fd, p, flags);
            Libc.close(fd);
            if (r < 0 && -r != EEXIST)
            {
                AgentLog.Write($"module {name}: finit_module failed (errno {-r})");
                ok = false;
            }
        }
        return ok;
    }
}
