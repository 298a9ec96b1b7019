using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Moat.Core.Sandboxes;

namespace Moat.Bench;

/// <summary>
/// Sandbox create time with network mode `allow` against `none`, alternating in one node. The node's uplink
/// is a "world" namespace this scenario creates with nothing in it but loopback (so no packet can leave the
/// machine); both namespaces it makes are deleted at the end.
/// </summary>
public static class NetworkScenarios
{
    public static async Task<JsonObject> CreateAsync(IsolationTier tier, int n)
    {
        var prefix = "mb" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3));
        string world = prefix + "-world", gateway = prefix + "-gw";
        await Bench.TimeProcessAsync("ip", "netns", "add", world);
        try
        {
            await Bench.TimeProcessAsync("ip", "-n", world, "link", "set", "lo", "up");
            await using var bench = await Bench.StartAsync(tier,
            [
                new("Moat:Network:UplinkNamespace", world),
                new("Moat:Network:GatewayNamespace", gateway),
                new("Moat:Network:Resolvers:0", "44.1.2.53"),
            ]);
            var none = new List<double>();
            var allow = new List<double>();
            var allowPolicy = new NetworkPolicy(NetworkMode.Allow, ["pypi.org", "*.pythonhosted.org", "44.1.2.0/24:443"]);
            string load = File.ReadAllText("/proc/loadavg").Trim();
            for (int i = -3; i < n; i++) // three warm-up rounds
            {
                foreach (var mode in new[] { NetworkPolicy.None, allowPolicy })
                {
                    var clock = Stopwatch.StartNew();
                    var sandbox = await bench.Manager.CreateAsync(bench.Spec() with { Network = mode }, Bench.Tenant, CancellationToken.None);
                    double ms = clock.Elapsed.TotalMilliseconds;
                    await bench.Manager.DeleteAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
                    if (i >= 0)
                        (mode.Mode == NetworkMode.None ? none : allow).Add(ms);
                }
            }
            var a = Stats.Of(allow);
            var z = Stats.Of(none);
            Console.WriteLine($"create, network none:  {z}");
            Console.WriteLine($"create, network allow: {a}");
            Console.WriteLine($"allow − none at p50: {a.P50 - z.P50:+0.0;-0.0} ms (load {load} → {File.ReadAllText("/proc/loadavg").Trim()})");
            return new JsonObject
            {
                ["allowRules"] = new JsonArray([.. allowPolicy.Allow.Select(r => (JsonNode)r)]),
                ["none"] = Scenarios.Summary(z),
                ["allow"] = Scenarios.Summary(a),
                ["addedP50Ms"] = Math.Round(a.P50 - z.P50, 2),
                ["addedMeanMs"] = Math.Round(a.Mean - z.Mean, 2),
                ["loadavg"] = load,
                ["samples"] = new JsonObject { ["none"] = Scenarios.Samples(none), ["allow"] = Scenarios.Samples(allow) },
            };
        }
        finally
        {
            foreach (var ns in new[] { gateway, world })
            {
                if (File.Exists(Path.Combine("/run/netns", ns)))
                    await Bench.TimeProcessAsync("ip", "netns", "del", ns);
            }
        }
    }
}
