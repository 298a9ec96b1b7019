using Moat.Core.Runtimes;
using Moat.Runtimes.Cgroups;

namespace Moat.Tests;

/// <summary>
/// Checks made from the host, not from inside the sandbox: what of a sandbox is left on this
/// machine. Tests assert on these, never only on what the sandbox says about itself.
/// </summary>
public static class HostOracle
{
    /// <summary>Everything of a sandbox still present on the host, in words (empty: nothing).</summary>
    public static List<string> Leftovers(RuntimeInstance instance, string runcRoot)
    {
        var left = new List<string>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            if (line.Contains(instance.ContainerId, StringComparison.Ordinal) || line.Contains(instance.Directory, StringComparison.Ordinal))
                left.Add("mount: " + line);
        }
        if (Directory.Exists(instance.Directory))
            left.Add("directory: " + instance.Directory);
        if (Directory.Exists(Path.Combine(runcRoot, instance.ContainerId)))
            left.Add("runc state: " + Path.Combine(runcRoot, instance.ContainerId));
        if (instance.Properties.TryGetValue("cgroup", out var cgroup) && CgroupHierarchy.At(cgroup).Exists())
            left.Add("cgroup: " + cgroup);
        if (instance.Pid is { } pid && File.Exists($"/proc/{pid}/stat") && !IsZombie(pid))
            left.Add($"process: {pid}");
        foreach (var other in ProcessesMentioning(instance.ContainerId))
            left.Add($"process mentioning the sandbox: {other}");
        return left;
    }

    /// <summary>Pids of host processes whose command line names the sandbox.</summary>
    public static IEnumerable<int> ProcessesMentioning(string text)
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == Environment.ProcessId)
                continue;
            string cmdline;
            try
            {
                cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                continue;
            }
            if (cmdline.Contains(text, StringComparison.Ordinal))
                yield return pid;
        }
    }

    private static bool IsZombie(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)] == 'Z';
        }
        catch (IOException)
        {
            return true;
        }
    }

    /// <summary>Host processes in a cgroup.</summary>
    public static IReadOnlyList<int> CgroupProcesses(RuntimeInstance instance) =>
        instance.Properties.TryGetValue("cgroup", out var cgroup) ? CgroupHierarchy.At(cgroup).Processes() : [];
}
