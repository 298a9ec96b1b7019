using System.Net;
using System.Text.Json;
using Moat.Core.Sandboxes;

namespace Moat.Tests.Network;

/// <summary>PUT /v1/sandboxes/{id}/network on a running sandbox, and what a tier cannot change later.</summary>
public sealed class PolicyChangeTests(NetworkFixture fixture) : NetworkTestBase(fixture)
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task PolicyChangeClosesLiveConnectionsItForbids(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "allow", "allowed.test", $"{TestWorld.Echo}/32");
        // A long-lived connection to the echo host, allowed by the address rule, pinging every 100 ms.
        var running = RunPythonAsync(id, $"""
            s = socket.create_connection(("{TestWorld.Echo}", 7), 5)
            s.settimeout(5)
            n = 0
            try:
                while n < 600:
                    s.sendall(b"ping")
                    if not s.recv(100):
                        out("end", "closed"); break
                    n += 1
                    time.sleep(0.1)
                else:
                    out("end", "still open")
            except OSError as e:
                out("end", "error:%s" % (e.errno or type(e).__name__))
            out("pings", n)
            """, timeoutSeconds: 120);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (World.Servers["echo-tcp"].Connections.FirstOrDefault() is not { BytesIn: >= 8 } && DateTime.UtcNow < deadline && !running.IsCompleted)
            await Task.Delay(100);
        // (The message must not await the probe: an assertion's message is built before it is checked.)
        if (running.IsCompleted)
        {
            var early = await running;
            Assert.Fail("the probe ended before the policy change: " + System.Text.Encoding.UTF8.GetString(early.Stdout) + System.Text.Encoding.UTF8.GetString(early.Stderr));
        }
        Assert.True(World.Servers["echo-tcp"].Connections.FirstOrDefault() is { BytesIn: >= 8 }, "the probe's connection never reached the echo host");
        Assert.Single(World.Servers["echo-tcp"].Connections);

        var (status, body) = await SetNetworkAsync(id, "allow", "allowed.test");
        Assert.True(status == HttpStatusCode.OK, body);
        var dto = JsonDocument.Parse(body).RootElement.GetProperty("network");
        Assert.Equal("allow", dto.GetProperty("mode").GetString());
        Assert.Equal(["allowed.test"], dto.GetProperty("allow").EnumerateArray().Select(e => e.GetString()!));

        var ran = await running;
        var r = Probes.Results(System.Text.Encoding.UTF8.GetString(ran.Stdout));
        Assert.True(r.TryGetValue("end", out var end) && end != "still open", "the connection outlived the policy change: " + System.Text.Encoding.UTF8.GetString(ran.Stdout));
        var log = await LogAsync(id, l => l.Any(e => e.TryGetProperty("end", out var x) && x.GetString() == "policy_change"));
        Assert.Contains(log, e => e.GetProperty("address").GetString() == TestWorld.Echo.ToString() && e.TryGetProperty("end", out var x) && x.GetString() == "policy_change");

        // A new connection under the new policy is refused; what it still allows works.
        var after = await PythonAsync(id, $"""
            out("echo", tcp("{TestWorld.Echo}", 7, b"ping"))
            out("http", http("allowed.test"))
            """);
        Assert.True(after["echo"].StartsWith("error", StringComparison.Ordinal) || after["echo"] == "closed", after["echo"]);
        Assert.Equal("ok:hello from allowed-http host=allowed.test\n", after["http"]);
        Assert.Single(World.Servers["echo-tcp"].Connections);

        // Back to none: even the allowed name is gone.
        (status, body) = await SetNetworkAsync(id, "none");
        Assert.True(status == HttpStatusCode.OK, body);
        var none = await PythonAsync(id, """out("http", http("allowed.test"))""");
        Assert.StartsWith("error", none["http"]);
        Assert.Equal(1, World.Servers["allowed-http"].ConnectionCount);
    }

    [SkippableFact]
    public async Task InvalidPoliciesAreRefusedWithAClearError()
    {
        var id = await CreateAsync(IsolationTier.Container, "allow", "allowed.test");
        foreach (var (mode, allow, code) in new (string, string[], string)[]
        {
            ("allow", [], "invalid_network"),
            ("sometimes", [], "invalid_network"),
            ("allow", ["169.254.169.254"], "network_rule_denied"),
            ("allow", ["10.0.0.0/8"], "network_rule_denied"),
            ("allow", ["*"], "invalid_network_rule"),
            ("allow", ["exa mple.com"], "invalid_network_rule"),
            ("allow", ["example.com:99999"], "invalid_network_rule"),
            ("open", ["example.com"], "invalid_network"),
        })
        {
            var (status, body) = await SetNetworkAsync(id, mode, allow);
            Assert.True(status == HttpStatusCode.BadRequest, $"{mode} [{string.Join(",", allow)}]: {(int)status} {body}");
            Assert.Equal(code, JsonDocument.Parse(body).RootElement.GetProperty("error").GetProperty("code").GetString());
            var (createStatus, createBody) = await CreateRawAsync(IsolationTier.Container, mode, allow);
            Assert.True(createStatus == HttpStatusCode.BadRequest, $"create {mode}: {(int)createStatus} {createBody}");
        }
        // The policy in force did not change.
        var current = JsonDocument.Parse(await Api.GetStringAsync($"v1/sandboxes/{id}/network")).RootElement;
        Assert.Equal("allow", current.GetProperty("mode").GetString());
    }

    [SkippableFact]
    public async Task MicrovmCreatedWithoutANetworkCannotGetOneLater()
    {
        // A VM's NIC exists from boot or never: a sandbox made with mode none keeps loopback only.
        var id = await CreateAsync(IsolationTier.Microvm, "none");
        var (status, body) = await SetNetworkAsync(id, "allow", "allowed.test");
        Assert.True(status == HttpStatusCode.Conflict, $"{(int)status} {body}");
        Assert.Equal("network_change_unsupported", JsonDocument.Parse(body).RootElement.GetProperty("error").GetProperty("code").GetString());
        var current = JsonDocument.Parse(await Api.GetStringAsync($"v1/sandboxes/{id}/network")).RootElement;
        Assert.Equal("none", current.GetProperty("mode").GetString());
    }
}
