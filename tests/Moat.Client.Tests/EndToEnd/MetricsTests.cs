using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>/metrics as Prometheus scrapes it: valid text exposition format with the server's own series.</summary>
[Collection(ServerCollection.Name)]
public sealed partial class MetricsTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>[^}]*)\})? (?<value>[^ ]+)( -?\d+)?$")]
    private static partial Regex SampleLine();

    [GeneratedRegex(@"^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped))$")]
    private static partial Regex CommentLine();

    [GeneratedRegex(@"^[a-zA-Z_][a-zA-Z0-9_]*=""([^""\\]|\\.)*""$")]
    private static partial Regex LabelPair();

    private sealed record Sample(string Name, IReadOnlyDictionary<string, string> Labels, double Value);

    /// <summary>Parses the text format strictly: every line a comment, a sample or blank; every sample's family declared.</summary>
    private static List<Sample> Parse(string text)
    {
        var samples = new List<Sample>();
        var types = new Dictionary<string, string>();
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0)
                continue;
            if (line.StartsWith('#'))
            {
                Assert.Matches(CommentLine(), line);
                var parts = line.Split(' ');
                if (parts[1] == "TYPE")
                    types[parts[2]] = parts[3];
                continue;
            }
            var m = SampleLine().Match(line);
            Assert.True(m.Success, $"not a Prometheus sample line: '{line}'");
            var labels = new Dictionary<string, string>();
            if (m.Groups["labels"].Success && m.Groups["labels"].Value.Length > 0)
            {
                foreach (var pair in Regex.Split(m.Groups["labels"].Value, @",(?=[a-zA-Z_])"))
                {
                    Assert.Matches(LabelPair(), pair);
                    int eq = pair.IndexOf('=');
                    labels[pair[..eq]] = pair[(eq + 2)..^1];
                }
            }
            var valueText = m.Groups["value"].Value;
            double value = valueText switch { "+Inf" => double.PositiveInfinity, "-Inf" => double.NegativeInfinity, "NaN" => double.NaN, _ => double.Parse(valueText, NumberStyles.Float, CultureInfo.InvariantCulture) };
            var name = m.Groups["name"].Value;
            var family = Regex.Replace(name, "_(bucket|sum|count)$", "");
            Assert.True(types.ContainsKey(name) || types.ContainsKey(family), $"sample {name} has no # TYPE line before it");
            samples.Add(new Sample(name, labels, value));
        }
        return samples;
    }

    private async Task<List<Sample>> ScrapeAsync()
    {
        using var http = TenancyKit.Http(Server, null);
        var response = await http.GetAsync("metrics", Timeout);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.StartsWith("text/plain", response.Content.Headers.ContentType?.MediaType);
        return Parse(await response.Content.ReadAsStringAsync(Timeout));
    }

    private static double Value(List<Sample> samples, string name, params (string Key, string Value)[] labels) =>
        samples.Where(s => s.Name == name && labels.All(l => s.Labels.TryGetValue(l.Key, out var v) && v == l.Value)).Sum(s => s.Value);

    [SkippableFact]
    public async Task The_scrape_parses_as_prometheus_text_with_sandboxes_latencies_and_errors()
    {
        await using var sandbox = await CreateAsync();
        await sandbox.Commands.RunAsync("true", Timeout);
        var before = await ScrapeAsync();
        await Assert.ThrowsAsync<MoatNotFoundException>(() => Client.GetSandboxAsync("sb000000000000000000", Timeout));

        var after = await ScrapeAsync();

        Assert.True(Value(after, "moat_sandboxes", ("state", "running"), ("tier", "container")) >= 1);
        Assert.True(Value(after, "moat_sandbox_create_seconds_count", ("tier", "container")) >= 1);
        Assert.True(Value(after, "moat_exec_seconds_count", ("tier", "container")) >= 1);
        Assert.Equal(
            Value(before, "moat_api_errors_total", ("code", "sandbox_not_found"), ("status", "404")) + 1,
            Value(after, "moat_api_errors_total", ("code", "sandbox_not_found"), ("status", "404")));
        // Histograms are consistent: cumulative buckets never fall and +Inf equals the count.
        foreach (var family in new[] { "moat_sandbox_create_seconds", "moat_exec_seconds" })
        {
            var buckets = after.Where(s => s.Name == family + "_bucket" && s.Labels["tier"] == "container").ToList();
            Assert.NotEmpty(buckets);
            for (int i = 1; i < buckets.Count; i++)
                Assert.True(buckets[i].Value >= buckets[i - 1].Value, $"{family} buckets fall at le={buckets[i].Labels["le"]}");
            Assert.Equal("+Inf", buckets[^1].Labels["le"]);
            Assert.Equal(Value(after, family + "_count", ("tier", "container")), buckets[^1].Value);
        }
    }

    [SkippableFact]
    public async Task The_scrape_declares_the_pool_egress_and_agent_failure_series()
    {
        await using var sandbox = await CreateAsync();
        using var http = TenancyKit.Http(Server, null);
        var text = await http.GetStringAsync("metrics", Timeout);
        Parse(text);
        // Declared with their type even before anything has counted into them.
        foreach (var (name, type) in new[]
        {
            ("moat_pool_ready", "gauge"), ("moat_pool_target", "gauge"), ("moat_pool_hits_total", "counter"), ("moat_pool_misses_total", "counter"),
            ("moat_egress_bytes_total", "counter"), ("moat_egress_attempts_total", "counter"), ("moat_agent_failures_total", "counter"),
        })
        {
            Assert.Contains($"# TYPE {name} {type}\n", text);
            Assert.Matches($"(?m)^# HELP {name} .+$", text);
        }
    }
}
