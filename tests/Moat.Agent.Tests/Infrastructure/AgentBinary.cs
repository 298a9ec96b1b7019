using System.Diagnostics;

namespace Moat.Agent.Tests.Infrastructure;

/// <summary>
/// The published agent layout (artifacts/agent). Built once per test run through
/// src/Moat.Agent/publish.sh, which returns at once when nothing changed.
/// </summary>
public static class AgentBinary
{
    private static readonly Lazy<string> Layout = new(Publish, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Root of the repository.</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary>The directory holding moat-agent, lib/ and chan/.</summary>
    public static string Directory => Layout.Value;

    public static string Agent => Path.Combine(Directory, "moat-agent");

    public static string Loader => Path.Combine(Directory, "lib", "ld-linux-x86-64.so.2");

    private static string Publish()
    {
        string outDir = Environment.GetEnvironmentVariable("MOAT_AGENT_DIR") ?? Path.Combine(RepoRoot, "artifacts", "agent");
        var psi = new ProcessStartInfo("bash", [Path.Combine(RepoRoot, "src", "Moat.Agent", "publish.sh"), outDir])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        using var p = Process.Start(psi)!;
        string stderr = p.StandardError.ReadToEnd();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"publish.sh failed ({p.ExitCode}): {stderr}");
        return outDir;
    }

    private static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Moat.slnx")))
            dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("cannot find the repository root (Moat.slnx)");
    }
}
