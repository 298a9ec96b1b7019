using System.Text.Json;
using Moat.Core.Sandboxes;

namespace Moat.Tests.Network;

/// <summary>Network attempts reach the audit trail (kind <c>network</c>): GET /v1/audit?kind=network&amp;sandbox=ID.</summary>
public sealed class EgressAuditTests(NetworkFixture fixture) : NetworkTestBase(fixture)
{
    [SkippableFact]
    public async Task AllowedAndDeniedAttemptsAreAuditedWithVerdictNameAndPort()
    {
        var id = await CreateAsync(IsolationTier.Container, "allow", "allowed.test");
        var before = await ScrapeAsync();
        var r = await PythonAsync(id, $"""
            out("http", http("allowed.test", path="/big/5000"))
            out("denied_ip", tcp("{TestWorld.Other}", 443, b"\x16\x03\x01"))
            out("denied_name", resolve("other.test"))
            """);
        Assert.StartsWith("ok:", r["http"]);
        var log = await LogAsync(id, l => l.Count(e => e.GetProperty("protocol").GetString() == "tcp") >= 2);

        // Every attempt of the connection log has its audit record (the trail may lag the log briefly).
        var audit = await AuditAsync(id, a => a.Count >= log.Count);
        string all = string.Join("\n", audit.Select(a => a.GetRawText()));
        Assert.All(audit, a =>
        {
            Assert.Equal("network", a.GetProperty("kind").GetString());
            Assert.Equal(id, a.GetProperty("sandboxId").GetString());
            Assert.Equal(TenantId, a.GetProperty("tenantId").GetString());
        });
        Assert.Equal(log.Select(e => e.GetProperty("seq").GetInt64()).Order(), audit.Select(a => Data(a).GetProperty("logSeq").GetInt64()).Order());

        var allowed = Assert.Single(audit, a => a.GetProperty("action").GetString() == "network.connect" && a.GetProperty("result").GetString() == "allowed");
        var allowedData = Data(allowed);
        Assert.Equal("tcp", allowedData.GetProperty("protocol").GetString());
        Assert.Equal("allowed.test", allowedData.GetProperty("name").GetString());
        Assert.Equal(TestWorld.Allowed.ToString(), allowedData.GetProperty("address").GetString());
        Assert.Equal(80, allowedData.GetProperty("port").GetInt32());
        Assert.Equal("allowed", allowedData.GetProperty("verdict").GetString());
        Assert.True(allowedData.GetProperty("bytesIn").GetInt64() > 5000, all);

        var denied = Assert.Single(audit, a => a.GetProperty("action").GetString() == "network.connect" && a.GetProperty("result").GetString() == "denied");
        var deniedData = Data(denied);
        Assert.Equal(TestWorld.Other.ToString(), deniedData.GetProperty("address").GetString());
        Assert.Equal(443, deniedData.GetProperty("port").GetInt32());
        Assert.Equal("denied", deniedData.GetProperty("verdict").GetString());
        Assert.False(string.IsNullOrEmpty(deniedData.GetProperty("reason").GetString()), all);
        Assert.Equal(0, deniedData.GetProperty("bytesOut").GetInt64());

        var deniedName = Assert.Single(audit, a => a.GetProperty("action").GetString() == "network.dns" && a.GetProperty("result").GetString() == "denied");
        Assert.Equal("other.test", Data(deniedName).GetProperty("name").GetString());
        Assert.Contains(audit, a => a.GetProperty("action").GetString() == "network.dns" && a.GetProperty("result").GetString() == "allowed" && Data(a).GetProperty("name").GetString() == "allowed.test");

        // The records are links of the one chain: each names the hash of the record before it.
        Assert.All(audit, a => Assert.Matches("^[0-9a-f]{64}$", a.GetProperty("prevHash").GetString()!));
        // Other kinds are not mixed in, and another sandbox has none of these.
        var other = await CreateAsync(IsolationTier.Container, "none");
        Assert.Empty(await AuditAsync(other, null));
        using var bad = await Api.GetAsync($"v1/audit?kind=networking&sandbox={id}");
        Assert.Equal(System.Net.HttpStatusCode.BadRequest, bad.StatusCode);

        // The same attempts are counted in the Prometheus series (tests of this collection run one at a time).
        var after = await ScrapeAsync();
        double Delta(string series) => after.GetValueOrDefault(series) - before.GetValueOrDefault(series);
        Assert.True(Delta("moat_egress_attempts_total{protocol=\"tcp\",verdict=\"allowed\"}") >= 1, string.Join("\n", after));
        Assert.True(Delta("moat_egress_attempts_total{protocol=\"tcp\",verdict=\"denied\"}") >= 1, string.Join("\n", after));
        Assert.True(Delta("moat_egress_attempts_total{protocol=\"dns\",verdict=\"denied\"}") >= 1, string.Join("\n", after));
        Assert.True(Delta("moat_egress_bytes_total{direction=\"in\"}") >= allowedData.GetProperty("bytesIn").GetInt64(), string.Join("\n", after));
        Assert.True(Delta("moat_egress_bytes_total{direction=\"out\"}") >= allowedData.GetProperty("bytesOut").GetInt64(), string.Join("\n", after));
    }

    /// <summary>GET /metrics: each sample line's series (name and labels as written) and value.</summary>
    private async Task<Dictionary<string, double>> ScrapeAsync()
    {
        var text = await Api.GetStringAsync("metrics");
        var samples = new Dictionary<string, double>();
        foreach (var line in text.Split('\n').Where(l => l.StartsWith("moat_egress_", StringComparison.Ordinal)))
        {
            int space = line.LastIndexOf(' ');
            samples[line[..space]] = double.Parse(line[(space + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        }
        return samples;
    }

    private static JsonElement Data(JsonElement record) => JsonDocument.Parse(record.GetProperty("data").GetString()!).RootElement.Clone();

    /// <summary>The sandbox's kind=network audit records, waiting until <paramref name="until"/> holds (or 20 s).</summary>
    private async Task<List<JsonElement>> AuditAsync(string id, Func<List<JsonElement>, bool>? until)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            var body = await Api.GetStringAsync($"v1/audit?kind=network&sandbox={id}&limit=10000");
            var records = JsonDocument.Parse(body).RootElement.GetProperty("records").EnumerateArray().Select(e => e.Clone()).ToList();
            if (until is null || until(records) || DateTime.UtcNow > deadline)
                return records;
            await Task.Delay(200);
        }
    }
}
