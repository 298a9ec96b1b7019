using System.Diagnostics;
using System.Text.Json.Nodes;
using Moat.Core.Sandboxes;

namespace Moat.Bench;

/// <summary>
/// Exec fan-out: N running sandboxes, then one `echo` in every one of them at the same instant. Reports the
/// per-sandbox latency (p50/p99) and the time until the last answer, against E2B's published fan-out over
/// 750 sandboxes (p50 595 ms, p99 794 ms), recorded in the result next to Moat's numbers. Three rounds.
/// </summary>
public static class FanoutScenarios
{
    public static async Task<JsonObject> RunAsync(Bench bench, int n)
    {
        var ids = new System.Collections.Concurrent.ConcurrentBag<string>();
        var createClock = Stopwatch.StartNew();
        try
        {
            await Parallel.ForEachAsync(Enumerable.Range(0, n), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (_, ct) =>
            {
                var sandbox = await bench.Manager.CreateAsync(bench.Spec(memoryMiB: 256, diskMiB: 64), Bench.Tenant, ct);
                ids.Add(sandbox.Id);
            });
            double createSeconds = createClock.Elapsed.TotalSeconds;
            Console.WriteLine($"{n} sandboxes created in {createSeconds:0.0} s; load {File.ReadAllText("/proc/loadavg").Trim()}");
            var all = ids.ToArray();
            var echo = new CommandSpec { Argv = ["echo", "fanout"] };
            // one warm round so every agent channel is open, as an E2B client holding the sandboxes would have
            await Task.WhenAll(all.Select(id => bench.Manager.RunCommandAsync(id, Bench.Tenant, echo, default, CancellationToken.None)));

            var rounds = new JsonArray();
            var perSandbox = new List<double>();
            var totals = new List<double>();
            for (int round = 0; round < 3; round++)
            {
                string load = File.ReadAllText("/proc/loadavg").Trim();
                var samples = new double[all.Length];
                var clock = Stopwatch.StartNew();
                var tasks = all.Select(async (id, i) =>
                {
                    var t0 = clock.Elapsed;
                    var r = await bench.Manager.RunCommandAsync(id, Bench.Tenant, echo, default, CancellationToken.None);
                    samples[i] = (clock.Elapsed - t0).TotalMilliseconds;
                    if (r.Exit.ExitCode != 0 || !System.Text.Encoding.UTF8.GetString(r.Stdout).StartsWith("fanout", StringComparison.Ordinal))
                        throw new InvalidOperationException($"echo failed in {id}");
                }).ToArray();
                await Task.WhenAll(tasks);
                double total = clock.Elapsed.TotalMilliseconds;
                var s = Stats.Of(samples);
                Console.WriteLine($"round {round}: per-sandbox {s}; all {n} answered in {total:0.0} ms (load {load})");
                perSandbox.AddRange(samples);
                totals.Add(total);
                rounds.Add(new JsonObject { ["perSandbox"] = Scenarios.Summary(s), ["totalMs"] = Math.Round(total, 3), ["loadavg"] = load });
            }
            var all3 = Stats.Of(perSandbox);
            Console.WriteLine($"all rounds: per-sandbox {all3}; total p50 {Stats.Of(totals).P50:0.0} ms");
            return new JsonObject
            {
                ["sandboxes"] = n,
                ["command"] = "echo fanout",
                ["createSeconds"] = Math.Round(createSeconds, 2),
                ["moat"] = Scenarios.Summary(all3),
                ["totalMs"] = Scenarios.Summary(Stats.Of(totals)),
                ["rounds"] = rounds,
                ["e2b"] = new JsonObject { ["sandboxes"] = 750, ["p50"] = 595, ["p99"] = 794, ["source"] = "E2B published fan-out benchmark" },
                ["samples"] = new JsonObject { ["moat"] = Scenarios.Samples(perSandbox) },
            };
        }
        finally
        {
            await Parallel.ForEachAsync(ids, new ParallelOptions { MaxDegreeOfParallelism = 16 }, async (id, _) =>
                await bench.Manager.DeleteAsync(id, Bench.Tenant, CancellationToken.None));
        }
    }
}
