using System.Diagnostics;
using System.Text;

namespace Moat.Client.Tests.Infrastructure;

/// <summary>What a run of the CLI did.</summary>
public sealed record CliResult(int Exit, string Stdout, string Stderr);

/// <summary>Runs the <c>moat</c> CLI as a process, the way a user does.</summary>
public static class MoatCli
{
    /// <summary>The CLI assembly: MOAT_CLI_DLL, else the build output of src/Moat.Cli for this configuration, else artifacts/cli.</summary>
    public static string Path()
    {
        if (Environment.GetEnvironmentVariable("MOAT_CLI_DLL") is { Length: > 0 } given)
            return given;
        var configuration = AppContext.BaseDirectory.Contains($"{System.IO.Path.DirectorySeparatorChar}Release{System.IO.Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Release" : "Debug";
        string[] candidates =
        [
            System.IO.Path.Combine(Repo.Root, "src", "Moat.Cli", "bin", configuration, "net10.0", "linux-x64", "moat.dll"),
            System.IO.Path.Combine(Repo.Root, "artifacts", "cli", "moat.dll"),
        ];
        return candidates.FirstOrDefault(File.Exists)
            ?? throw new FileNotFoundException($"the moat CLI is not built; looked for {string.Join(" and ", candidates)} (build Moat.slnx)");
    }

    /// <summary>Runs moat with <paramref name="args"/>, feeding <paramref name="stdin"/>, within <paramref name="limit"/>.</summary>
    public static async Task<CliResult> RunAsync(IReadOnlyDictionary<string, string> env, string? stdin, TimeSpan limit, Action<string>? log, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path());
        foreach (var arg in args)
            start.ArgumentList.Add(arg);
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment.Remove("MOAT_URL");
        foreach (var (k, v) in env)
            start.Environment[k] = v;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (stdin is not null)
            await process.StandardInput.WriteAsync(stdin);
        process.StandardInput.Close();
        using var cts = new CancellationTokenSource(limit);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"moat {string.Join(' ', args)} did not finish within {limit}");
        }
        var result = new CliResult(process.ExitCode, await stdout, await stderr);
        log?.Invoke($"$ moat {string.Join(' ', args)}\n[exit {result.Exit}]\n{result.Stdout}{result.Stderr}");
        return result;
    }
}
