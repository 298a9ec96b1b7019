using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Moat.Server.Observability;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary><c>moat sandbox metrics|logs</c>, <c>moat tenant</c> and <c>moat usage</c>, run as a process against the test server.</summary>
[Collection(ServerCollection.Name)]
public sealed class CliObservabilityTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private readonly ITestOutputHelper _output = output;

    [SkippableFact]
    public async Task Sandbox_logs_prints_stdout_and_stderr_by_stream_pages_with_after_and_limit()
    {
        await using var sandbox = await CreateAsync();
        await sandbox.Commands.RunAsync("echo first; echo oops >&2; exit 3", Timeout);
        await sandbox.Commands.RunAsync("echo second", Timeout);

        var all = await MoatAsync(null, "sandbox", "logs", sandbox.Id);
        Assert.Equal(0, all.Exit);
        Assert.Equal("first\nsecond\n", all.Stdout);
        Assert.Equal("oops\n", all.Stderr);

        var json = await MoatAsync(null, "sandbox", "logs", sandbox.Id, "--json");
        Assert.Equal(0, json.Exit);
        var page = JsonSerializer.Deserialize(json.Stdout, MoatJson.Default.SandboxLogsResponse)!;
        Assert.Contains(page.Entries, e => e.Stream == "exit" && e.Data == "3");
        Assert.Equal(page.Entries[^1].Seq, page.Next);

        var first = page.Entries.First(e => e.Stream == "stdout" && e.Data == "first\n");
        var one = await MoatAsync(null, "sandbox", "logs", sandbox.Id, "--after", first.Seq.ToString(System.Globalization.CultureInfo.InvariantCulture), "--limit", "1", "--json");
        var onePage = JsonSerializer.Deserialize(one.Stdout, MoatJson.Default.SandboxLogsResponse)!;
        Assert.Equal(first.Seq + 1, Assert.Single(onePage.Entries).Seq);
        Assert.Equal(first.Seq + 1, onePage.Next);

        var tail = await MoatAsync(null, "sandbox", "logs", sandbox.Id, "--after", page.Next.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal((0, "", ""), (tail.Exit, tail.Stdout, tail.Stderr));

        var unknown = await MoatAsync(null, "sandbox", "logs", "sb00000000000000000x");
        Assert.Equal(1, unknown.Exit);
        Assert.Contains("sandbox_not_found", unknown.Stderr);
        var badLimit = await MoatAsync(null, "sandbox", "logs", sandbox.Id, "--limit", "0");
        Assert.Equal(2, badLimit.Exit);

        // moat audit knows the network kind (EgressAuditTests proves what such records hold).
        var network = await MoatAsync(null, "audit", "--kind", "network", "--sandbox", sandbox.Id);
        Assert.Equal(0, network.Exit);
        Assert.StartsWith("SEQ", network.Stdout);
        Assert.Equal(2, (await MoatAsync(null, "audit", "--kind", "networking")).Exit);
    }

    [SkippableFact]
    public async Task Sandbox_logs_follow_prints_new_output_and_exits_when_the_sandbox_ends()
    {
        var sandbox = await CreateAsync();
        await using var _ = sandbox;
        await sandbox.Commands.RunAsync("echo before", Timeout);
        var follow = MoatAsync(null, "sandbox", "logs", sandbox.Id, "--follow");
        await Task.Delay(TimeSpan.FromSeconds(3), Timeout); // the follower has read the history and is polling
        Assert.False(follow.IsCompleted, "--follow returned while the sandbox was running");
        await sandbox.Commands.RunAsync("echo during; echo warn >&2", Timeout);
        await Task.Delay(TimeSpan.FromSeconds(2), Timeout);
        Assert.False(follow.IsCompleted, "--follow returned while the sandbox was running");
        await sandbox.KillAsync(Timeout);

        var result = await follow;
        Assert.Equal(0, result.Exit);
        Assert.Equal("before\nduring\n", result.Stdout);
        Assert.Equal("warn\n", result.Stderr);
    }

    [SkippableFact]
    public async Task Sandbox_metrics_prints_a_table_of_samples_a_sparkline_and_json()
    {
        await using var sandbox = await CreateAsync();
        var sampler = Server.Services.GetRequiredService<SandboxMetricsSampler>();
        await sampler.SampleAsync(Timeout);
        await sampler.SampleAsync(Timeout);
        var series = await sandbox.GetMetricsAsync(cancellationToken: Timeout);
        Assert.True(series.Samples.Count >= 2);

        var table = await MoatAsync(null, "sandbox", "metrics", sandbox.Id);
        Assert.Equal(0, table.Exit);
        var lines = table.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^TIME\s+CPU %\s+MEMORY\s+DISK\s+RX\s+TX$", lines[0]);
        var rows = lines.Skip(1).Where(l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+\d+\.\d\s+[\d.]+ (B|KiB|MiB|GiB)\s")).ToList();
        Assert.True(rows.Count >= 2, $"expected at least two sample rows in:\n{table.Stdout}");
        Assert.Matches(@"^cpu [▁▂▃▄▅▆▇█]{2,} peak [\d.]+%, memory [▁▂▃▄▅▆▇█]{2,} peak ", lines[^1]);

        var last = await MoatAsync(null, "sandbox", "metrics", sandbox.Id, "--last", "1");
        Assert.Equal(3, last.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // header, one row, sparkline

        var json = await MoatAsync(null, "sandbox", "metrics", sandbox.Id, "--json");
        var parsed = JsonSerializer.Deserialize(json.Stdout, MoatJson.Default.SandboxMetricsResponse)!;
        Assert.Equal(sandbox.Id, parsed.SandboxId);
        Assert.True(parsed.Samples.Count >= series.Samples.Count);
        Assert.All(parsed.Samples, s => Assert.True(s.MemoryBytes > 0));

        Assert.Equal(2, (await MoatAsync(null, "sandbox", "metrics", sandbox.Id, "--last", "0")).Exit);
        Assert.Equal(1, (await MoatAsync(null, "sandbox", "metrics", "sb00000000000000000x")).Exit);
    }

    [SkippableFact]
    public async Task Tenant_verbs_create_show_set_mint_keys_and_delete()
    {
        var op = await TenancyKit.OperatorKeyAsync(Server);
        string id = "cli-" + Guid.NewGuid().ToString("N")[..8];
        var created = await MoatAsync(op, "tenant", "create", id, "--name", "CLI Corp", "--max-sandboxes", "2", "--tiers", "container,gvisor", "--requests-per-minute", "600");
        Assert.Equal(0, created.Exit);
        Assert.StartsWith($"{id}\tCLI Corp\tquotas: sandboxes 2, tiers container,gvisor\trate limits: 600 req/min", created.Stdout);

        var list = await MoatAsync(op, "tenant", "ls");
        Assert.Contains(list.Stdout.Split('\n'), l => l.StartsWith(id + " ", StringComparison.Ordinal) && l.Contains("CLI Corp") && l.Contains("sandboxes 2"));
        var listJson = JsonSerializer.Deserialize((await MoatAsync(op, "tenant", "ls", "--json")).Stdout, TenancyJson.Default.TenantListResponse)!;
        Assert.Contains(listJson.Tenants, t => t.Id == id);

        var set = await MoatAsync(op, "tenant", "set", id, "--max-sandboxes", "5", "--json");
        Assert.Equal(0, set.Exit);
        var shown = JsonSerializer.Deserialize((await MoatAsync(op, "tenant", "show", id, "--json")).Stdout, TenancyJson.Default.TenantDto)!;
        Assert.Equal(5, shown.Quotas.MaxSandboxes);
        Assert.Equal(["container", "gvisor"], shown.Quotas.AllowedTiers!); // kept
        Assert.Equal(600, shown.RateLimits.RequestsPerMinute);

        var minted = await MoatAsync(op, "tenant", "key", "create", id, "--name", "ci", "--role", "read-only");
        Assert.Equal(0, minted.Exit);
        var key = minted.Stdout.Trim();
        Assert.StartsWith("moat_", key);
        var asTenant = await MoatAsync(key, "sandbox", "ls", "--json");
        Assert.Equal(0, asTenant.Exit);
        Assert.Empty(JsonSerializer.Deserialize(asTenant.Stdout, MoatJson.Default.SandboxListResponse)!.Sandboxes);
        var readOnly = await MoatAsync(key, "sandbox", "create", "--isolation", "container");
        Assert.Equal(1, readOnly.Exit);
        var keys = await MoatAsync(op, "tenant", "key", "ls", id);
        Assert.Contains(keys.Stdout.Split('\n'), l => l.Contains("read-only") && l.Contains("ci") && l.Contains(key[..12]));
        var notOperator = await MoatAsync(key, "tenant", "ls");
        Assert.Equal(1, notOperator.Exit);

        Assert.Equal(0, (await MoatAsync(op, "tenant", "rm", id)).Exit);
        Assert.Equal(1, (await MoatAsync(key, "sandbox", "ls")).Exit); // its keys stop working at once
        var gone = await MoatAsync(op, "tenant", "show", id);
        Assert.Equal(1, gone.Exit);
        Assert.Contains("not_found", gone.Stderr);
        Assert.Equal(2, (await MoatAsync(op, "tenant", "key", "create", id, "--role", "boss")).Exit);
    }

    [SkippableFact]
    public async Task Usage_prints_a_table_and_csv_for_a_tenant_that_ran_a_sandbox()
    {
        var (tenant, key) = await TenancyKit.NewTenantAsync(Server, "cliusage", cancellationToken: Timeout);
        using (var client = Server.Client(key))
        {
            await using var sandbox = await TenancyKit.SandboxAsync(client, Timeout);
            await sandbox.Commands.RunAsync("true", Timeout);
        }
        var op = await TenancyKit.OperatorKeyAsync(Server);
        string today = DateTime.UtcNow.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture);

        var table = await MoatAsync(op, "usage", "--tenant", tenant.Id);
        Assert.Equal(0, table.Exit);
        var lines = table.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^TENANT\s+DAY\s+VCPU-S\s+MEMORY GIB-S\s+DISK GIB-H\s+SANDBOX-S\s+COST$", lines[0]);
        Assert.Contains(lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, $@"^{tenant.Id}\s+{today}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+ \w+$"));
        Assert.All(lines.Skip(1), l => Assert.StartsWith(tenant.Id, l));

        var csv = await MoatAsync(op, "usage", "--tenant", tenant.Id, "--csv", "--from", today, "--to", today);
        Assert.Equal(0, csv.Exit);
        var csvLines = csv.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("tenant", csvLines[0].Replace("tenant_id", "tenant", StringComparison.Ordinal));
        Assert.Contains(csvLines, l => l.StartsWith($"{tenant.Id},{today},", StringComparison.Ordinal));

        var own = await MoatAsync(key, "usage");
        Assert.Equal(0, own.Exit);
        Assert.All(own.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1), l => Assert.StartsWith(tenant.Id, l));
        var bad = await MoatAsync(op, "usage", "--from", "yesterday");
        Assert.Equal(1, bad.Exit);
    }

    private async Task<(int Exit, string Stdout, string Stderr)> MoatAsync(string? apiKey, params string[] args)
    {
        var env = new Dictionary<string, string> { ["MOAT_URL"] = Server.Url.AbsoluteUri, ["MOAT_API_KEY"] = apiKey ?? Server.AdminKey };
        var result = await MoatCli.RunAsync(env, null, TimeSpan.FromMinutes(2), _output.WriteLine, args);
        return (result.Exit, result.Stdout, result.Stderr);
    }
}
