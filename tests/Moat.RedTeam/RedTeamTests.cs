using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Moat.Core.Errors;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Tests;
using Xunit.Abstractions;

namespace Moat.RedTeam;

/// <summary>
/// Runs the whole catalogue against one sandbox per tier (recreated only if an attack ends it),
/// with a container-tier victim sandbox beside it. After every attack the host oracle compares
/// host files, sysctls, modules, mounts, the sandbox's cgroup limits, the host listener, the
/// clock, the victim and the platform's responsiveness with the state before. Verdicts are
/// written to <c>tests/Moat.RedTeam/results/TIER.json</c>; <c>render-results.py</c> turns them
/// into the table in docs/security.md.
/// </summary>
public sealed class RedTeamTests(NodeFixture node, ITestOutputHelper output) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    private static readonly Lazy<Task<string>> Probe = new(CompileProbeAsync);

    /// <summary>Where the verdicts go.</summary>
    public static string ResultsDirectory => Environment.GetEnvironmentVariable("MOAT_REDTEAM_RESULTS") is { Length: > 0 } dir ? dir : Path.Combine(Repo.Root, "tests", "Moat.RedTeam", "results");

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Every_attack_is_contained_as_the_host_sees_it(IsolationTier tier)
    {
        await RequireAsync(tier);
        var probe = await Probe.Value;
        var victim = await CreateAsync(IsolationTier.Container);
        var secret = Encoding.UTF8.GetBytes("victim secret " + Guid.NewGuid());
        await Manager.WriteFileAsync(victim.Id, Tenant, "/home/user/secret", new MemoryStream(secret), null, 0x180, CancellationToken.None);
        var victimInstance = await InstanceAsync(victim.Id);

        var attacked = await StartTargetAsync(tier, probe);
        var instances = new List<RuntimeInstance> { victimInstance, await InstanceAsync(attacked) };
        var watched = new List<string> { Path.Combine(Repo.AgentDirectory, "moat-agent"), probe };
        watched.AddRange(new[] { "/usr/sbin/runc", "/usr/bin/runc", "/usr/bin/runsc" }.Where(File.Exists));
        var layers = Path.Combine(Node.DataDirectory, "layers", "sha256");
        if (Directory.Exists(layers))
            foreach (var layer in Directory.EnumerateDirectories(layers))
                watched.AddRange(new[] { "etc/passwd", "etc/os-release", "etc/shadow", "usr/bin/dash", "bin/dash", "usr/bin/python3.11", "usr/bin/busybox" }.Select(f => Path.Combine(layer, f)).Where(File.Exists));
        using var watch = new HostWatch(watched);

        var verdicts = new List<AttackVerdict>();
        foreach (var attack in Catalog.All(Node.DataDirectory))
        {
            var findings = new List<string>();
            var before = watch.Snapshot(instances);
            var startedAt = DateTime.UtcNow;
            var clock = Stopwatch.StartNew();
            string evidence;
            try
            {
                var run = await attack.Run(new AttackContext(Manager, attacked, Tenant, tier, watch));
                findings.AddRange(run.HostFindings);
                evidence = run.Output;
                var breaches = run.Output.Split('\n').Where(l => l.StartsWith("BREACH", StringComparison.Ordinal)).ToList();
                if ((attack.StrictOn ?? []).Contains(tier))
                    findings.AddRange(breaches.Select(b => "inside: " + b));
                else if (breaches.Count > 0)
                    evidence += $"\n[{breaches.Count} BREACH lines inside the guest kernel, not counted on this tier]";
            }
            catch (Exception ex) when (ex is MoatException or OperationCanceledException)
            {
                // An attack that ends its own sandbox is contained if nothing else moved.
                evidence = $"the API answered {ex.GetType().Name}: {ex.Message}";
            }
            clock.Stop();
            var after = watch.Snapshot(instances);
            findings.AddRange(HostWatch.Changes(before, after).Select(c => "host: " + c));
            if (!HostWatch.ClockPlausible(startedAt, clock.Elapsed))
                findings.Add("host: the clock moved");
            foreach (var instance in instances)
                if (HostWatch.AccountingProblem(instance) is { } problem)
                    findings.Add($"accounting of {instance.ContainerId}: {problem}");
            findings.AddRange(await VictimProblemsAsync(victim.Id, secret));

            var state = (await Manager.GetAsync(attacked, Tenant, CancellationToken.None)).State;
            if (state != SandboxState.Running || !await AnswersAsync(attacked))
            {
                evidence += $"\n[the attacked sandbox is {state}{(state == SandboxState.Running ? " but broken inside" : "")}; a new one continues the batch]";
                // Whether it ended or broke itself, deleting it must leave nothing on the host.
                await Manager.DeleteAsync(attacked, Tenant, CancellationToken.None);
                var leftovers = HostOracle.Leftovers(instances[1], StateRoot(tier));
                for (int i = 0; i < 100 && leftovers.Count > 0; i++)
                {
                    await Task.Delay(200);
                    leftovers = HostOracle.Leftovers(instances[1], StateRoot(tier));
                }
                findings.AddRange(leftovers.Select(l => "left on the host by the deleted sandbox: " + l));
                attacked = await StartTargetAsync(tier, probe);
                instances[1] = await InstanceAsync(attacked);
            }
            verdicts.Add(Verdict(attack.Id, attack.Category, tier, findings, evidence, clock.Elapsed));
        }

        // Lifecycle at the end of the batch: double delete, exec on the deleted sandbox, and
        // nothing of it (the setsid'd and nohup'd survivors included) left on the host.
        {
            var clock = Stopwatch.StartNew();
            var findings = new List<string>();
            var instance = instances[1];
            await Task.WhenAll(Manager.DeleteAsync(attacked, Tenant, CancellationToken.None), Manager.DeleteAsync(attacked, Tenant, CancellationToken.None));
            await Manager.DeleteAsync(attacked, Tenant, CancellationToken.None);
            try
            {
                await ShAsync(attacked, "true");
                findings.Add("exec on a deleted sandbox ran");
            }
            catch (MoatException ex) when (ex.Code == "sandbox_not_running")
            {
            }
            findings.AddRange(HostOracle.Leftovers(instance, StateRoot(tier)).Select(l => "left on the host: " + l));
            findings.AddRange(await VictimProblemsAsync(victim.Id, secret));
            verdicts.Add(Verdict("lifecycle.double-delete-then-exec", "lifecycle races", tier, findings, "deleted twice at once and once more; exec refused", clock.Elapsed));
            verdicts.Add(Verdict("lifetime.teardown-leaves-nothing", "outliving the timeout", tier, [.. findings.Where(f => f.StartsWith("left", StringComparison.Ordinal))], "host: no process, mount, cgroup, directory or runtime state of the sandbox", clock.Elapsed));
        }

        Directory.CreateDirectory(ResultsDirectory);
        await File.WriteAllTextAsync(Path.Combine(ResultsDirectory, tier.Name() + ".json"), JsonSerializer.Serialize(verdicts, RedTeamJson.Default.ListAttackVerdict));
        foreach (var v in verdicts)
            output.WriteLine($"{(v.Contained ? "contained" : "ESCAPED  ")} {tier.Name(),-9} {v.Attack,-36} {v.Seconds,6:0.0}s {(v.Contained ? "" : v.Evidence)}");
        var escaped = verdicts.Where(v => !v.Contained).ToList();
        Assert.True(escaped.Count == 0, string.Join("\n", escaped.Select(v => $"{v.Attack}: {v.Evidence}")));
    }

    /// <summary>Whether the sandbox still runs a shell (an attack may have broken its own root file system).</summary>
    private async Task<bool> AnswersAsync(string id)
    {
        try
        {
            return (await ShAsync(id, "echo ok", timeout: TimeSpan.FromSeconds(30))).Stdout == "ok\n";
        }
        catch (MoatException)
        {
            return false;
        }
    }

    private static AttackVerdict Verdict(string id, string category, IsolationTier tier, List<string> findings, string evidence, TimeSpan took) =>
        new(id, category, tier.Name(), findings.Count == 0, findings.Count == 0 ? Trim(evidence) : string.Join("; ", findings) + " | " + Trim(evidence), Math.Round(took.TotalSeconds, 2));

    private static string Trim(string text) => text.Length > 2000 ? text[..2000] + "…" : text;

    private string StateRoot(IsolationTier tier) => Path.Combine(Node.DataDirectory, tier == IsolationTier.Gvisor ? "runsc-state" : "runc-state");

    private async Task<string> StartTargetAsync(IsolationTier tier, string probe)
    {
        var sandbox = await CreateAsync(tier, memoryMiB: 256, diskMiB: 128, timeoutSeconds: 900, pids: 128);
        await using var binary = File.OpenRead(probe);
        await Manager.WriteFileAsync(sandbox.Id, Tenant, "/tmp/probe", binary, "root", 0x1ED, CancellationToken.None);
        return sandbox.Id;
    }

    /// <summary>The other sandbox: its file unchanged, and it still answers.</summary>
    private async Task<List<string>> VictimProblemsAsync(string victim, byte[] secret)
    {
        var problems = new List<string>();
        try
        {
            await using var s = await Manager.OpenFileAsync(victim, Tenant, "/home/user/secret", null, CancellationToken.None);
            using var ms = new MemoryStream();
            await s.CopyToAsync(ms);
            if (!ms.ToArray().AsSpan().SequenceEqual(secret))
                problems.Add("victim: its file changed");
            var alive = await ShAsync(victim, "echo alive", timeout: TimeSpan.FromSeconds(30));
            if (alive.Stdout != "alive\n")
                problems.Add("victim: it no longer answers");
        }
        catch (MoatException ex)
        {
            problems.Add("victim: " + ex.Message);
        }
        return problems;
    }

    private static async Task<string> CompileProbeAsync()
    {
        var source = Path.Combine(AppContext.BaseDirectory, "Probes", "probe.c");
        // Next to the tests (bin/, rebuilt every run), not in /tmp where every run would leave one.
        var binary = Path.Combine(AppContext.BaseDirectory, "moat-redteam-probe");
        using var gcc = Process.Start(new ProcessStartInfo("gcc", ["-static", "-O1", "-o", binary, source]) { RedirectStandardError = true })!;
        var errors = await gcc.StandardError.ReadToEndAsync();
        await gcc.WaitForExitAsync();
        if (gcc.ExitCode != 0)
            throw new InvalidOperationException("gcc -static failed: " + errors);
        return binary;
    }
}
