using System.Diagnostics;
using System.Text.Json.Nodes;
using Moat.Core.Sandboxes;

namespace Moat.Bench;

/// <summary>The measurements. Each runs Moat and the raw runtime alternately, in one process, on one machine.</summary>
public static class Scenarios
{
    internal static JsonObject Summary(Stats s) => new()
    {
        ["n"] = s.N, ["p50"] = Math.Round(s.P50, 3), ["p90"] = Math.Round(s.P90, 3), ["p99"] = Math.Round(s.P99, 3),
        ["mean"] = Math.Round(s.Mean, 3), ["min"] = Math.Round(s.Min, 3), ["max"] = Math.Round(s.Max, 3),
    };

    internal static JsonArray Samples(IEnumerable<double> samples) => new([.. samples.Select(v => (JsonNode)Math.Round(v, 3))]);

    private static string RuntimeBinary(IsolationTier tier) => tier switch
    {
        IsolationTier.Container => "runc",
        IsolationTier.Gvisor => "runsc",
        _ => throw new NotSupportedException($"no raw OCI runtime for {tier.Name()}"),
    };

    private static string[] RuntimeGlobals(IsolationTier tier, string root) => tier == IsolationTier.Gvisor
        ? ["--root", root, "--network", "none", "--platform", "ptrace"]
        : ["--root", root];

