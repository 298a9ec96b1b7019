using System.Globalization;
using Moat.Core.Sandboxes;

namespace Moat.Tests.Network;

/// <summary>A server (and world) of its own whose sandboxes have small bandwidth and connection limits.</summary>
public sealed class LimitedNetworkFixture : NetworkFixture
{
    /// <summary>Bytes per second each way, per sandbox.</summary>
    public const long BytesPerSecond = 1024 * 1024;

    /// <summary>Open connections per sandbox.</summary>
    public const int Connections = 4;

    protected override IEnumerable<string> ExtraArguments =>
    [
        $"--Moat:Network:EgressBytesPerSecond={BytesPerSecond}",
        $"--Moat:Network:IngressBytesPerSecond={BytesPerSecond}",
        $"--Moat:Network:MaxConnectionsPerSandbox={Connections}",
    ];
}

/// <summary>Moat:Network bandwidth and connection limits, enforced by the proxy and reported in the log.</summary>
public sealed class LimitTests(LimitedNetworkFixture fixture) : NetworkTestBase(fixture), IClassFixture<LimitedNetworkFixture>
{
    // The bucket lets a tenth of a second's worth through at once; everything after that waits for tokens.
    private static double TheoreticalSeconds(long bytes) =>
        (bytes - Math.Max(64 * 1024, LimitedNetworkFixture.BytesPerSecond / 10.0)) / LimitedNetworkFixture.BytesPerSecond;

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task BandwidthLimitHoldsBothWays(IsolationTier tier)
    {
        const long down = 3 * 1024 * 1024;
        const long up = 2 * 1024 * 1024;
        var id = await CreateAsync(tier, "allow", "allowed.test");
        var r = await PythonAsync(id, $$"""
            def transfer(request):
                s = socket.create_connection(("allowed.test", 80), 10); s.settimeout(60)
                t = time.monotonic()
                s.sendall(request)
                got = b""
                while True:
                    c = s.recv(65536)
                    if not c: break
                    got += c
                return time.monotonic() - t, got
            secs, got = transfer(b"GET /big/{{down}} HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
            out("down_s", secs); out("down_bytes", len(got.split(b"\r\n\r\n", 1)[-1]))
            body = b"x" * {{up}}
            secs, got = transfer(b"POST /upload HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            out("up_s", secs); out("up_reply", got.split(b"\r\n\r\n", 1)[-1].decode())
            """, timeoutSeconds: 120);
        Assert.Equal(down.ToString(CultureInfo.InvariantCulture), r["down_bytes"]);
        Assert.Equal("hello from allowed-http host=allowed.test\n", r["up_reply"]);
        double downSeconds = double.Parse(r["down_s"], CultureInfo.InvariantCulture);
        double upSeconds = double.Parse(r["up_s"], CultureInfo.InvariantCulture);
        // A loaded box only makes transfers slower, so only a lower bound is checked: at least 70% of
        // the time the limit allows (direct, these take well under a tenth of that).
        Assert.True(downSeconds >= 0.7 * TheoreticalSeconds(down), $"{down} bytes came in in {downSeconds:0.000} s; the limit allows no less than {TheoreticalSeconds(down):0.000} s");
        Assert.True(upSeconds >= 0.7 * TheoreticalSeconds(up), $"{up} bytes went out in {upSeconds:0.000} s; the limit allows no less than {TheoreticalSeconds(up):0.000} s");
        Console.WriteLine($"bandwidth limit {LimitedNetworkFixture.BytesPerSecond} B/s ({tier.Name()}): down {down / downSeconds:0} B/s, up {up / upSeconds:0} B/s");

        // The log counts what went through.
        var log = await LogAsync(id, l => l.Count(e => e.GetProperty("protocol").GetString() == "tcp" && e.TryGetProperty("end", out _)) >= 2);
        var tcp = log.Where(e => e.GetProperty("protocol").GetString() == "tcp").ToList();
        Assert.Contains(tcp, e => e.GetProperty("bytesIn").GetInt64() >= down);
        Assert.Contains(tcp, e => e.GetProperty("bytesOut").GetInt64() >= up);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task ConnectionLimitRefusesOneMoreAndFreesOnClose(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "allow", $"{TestWorld.Echo}/32");
        var r = await PythonAsync(id, $$"""
            held = []
            for i in range({{LimitedNetworkFixture.Connections}}):
                s = socket.create_connection(("{{TestWorld.Echo}}", 7), 5); s.settimeout(5)
                s.sendall(b"hold%d" % i)
                held.append((s, s.recv(100).decode()))
            out("held", ",".join(h[1] for h in held))
            out("extra", tcp("{{TestWorld.Echo}}", 7, b"extra"))
            held[0][0].close()
            # The proxy frees the slot when it sees the close; give it time on a busy box.
            again = "none"
            for attempt in range(50):
                again = tcp("{{TestWorld.Echo}}", 7, b"again")
                if again.startswith("data:"): break
                time.sleep(0.2)
            out("again", again)
            """, timeoutSeconds: 90);
        Assert.Equal(string.Join(",", Enumerable.Range(0, LimitedNetworkFixture.Connections).Select(i => $"hold{i}")), r["held"]);
        Assert.True(r["extra"].StartsWith("error", StringComparison.Ordinal) || r["extra"] == "closed", "a connection over the limit got through: " + r["extra"]);
        Assert.Equal("data:again", r["again"]);
        // The echo host never saw the refused connection's bytes.
        var connections = World.Servers["echo-tcp"].Connections.ToList();
        Assert.Equal(LimitedNetworkFixture.Connections + 1, connections.Count(c => c.BytesIn > 0));
        var log = await LogAsync(id, l => l.Any(e => e.GetProperty("reason").GetString() == "connection_limit"));
        Assert.Contains(log, e => e.GetProperty("verdict").GetString() == "denied" && e.GetProperty("reason").GetString() == "connection_limit" && e.GetProperty("address").GetString() == TestWorld.Echo.ToString());
    }
}
