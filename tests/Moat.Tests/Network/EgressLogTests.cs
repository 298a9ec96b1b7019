using System.Text.Json;
using Moat.Core.Sandboxes;

namespace Moat.Tests.Network;

/// <summary>The connection log (GET /v1/sandboxes/{id}/network/log): every attempt, allowed or denied, with what really flowed.</summary>
public sealed class EgressLogTests(NetworkFixture fixture) : NetworkTestBase(fixture)
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task LogRecordsEveryAttemptWithVerdictAndBytes(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "allow", "allowed.test");
        var r = await PythonAsync(id, $"""
            out("http", http("allowed.test", path="/big/20000"))
            out("denied_ip", tcp("{TestWorld.Other}", 443, b"\x16\x03\x01"))
            out("denied_name", resolve("other.test"))
            """);
        Assert.StartsWith("ok:", r["http"]);
        var log = await LogAsync(id, l => l.Count(e => e.GetProperty("protocol").GetString() == "tcp") >= 2);
        string all = Describe(log);

        Assert.Contains(log, e => Is(e, "dns", "allowed") && e.GetProperty("name").GetString() == "allowed.test"
            && e.TryGetProperty("address", out var a) && a.GetString() == TestWorld.Allowed.ToString());
        Assert.Contains(log, e => Is(e, "dns", "denied") && e.GetProperty("name").GetString() == "other.test" && e.GetProperty("reason").GetString() == "not_allowed");

        var tcp = Assert.Single(log, e => Is(e, "tcp", "allowed"));
        Assert.Equal("allowed.test", tcp.GetProperty("name").GetString());
        Assert.Equal(TestWorld.Allowed.ToString(), tcp.GetProperty("address").GetString());
        Assert.Equal(80, tcp.GetProperty("port").GetInt32());
        Assert.Equal("allowed.test", tcp.GetProperty("reason").GetString());
        // Bytes each way are what the destination itself counted.
        var seen = Assert.Single(World.Servers["allowed-http"].Connections);
        Assert.Equal(seen.BytesIn, tcp.GetProperty("bytesOut").GetInt64());
        Assert.Equal(seen.BytesOut, tcp.GetProperty("bytesIn").GetInt64());
        Assert.True(tcp.GetProperty("bytesIn").GetInt64() > 20000, all);
        Assert.True(tcp.GetProperty("durationMs").GetDouble() > 0, all);

        var denied = Assert.Single(log, e => Is(e, "tcp", "denied"));
        Assert.Equal(TestWorld.Other.ToString(), denied.GetProperty("address").GetString());
        Assert.Equal(443, denied.GetProperty("port").GetInt32());
        Assert.False(string.IsNullOrEmpty(denied.GetProperty("reason").GetString()), all);
        Assert.Equal(0, World.Servers["other-https"].ConnectionCount);

        // Sequence numbers count from 1 without gaps; a page after the last one is empty.
        Assert.Equal(Enumerable.Range(1, log.Count).Select(i => (long)i), log.Select(e => e.GetProperty("seq").GetInt64()));
        var after = JsonDocument.Parse(await Api.GetStringAsync($"v1/sandboxes/{id}/network/log?after={log.Count}")).RootElement;
        Assert.Equal(0, after.GetProperty("events").GetArrayLength());
    }

    [SkippableFact]
    public async Task LogNeedsAnApiKeyAndValidArguments()
    {
        var id = await CreateAsync(IsolationTier.Container, "allow", "allowed.test");
        using var anonymous = Fixture.Http(withKey: false);
        using var response = await anonymous.GetAsync($"v1/sandboxes/{id}/network/log");
        Assert.Equal(System.Net.HttpStatusCode.Unauthorized, response.StatusCode);
        using var bad = await Api.GetAsync($"v1/sandboxes/{id}/network/log?limit=0");
        Assert.Equal(System.Net.HttpStatusCode.BadRequest, bad.StatusCode);
        using var missing = await Api.GetAsync("v1/sandboxes/sb000000000000000000/network/log");
        Assert.Equal(System.Net.HttpStatusCode.NotFound, missing.StatusCode);
    }

    private static bool Is(JsonElement e, string protocol, string verdict) =>
        e.GetProperty("protocol").GetString() == protocol && e.GetProperty("verdict").GetString() == verdict;
}