    /// <summary>
    /// A hand-made bundle for the raw runtime: the runtime's own default spec (`runc spec`), the
    /// same template layer as a read-only root, the same command.
    /// </summary>
    private static async Task<string> RawBundleAsync(Bench bench, string[] command)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"moat-bench-raw-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        File.Delete(Path.Combine(dir, "config.json"));
        await Bench.TimeProcessAsync(RuntimeBinary(bench.Tier), "spec", "--bundle", dir);
        var config = JsonNode.Parse(await File.ReadAllTextAsync(Path.Combine(dir, "config.json")))!;
        var template = await bench.TemplateAsync();
        config["process"]!["terminal"] = false;
        config["process"]!["args"] = new JsonArray([.. command.Select(c => (JsonNode)c)]);
        config["root"] = new JsonObject { ["path"] = template.LayerPaths[0], ["readonly"] = true };
        await File.WriteAllTextAsync(Path.Combine(dir, "config.json"), config.ToJsonString());
        return dir;
    }

    /// <summary>create → the first command's result: `python3 -c pass` in a fresh sandbox, against `runc run` of the same.</summary>
    public static async Task<JsonObject> CreateAsync(Bench bench, int n)
    {
        string[] command = ["python3", "-c", "pass"];
        var bundle = await RawBundleAsync(bench, command);
        var state = Path.Combine(bundle, "state");
        var raw = new List<double>();
        var moat = new List<double>();
        var moatCreate = new List<double>();
        for (int i = -3; i < n; i++) // three warm-up rounds
        {
            var rawMs = await Bench.TimeProcessAsync(RuntimeBinary(bench.Tier), [.. RuntimeGlobals(bench.Tier, state), "run", "--bundle", bundle, $"bench-raw-{Environment.ProcessId}-{i + 3:D6}"]);
            var clock = Stopwatch.StartNew();
            var sandbox = await bench.Manager.CreateAsync(bench.Spec(), Bench.Tenant, CancellationToken.None);
            double created = clock.Elapsed.TotalMilliseconds;
            var result = await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, new CommandSpec { Argv = command }, default, CancellationToken.None);
            double total = clock.Elapsed.TotalMilliseconds;
            if (result.Exit.ExitCode != 0)
                throw new InvalidOperationException("python3 -c pass failed in the sandbox");
            await bench.Manager.DeleteAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
            if (i < 0)
                continue;
            raw.Add(rawMs);
            moat.Add(total);
            moatCreate.Add(created);
        }
        var r = Stats.Of(raw);
        var m = Stats.Of(moat);
        Console.WriteLine($"raw {RuntimeBinary(bench.Tier)} run: {r}");
        Console.WriteLine($"moat create+exec: {m}  (create alone p50 {Stats.Of(moatCreate).P50:0.0} ms)");
        Console.WriteLine($"ratio p50: {m.P50 / r.P50:0.00}x");
        return new JsonObject
        {
            ["command"] = string.Join(' ', command),
            ["raw"] = Summary(r),
            ["moat"] = Summary(m),
            ["moatCreateOnly"] = Summary(Stats.Of(moatCreate)),
            ["ratioP50"] = Math.Round(m.P50 / r.P50, 3),
            ["samples"] = new JsonObject { ["raw"] = Samples(raw), ["moat"] = Samples(moat) },
        };
    }

    /// <summary>The round trip of `true` in a running sandbox, against `runc exec` of `true` in the same container.</summary>
    public static async Task<JsonObject> ExecAsync(Bench bench, int n)
    {
        var sandbox = await bench.Manager.CreateAsync(bench.Spec(), Bench.Tenant, CancellationToken.None);
        try
        {
            var instance = sandbox.Instance!;
            string root = bench.Tier == IsolationTier.Gvisor ? bench.Manager.Options.DataDirectory : "";
            var rootFlag = bench.Tier == IsolationTier.Gvisor ? "/run/moat/runsc" : "/run/moat/runc";
            var command = new CommandSpec { Argv = ["true"] };
            for (int i = 0; i < 20; i++)
                await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, command, default, CancellationToken.None);
            var moat = new List<double>();
            var raw = new List<double>();
            for (int i = 0; i < n; i++)
            {
                var clock = Stopwatch.StartNew();
                await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, command, default, CancellationToken.None);
                moat.Add(clock.Elapsed.TotalMilliseconds);
                if (i < Math.Min(n, 200))
                    raw.Add(await Bench.TimeProcessAsync(RuntimeBinary(bench.Tier), [.. RuntimeGlobals(bench.Tier, rootFlag), "exec", instance.ContainerId, "/bin/true"]));
            }
            var m = Stats.Of(moat);
            var r = Stats.Of(raw);
            Console.WriteLine($"moat exec true: {m}");
            Console.WriteLine($"raw {RuntimeBinary(bench.Tier)} exec true: {r}");
            Console.WriteLine($"moat is {r.P50 / m.P50:0.0}x faster at p50");
            _ = root;
            return new JsonObject
            {
                ["moat"] = Summary(m),
                ["raw"] = Summary(r),
                ["speedupP50"] = Math.Round(r.P50 / m.P50, 2),
                ["samples"] = new JsonObject { ["moat"] = Samples(moat), ["raw"] = Samples(raw) },
            };
        }
        finally
        {
            await bench.Manager.DeleteAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
        }
    }

    /// <summary>One-shot runs (sandbox, `true`, teardown) through the manager, two at a time on this 2-core host.</summary>
    public static async Task<JsonObject> OneShotAsync(Bench bench, int n)
    {
        const int concurrency = 2;
        var latencies = new List<double>();
        var clock = Stopwatch.StartNew();
        await Parallel.ForEachAsync(Enumerable.Range(0, n), new ParallelOptions { MaxDegreeOfParallelism = concurrency }, async (_, ct) =>
        {
            var one = Stopwatch.StartNew();
            var result = await bench.Manager.RunOnceAsync(new OneShotSpec { Sandbox = bench.Spec(), Command = new CommandSpec { Argv = ["true"] } }, Bench.Tenant, (_, _) => ValueTask.CompletedTask, ct);
            if (result.ExitCode != 0)
                throw new InvalidOperationException($"one-shot run failed: {result.Reason}");
            lock (latencies)
                latencies.Add(one.Elapsed.TotalMilliseconds);
        });
        double seconds = clock.Elapsed.TotalSeconds;
        var s = Stats.Of(latencies);
        Console.WriteLine($"one-shot: {n / seconds:0.0} runs/s at concurrency {concurrency}; latency {s}");
        return new JsonObject { ["concurrency"] = concurrency, ["runsPerSecond"] = Math.Round(n / seconds, 2), ["latency"] = Summary(s), ["samples"] = Samples(latencies) };
    }

    /// <summary>`moat run -- true` as a user types it: a CLI process per run (embedded, no server), two at a time.</summary>
    public static async Task<JsonObject> CliAsync(Bench bench, int n)
    {
        const int concurrency = 2;
        var cli = Path.Combine(Bench.RepoRoot, "artifacts", "cli", "moat");
        if (!File.Exists(cli))
            throw new FileNotFoundException("artifacts/cli/moat is not built: run build/setup.sh");
        var latencies = new List<double>();
        var env = new Dictionary<string, string> { ["MOAT_DATA"] = bench.DataDirectory };
        var clock = Stopwatch.StartNew();
        await Parallel.ForEachAsync(Enumerable.Range(0, n), new ParallelOptions { MaxDegreeOfParallelism = concurrency }, async (_, _) =>
        {
            var psi = new ProcessStartInfo(cli) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { "run", "--isolation", bench.Tier.Name(), "--", "true" })
                psi.ArgumentList.Add(a);
            foreach (var (k, v) in env)
                psi.Environment[k] = v;
            var one = Stopwatch.StartNew();
            using var process = Process.Start(psi)!;
            var err = process.StandardError.ReadToEndAsync();
            await process.StandardOutput.ReadToEndAsync();
            await process.WaitForExitAsync();
            if (process.ExitCode != 0)
                throw new InvalidOperationException($"moat run failed ({process.ExitCode}): {await err}");
            lock (latencies)
                latencies.Add(one.Elapsed.TotalMilliseconds);
        });
        double seconds = clock.Elapsed.TotalSeconds;
        var s = Stats.Of(latencies);
        Console.WriteLine($"moat run (CLI): {n / seconds:0.0} runs/s at concurrency {concurrency}; latency {s}");
        return new JsonObject { ["concurrency"] = concurrency, ["runsPerSecond"] = Math.Round(n / seconds, 2), ["latency"] = Summary(s), ["samples"] = Samples(latencies) };
    }

    /// <summary>
    /// As many idle sandboxes as asked: host memory per sandbox (MemAvailable before and after,
    /// so the kernel's share — mounts, loop devices, page tables — counts), and whether every one still answers.
    /// </summary>
    public static async Task<JsonObject> DensityAsync(Bench bench, int n)
    {
        GC.Collect();
        await Task.Delay(2000);
        long before = Bench.MemAvailableBytes();
        var ids = new List<string>();
        var clock = Stopwatch.StartNew();
        var curve = new JsonArray();
        try
        {
            await Parallel.ForEachAsync(Enumerable.Range(0, n), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (i, ct) =>
            {
                var sandbox = await bench.Manager.CreateAsync(bench.Spec(memoryMiB: 64, diskMiB: 64), Bench.Tenant, ct);
                lock (ids)
                {
                    ids.Add(sandbox.Id);
                    if (ids.Count % 50 == 0)
                    {
                        long used = before - Bench.MemAvailableBytes();
                        curve.Add(new JsonObject { ["sandboxes"] = ids.Count, ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1), ["hostMemoryMiB"] = used >> 20 });
                        Console.WriteLine($"{ids.Count} sandboxes, {clock.Elapsed.TotalSeconds:0} s, {used >> 20} MiB");
                    }
                }
            });
            double createSeconds = clock.Elapsed.TotalSeconds;
            await Task.Delay(5000); // let the agents settle into idle
            long after = Bench.MemAvailableBytes();
            // Every sandbox still answers.
            int answering = 0;
            await Parallel.ForEachAsync(ids, new ParallelOptions { MaxDegreeOfParallelism = 16 }, async (id, ct) =>
            {
                var r = await bench.Manager.RunCommandAsync(id, Bench.Tenant, new CommandSpec { Argv = ["true"] }, default, ct);
                if (r.Exit.ExitCode == 0)
                    Interlocked.Increment(ref answering);
            });
            double cgroupAverage = 0;
            foreach (var id in ids.Take(50))
                cgroupAverage += ((await bench.Manager.GetUsageAsync(id, Bench.Tenant, CancellationToken.None))?.MemoryBytes ?? 0) / 50.0;
            double perSandbox = (before - after) / (double)ids.Count / (1 << 20);
            Console.WriteLine($"{ids.Count} idle sandboxes in {createSeconds:0} s; {answering} answer; host memory {perSandbox:0.00} MiB each (cgroup {cgroupAverage / (1 << 20):0.00} MiB)");
            return new JsonObject
            {
                ["sandboxes"] = ids.Count,
                ["answering"] = answering,
                ["createSeconds"] = Math.Round(createSeconds, 1),
                ["hostMiBPerSandbox"] = Math.Round(perSandbox, 2),
                ["cgroupMiBPerSandbox"] = Math.Round(cgroupAverage / (1 << 20), 2),
                ["curve"] = curve,
            };
        }
        finally
        {
            await Parallel.ForEachAsync(ids, new ParallelOptions { MaxDegreeOfParallelism = 16 }, async (id, _) =>
                await bench.Manager.DeleteAsync(id, Bench.Tenant, CancellationToken.None));
        }
    }
}
