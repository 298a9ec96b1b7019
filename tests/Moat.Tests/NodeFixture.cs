using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Moat.Core.Sandboxes;
using Moat.Node;

namespace Moat.Tests;

/// <summary>Where the repository and its build artifacts are.</summary>
public static class Repo
{
    /// <summary>The repository root (the directory holding Moat.slnx).</summary>
    public static readonly string Root = Find();

    /// <summary>The published agent.</summary>
    public static string AgentDirectory => Path.Combine(Root, "artifacts", "agent");

    /// <summary>The built-in template archives.</summary>
    public static string TemplatesDirectory => Path.Combine(Root, "artifacts", "templates");

    private static string Find()
    {
        var dir = AppContext.BaseDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "Moat.slnx")))
            dir = Path.GetDirectoryName(dir);
        return dir ?? throw new InvalidOperationException("cannot find the repository root (Moat.slnx) above " + AppContext.BaseDirectory);
    }
}

/// <summary>
/// A Moat node (manager, stores, runtimes) in this process, on a data directory of its own, with
/// the real agent and the real built-in template. Shared by the tests of a class.
/// </summary>
public sealed class NodeFixture : IAsyncLifetime
{
    private ServiceProvider? _services;

    /// <summary>The node's data directory.</summary>
    public string DataDirectory { get; private init; } = Path.Combine(Path.GetTempPath(), "moat-test-" + Guid.NewGuid().ToString("N")[..8]);

    /// <summary>The parent cgroup of this fixture's sandboxes.</summary>
    public string CgroupParent => "/moat-test-" + Path.GetFileName(DataDirectory)["moat-test-".Length..];

    /// <summary>The manager.</summary>
    public SandboxManager Manager => _services!.GetRequiredService<SandboxManager>();

    /// <summary>The service provider.</summary>
    public IServiceProvider Services => _services!;

    /// <summary>Tenant used by tests.</summary>
    public const string Tenant = "tenant-a";

    /// <summary>A node on an existing data directory (a "restarted server").</summary>
    public static NodeFixture OnExisting(string dataDirectory) => new() { DataDirectory = dataDirectory };

    /// <summary>Leave the data directory and the sandboxes in place at dispose (a crash, as far as the sandboxes can tell).</summary>
    public bool Abandon { get; set; }

    /// <summary>More configuration for this node (e.g. warm pools).</summary>
    public IReadOnlyDictionary<string, string?> ExtraConfig { get; init; } = new Dictionary<string, string?>();

    public async Task InitializeAsync()
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(ExtraConfig).AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Moat:DataDirectory"] = DataDirectory,
            ["Moat:AgentDirectory"] = Repo.AgentDirectory,
            ["Moat:BuiltinTemplates:Directory"] = Repo.TemplatesDirectory,
            ["Moat:Runc:Root"] = Path.Combine(DataDirectory, "runc-state"),
            ["Moat:Runc:CgroupParent"] = CgroupParent,
            ["Moat:Runsc:Root"] = Path.Combine(DataDirectory, "runsc-state"),
            ["Moat:Runsc:CgroupParent"] = CgroupParent,
            ["Moat:Qemu:CgroupParent"] = CgroupParent,
        }).Build();
        var services = new ServiceCollection();
        services.AddLogging(b => b.AddSimpleConsole().SetMinimumLevel(Enum.TryParse<LogLevel>(Environment.GetEnvironmentVariable("MOAT_TEST_LOG"), out var level) ? level : LogLevel.Warning));
        services.AddMoatNode(config, background: false);
        _services = services.BuildServiceProvider();
        await _services.GetRequiredService<BuiltinTemplates>().EnsureAsync(CancellationToken.None);
        await Manager.RecoverAsync(CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        if (_services is not null)
        {
            await Manager.ShutdownAsync(destroySandboxes: !Abandon, CancellationToken.None);
            await _services.DisposeAsync();
        }
        if (Abandon)
            return;
        Moat.Runtimes.Cgroups.CgroupHierarchy.At(CgroupParent).Remove();
        try
        {
            Directory.Delete(DataDirectory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>A sandbox spec with test-friendly defaults.</summary>
    public static SandboxSpec Spec(IsolationTier tier = IsolationTier.Container, int memoryMiB = 256, int diskMiB = 256, int timeoutSeconds = 120, int pids = 256) => new()
    {
        Template = "base",
        Tier = tier,
        Resources = new ResourceLimits { MemoryMiB = memoryMiB, DiskMiB = diskMiB, Pids = pids, Cpus = 1 },
        Timeout = TimeSpan.FromSeconds(timeoutSeconds),
    };
}
