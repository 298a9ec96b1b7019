using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Moat.Core.Sandboxes;
using Moat.Core.Templates;
using Moat.Node;

namespace Moat.Bench;

/// <summary>
/// moat-bench SCENARIO [--tier container|gvisor|microvm] [--n N] [--out DIR]
/// Scenarios: create, exec, oneshot, cli, density, templates; boot (microvm only). Each measures Moat and the raw runtime doing
/// the same thing in the same run, and writes DIR/SCENARIO-TIER.json with the samples.
/// </summary>
public static class Program
{
    public static async Task<int> Main(string[] args)
    {
        if (args.Length == 0)
        {
            Console.Error.WriteLine("usage: moat-bench create|exec|oneshot|cli|density|templates [--tier T] [--n N] [--out DIR]");
            return 2;
        }
        var scenario = args[0];
        string Arg(string name, string fallback)
        {
            int i = Array.IndexOf(args, name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
        }
        var tier = IsolationTiers.TryParse(Arg("--tier", "container")) ?? throw new ArgumentException("unknown tier");
        int n = int.Parse(Arg("--n", "30"));
        var outDir = Arg("--out", Path.Combine(Bench.RepoRoot, "bench", "results"));
        Directory.CreateDirectory(outDir);

        await using var bench = await Bench.StartAsync(tier);
        JsonObject result = scenario switch
        {
            "create" when tier == IsolationTier.Microvm => await MicrovmScenarios.CreateAsync(bench, n),
            "exec" when tier == IsolationTier.Microvm => await MicrovmScenarios.ExecAsync(bench, n),
            "boot" when tier == IsolationTier.Microvm => await MicrovmScenarios.BootAsync(bench, n),
            "density" when tier == IsolationTier.Microvm => await MicrovmScenarios.DensityAsync(bench, n),
            "create" => await Scenarios.CreateAsync(bench, n),
            "exec" => await Scenarios.ExecAsync(bench, n),
            "oneshot" => await Scenarios.OneShotAsync(bench, n),
            "cli" => await Scenarios.CliAsync(bench, n),
            "density" => await Scenarios.DensityAsync(bench, n),
            "templates" => await TemplateScenarios.RunAsync(bench, n),
            _ => throw new ArgumentException($"unknown scenario {scenario}"),
        };
        result["scenario"] = scenario;
        result["tier"] = tier.Name();
        result["host"] = Bench.HostDescription();
        result["when"] = DateTimeOffset.UtcNow.ToString("u");
        var file = Path.Combine(outDir, $"{scenario}-{tier.Name()}.json");
        await File.WriteAllTextAsync(file, result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"wrote {file}");
        return 0;
    }
}

/// <summary>An embedded Moat node for benchmarking, plus what the raw-runtime baselines need.</summary>
public sealed class Bench : IAsyncDisposable
{
    public static readonly string RepoRoot = FindRoot();

    private readonly ServiceProvider _services;

    private Bench(ServiceProvider services, IsolationTier tier)
    {
        _services = services;
        Tier = tier;
    }

    public IsolationTier Tier { get; }

    public SandboxManager Manager => _services.GetRequiredService<SandboxManager>();

    public IServiceProvider Services => _services;

    public string DataDirectory => Manager.Options.DataDirectory;

    public const string Tenant = "bench";

    public static async Task<Bench> StartAsync(IsolationTier tier)
    {
        var data = Environment.GetEnvironmentVariable("MOAT_BENCH_DATA") ?? "/var/lib/moat-bench";
        var config = MoatConfiguration.Build(
        [
            new("Moat:DataDirectory", data),
            new("Moat:AgentDirectory", Path.Combine(RepoRoot, "artifacts", "agent")),
            new("Moat:BuiltinTemplates:Directory", Path.Combine(RepoRoot, "artifacts", "templates")),
            new("Moat:Owner", SandboxManager.RunOwner()),
            new("Moat:MaxConcurrentCreates", "16"),
        ]);
        var services = new ServiceCollection();
        services.AddLogging(b => b.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(Enum.TryParse<LogLevel>(Environment.GetEnvironmentVariable("MOAT_LOG"), true, out var level) ? level : LogLevel.Warning));
        services.AddMoatNode(config, background: false);
        var provider = services.BuildServiceProvider();
        await provider.GetRequiredService<BuiltinTemplates>().EnsureAsync(CancellationToken.None);
        var bench = new Bench(provider, tier);
        await bench.Manager.RecoverAsync(CancellationToken.None);
        await bench.Manager.Runtimes.ResolveAsync(tier, CancellationToken.None);
        return bench;
    }

    public SandboxSpec Spec(int memoryMiB = 256, int diskMiB = 1024) => new()
    {
        Template = "base",
        Tier = Tier,
        Resources = new ResourceLimits { Cpus = 1, MemoryMiB = memoryMiB, DiskMiB = diskMiB, Pids = 512 },
        Timeout = TimeSpan.FromMinutes(30),
    };

    public async Task<TemplateImage> TemplateAsync() =>
        await _services.GetRequiredService<ITemplateStore>().ResolveAsync("base", Tenant, CancellationToken.None) ?? throw new InvalidOperationException("no base template");

    /// <summary>Runs a host program and returns how long it took, failing on a non-zero exit.</summary>
    public static async Task<double> TimeProcessAsync(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        double ms = clock.Elapsed.TotalMilliseconds;
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} exited {process.ExitCode}: {await stderr}{await stdout}");
        return ms;
    }

    public static long MemAvailableBytes()
    {
        foreach (var line in File.ReadLines("/proc/meminfo"))
        {
            if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        }
        return 0;
    }

    public static string HostDescription() =>
        $"{Environment.ProcessorCount} CPUs, {MemAvailableBytes() >> 30} GiB available, kernel {File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}";

    private static string FindRoot()
    {
        var dir = AppContext.BaseDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "Moat.slnx")))
            dir = Path.GetDirectoryName(dir);
        return dir ?? throw new InvalidOperationException("run moat-bench from inside the repository");
    }

    public async ValueTask DisposeAsync()
    {
        await Manager.ShutdownAsync(destroySandboxes: true, CancellationToken.None);
        await _services.DisposeAsync();
    }
}
