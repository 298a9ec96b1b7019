using System.Net;
using System.Text.Json;
using Moat.Core.Sandboxes;

namespace Moat.Tests.Network;

/// <summary>
/// What a sandbox can reach in each mode, seen from both ends: the probe inside the sandbox and
/// the world's servers, which record every connection (the host oracle). Sandboxes are created
/// through the REST API with their policy.
/// </summary>
public sealed class EgressPolicyTests(NetworkFixture fixture) : NetworkTestBase(fixture)
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task DefaultDenyReachesNothingNotEvenDns(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "none");
        var r = await PythonAsync(id, $"""
            out("resolve", resolve("allowed.test"))
            out("tcp_public", tcp("{TestWorld.Allowed}", 80, b"GET / HTTP/1.0\r\n\r\n"))
            out("tcp_other", tcp("{TestWorld.Other}", 443))
            out("metadata", tcp("169.254.169.254", 80, b"GET / HTTP/1.0\r\n\r\n"))
            out("host", tcp("{TestWorld.WorldAddress}", 8081))
            out("dns_direct", udp("{TestWorld.Dns}", 53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07allowed\x04test\x00\x00\x01\x00\x01"))
            out("udp_echo", udp("{TestWorld.Echo}", 7))
            """);
        foreach (var (key, value) in r)
            Assert.True(value.StartsWith("error", StringComparison.Ordinal), $"{key} got through: {value}");
        Assert.Equal(7, r.Count);
        // The oracle: not one server of the world, allowed ones included, saw a packet; nor did its DNS server.
        foreach (var server in World.Servers.Values)
            Assert.True(server.ConnectionCount == 0, $"{server.Name} was reached in mode none");
        Assert.Empty(World.DnsServer.Questions);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task AllowedDomainWorksOverHttpAndHttps(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "allow", "allowed.test");
        var r = await PythonAsync(id, """
            out("resolve", resolve("allowed.test"))
            out("http", http("allowed.test"))
            out("https", https("allowed.test"))
            """);
        Assert.Equal($"[\"{TestWorld.Allowed}\"]", r["resolve"]);
        Assert.Equal("ok:hello from allowed-http host=allowed.test\n", r["http"]);
        Assert.Equal("ok:hello from allowed-https host=allowed.test\n", r["https"]);
        Assert.Equal(1, World.Servers["allowed-http"].ConnectionCount);
        Assert.Equal(1, World.Servers["allowed-https"].ConnectionCount);
        AssertNothingReached();
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task OtherDomainsRawAddressesPortsAndUdpAreBlocked(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "allow", "allowed.test");
        var r = await PythonAsync(id, $"""
            out("resolve_other", resolve("other.test"))
            out("http_other_by_ip", http("other.test", ip="{TestWorld.Other}"))
            out("https_other_by_ip", https("other.test", ip="{TestWorld.Other}"))
            out("raw_ip_no_name", tcp("{TestWorld.Other}", 80))
            out("ssh_port_of_allowed", tcp("{TestWorld.Allowed}", 22, b"SSH-2.0-probe\r\n"))
            out("echo_port", tcp("{TestWorld.Echo}", 7, b"ping"))
            out("smtp", tcp("{TestWorld.Evil}", 25))
            out("udp_quic", udp("{TestWorld.Allowed}", 443))
            out("outside_resolver", udp("{TestWorld.Evil}", 53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05other\x04test\x00\x00\x01\x00\x01"))
            """);
        foreach (var (key, value) in r)
            Assert.True(value.StartsWith("error", StringComparison.Ordinal) || value == "closed", $"{key} got through: {value}");
        Assert.Equal(9, r.Count);
        Assert.Equal(0, World.Servers["allowed-ssh"].ConnectionCount);
        Assert.Equal(0, World.Servers["allowed-udp"].ConnectionCount);
        AssertNothingReached();
        Assert.DoesNotContain("other.test", World.DnsServer.Questions);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task NameTricksNeverChooseTheDestination(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "allow", "allowed.test", "rebind.test", "meta.test", "mixed.test");
        // /etc/hosts spoofing: the sandbox thinks allowed.test is the attacker's host.
        await Manager.WriteFileAsync(id, TenantId, "/etc/hosts", new MemoryStream(System.Text.Encoding.ASCII.GetBytes($"127.0.0.1 localhost\n{TestWorld.Evil} allowed.test\n")), "root", 0x1A4, CancellationToken.None);
        var r = await PythonAsync(id, $"""
            out("spoofed_https", https("allowed.test"))
            out("spoofed_http", http("allowed.test"))
            out("sni_allowed_ip_evil", https("allowed.test", ip="{TestWorld.Evil}"))
            out("host_allowed_ip_other", http("allowed.test", ip="{TestWorld.Other}"))
            out("sni_evil_to_allowed_ip", https("evil.test", ip="{TestWorld.Allowed}"))
            out("smuggled_second_request", tcp("{TestWorld.Allowed}", 80, b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"))
            out("rebind_resolve", resolve("rebind.test"))
            out("rebind_http", http("rebind.test", ip="{TestWorld.Allowed}"))
            out("meta_resolve", resolve("meta.test"))
            out("meta_http", http("meta.test", ip="{TestWorld.Allowed}"))
            out("mixed_resolve", resolve("mixed.test"))
            out("ip_literal_decimal", http("2852039166", ip="169.254.169.254"))
            out("ip_literal_host_header", http("169.254.169.254", ip="{TestWorld.Allowed}"))
            out("ip_literal_hex", http("0xa9fea9fe", ip="{TestWorld.Allowed}"))
            """);
        // Spoofed or mismatched addresses: Moat dialled the allowed name itself.
        Assert.Equal("ok:hello from allowed-https host=allowed.test\n", r["spoofed_https"]);
        Assert.Equal("ok:hello from allowed-http host=allowed.test\n", r["spoofed_http"]);
        Assert.Equal("ok:hello from allowed-https host=allowed.test\n", r["sni_allowed_ip_evil"]);
        Assert.Equal("ok:hello from allowed-http host=allowed.test\n", r["host_allowed_ip_other"]);
        foreach (var key in new[] { "sni_evil_to_allowed_ip", "rebind_resolve", "rebind_http", "meta_resolve", "meta_http", "ip_literal_decimal", "ip_literal_host_header", "ip_literal_hex" })
            Assert.True(r[key].StartsWith("error", StringComparison.Ordinal) || r[key] == "closed", $"{key} got through: {r[key]}");
        // The second, smuggled request never reached anything: the allowed server answered one request at most.
        Assert.DoesNotContain("evil.test", r["smuggled_second_request"]);
        Assert.Equal($"[\"{TestWorld.Allowed}\"]", r["mixed_resolve"]);
        Assert.All(World.Servers["allowed-http"].Connections, c => Assert.DoesNotContain(c.Requests, q => q.Contains("evil.test", StringComparison.Ordinal)));
        AssertNothingReached();
        var log = await LogAsync(id, l => l.Any(e => e.TryGetProperty("requestedAddress", out _)));
        Assert.Contains(log, e => e.GetProperty("protocol").GetString() == "tcp" && e.GetProperty("verdict").GetString() == "allowed"
            && e.GetProperty("address").GetString() == TestWorld.Allowed.ToString() && e.TryGetProperty("requestedAddress", out var req) && req.GetString() == TestWorld.Evil.ToString());
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task MetadataPrivateAndHostAddressesAreUnreachableEvenInOpenMode(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "open");
        var gateway = JsonDocument.Parse(await Api.GetStringAsync($"v1/sandboxes/{id}/network")).RootElement.GetProperty("address").GetString()!;
        var targets = TestWorld.Metadata.Concat(TestWorld.Private).Select(a => a.ToString())
            .Append(TestWorld.WorldAddress.ToString()).Append("127.0.0.1").ToList();
        var script = string.Join("\n", targets.Select(t => $"out(\"http {t}\", http(\"{t}\", ip=\"{t}\"))"))
            + $"\nout(\"host_port\", tcp(\"{TestWorld.WorldAddress}\", 8081, b\"GET / HTTP/1.0\\r\\n\\r\\n\"))"
            + "\nout(\"metadata_v6\", tcp(\"fd00:ec2::254\", 80))"
            + "\nout(\"mapped_v6\", tcp(\"::ffff:169.254.169.254\", 80))"
            + $"\nout(\"smtp\", tcp(\"{TestWorld.Evil}\", 25))"
            // A positive control: open mode does reach a public host, so the probes can succeed.
            + $"\nout(\"control\", http(\"other.test\", ip=\"{TestWorld.Other}\"))";
        var r = await PythonAsync(id, script);
        Assert.Equal("ok:hello from other-http host=other.test\n", r["control"]);
        foreach (var (key, value) in r.Where(kv => kv.Key != "control"))
        {
            // 127.0.0.1 is the sandbox's own loopback (nothing listens there): refused, never the host's.
            Assert.True(value.StartsWith("error", StringComparison.Ordinal) || value == "closed", $"{key} got through: {value}");
        }
        AssertNothingReached("other-http");
        foreach (var name in World.Servers.Keys.Where(n => n.StartsWith("metadata", StringComparison.Ordinal) || n.StartsWith("private", StringComparison.Ordinal) || n == "world-self" || n == "evil-smtp"))
            Assert.Equal(0, World.Servers[name].ConnectionCount);
        Assert.NotEmpty(gateway);
    }
}
