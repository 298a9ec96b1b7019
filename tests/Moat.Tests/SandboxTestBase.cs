using System.Text;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>Test data: every isolation tier. Tests skip (with the reason printed) on tiers this host cannot run.</summary>
public static class Tiers
{
    /// <summary>All tiers.</summary>
    public static TheoryData<IsolationTier> All => [IsolationTier.Container, IsolationTier.Gvisor, IsolationTier.Microvm];
}

/// <summary>A finished command with its output as text.</summary>
public sealed record Ran(int ExitCode, string Stdout, string Stderr, BufferedResult Raw);

/// <summary>
/// Helpers shared by the end-to-end tests: sandboxes that are deleted after the test, and
/// commands with text output.
/// </summary>
public abstract class SandboxTestBase(NodeFixture node) : IAsyncLifetime
{
    private readonly List<string> _created = [];

    protected NodeFixture Node { get; } = node;

    protected SandboxManager Manager => Node.Manager;

    protected const string Tenant = NodeFixture.Tenant;

    /// <summary>Skips the test, saying why, when this host cannot run <paramref name="tier"/>.</summary>
    protected async Task RequireAsync(IsolationTier tier)
    {
        var status = (await Manager.Runtimes.StatusAsync(CancellationToken.None)).Single(s => s.Tier == tier);
        Skip.IfNot(status.Usable, $"tier {tier.Name()} is not usable on this host: {status.Reason}");
    }

    /// <summary>Creates a sandbox that is deleted when the test ends.</summary>
    protected async Task<SandboxRecord> CreateAsync(IsolationTier tier, int memoryMiB = 256, int diskMiB = 256, int timeoutSeconds = 120, int pids = 256, IReadOnlyDictionary<string, string>? env = null)
    {
        await RequireAsync(tier);
        var spec = NodeFixture.Spec(tier, memoryMiB, diskMiB, timeoutSeconds, pids);
        if (env is not null)
            spec = spec with { Env = env };
        var record = await Manager.CreateAsync(spec, Tenant, CancellationToken.None);
        lock (_created)
            _created.Add(record.Id);
        return record;
    }

    /// <summary>Runs a shell command line and returns its output as text.</summary>
    protected Task<Ran> ShAsync(string id, string script, string? user = null, string? stdin = null, TimeSpan? timeout = null, string? cwd = null, IReadOnlyDictionary<string, string>? env = null) =>
        RunAsync(id, new CommandSpec { Shell = script, User = user, Timeout = timeout, Cwd = cwd, Env = env }, stdin);

    /// <summary>Runs a command and returns its output as text.</summary>
    protected async Task<Ran> RunAsync(string id, CommandSpec command, string? stdin = null)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        var result = await Manager.RunCommandAsync(id, Tenant, command, stdin is null ? default : Encoding.UTF8.GetBytes(stdin), cts.Token);
        return new Ran(result.Exit.ExitCode, Encoding.UTF8.GetString(result.Stdout), Encoding.UTF8.GetString(result.Stderr), result);
    }

    /// <summary>Waits until the sandbox has ended (reaping lifetimes meanwhile) and returns its record.</summary>
    protected async Task<SandboxRecord> WaitForEndAsync(string id, TimeSpan within)
    {
        var deadline = DateTime.UtcNow + within;
        while (DateTime.UtcNow < deadline)
        {
            var record = await Manager.GetAsync(id, Tenant, CancellationToken.None);
            if (record.State.IsTerminal())
                return record;
            await Manager.ReapExpiredAsync(CancellationToken.None);
            await Task.Delay(100);
        }
        throw new TimeoutException($"sandbox {id} did not end within {within}");
    }

    /// <summary>The runtime instance of a live sandbox.</summary>
    protected async Task<RuntimeInstance> InstanceAsync(string id) =>
        (await Manager.GetAsync(id, Tenant, CancellationToken.None)).Instance ?? throw new InvalidOperationException("no instance");

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        List<string> ids;
        lock (_created)
            ids = [.. _created];
        foreach (var id in ids)
            await Manager.DeleteAsync(id, Tenant, CancellationToken.None);
    }
}
