using System.Text;
using Moat.Core.Sandboxes;

namespace Moat.RedTeam;

/// <summary>What an attack did and what the host saw.</summary>
/// <param name="Output">What the attack program printed (evidence, never the verdict alone).</param>
/// <param name="HostFindings">What the attack's own host-side checks found wrong (empty: nothing).</param>
public sealed record AttackRun(string Output, IReadOnlyList<string> HostFindings);

/// <summary>One attack of the catalogue.</summary>
/// <param name="Id">Stable name, used in the results table.</param>
/// <param name="Category">The SECURITY.md category.</param>
/// <param name="Run">Runs the attack in the sandbox and makes its own host checks.</param>
/// <param name="StrictOn">Tiers on which a <c>BREACH</c> line from inside fails the attack (elsewhere the guest kernel contains it and only the host oracle counts).</param>
public sealed record Attack(string Id, string Category, Func<AttackContext, Task<AttackRun>> Run, IsolationTier[]? StrictOn = null)
{
    /// <summary>A shell script run as root, judged by the host oracle.</summary>
    public static Attack Shell(string id, string category, string script, string user = "root", IsolationTier[]? strictOn = null, int timeoutSeconds = 30) =>
        new(id, category, async ctx => new AttackRun((await ctx.ShAsync(script, user, timeoutSeconds)).Text, []), strictOn);
}

/// <summary>The result of one attack on one tier, as written to the results file.</summary>
public sealed record AttackVerdict(string Attack, string Category, string Tier, bool Contained, string Evidence, double Seconds);

/// <summary>What an attack can use: the sandbox under attack and the platform's public API.</summary>
public sealed class AttackContext(SandboxManager manager, string sandboxId, string tenant, IsolationTier tier, HostWatch watch)
{
    public SandboxManager Manager { get; } = manager;

    public string SandboxId { get; } = sandboxId;

    public string Tenant { get; } = tenant;

    public IsolationTier Tier { get; } = tier;

    public HostWatch Watch { get; } = watch;

    /// <summary>Runs a shell script; output is stdout and stderr together, with the exit.</summary>
    public async Task<(string Text, BufferedResult Raw)> ShAsync(string script, string user = "root", int timeoutSeconds = 30)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds + 60));
        var result = await Manager.RunCommandAsync(SandboxId, Tenant, new CommandSpec { Shell = script, User = user, Timeout = TimeSpan.FromSeconds(timeoutSeconds) }, default, cts.Token);
        var text = Encoding.UTF8.GetString(result.Stdout) + Encoding.UTF8.GetString(result.Stderr) + $"\n[exit {result.Exit.ExitCode}{(result.Exit.TimedOut ? " timed out" : "")}]";
        return (text, result);
    }
}
