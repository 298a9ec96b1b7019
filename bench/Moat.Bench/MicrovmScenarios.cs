using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Moat.Core.Sandboxes;

namespace Moat.Bench;

/// <summary>
/// The microVM tier against raw QEMU: the same guest kernel and Moat's initramfs booted by
/// <c>qemu-system-x86_64 -M microvm</c> by hand, with the agent only saying it is alive and
/// powering off (what Moat's boot probe does). That is the floor of any microVM sandbox here;
/// Moat adds the disks, the overlay root, the agent channel and the command.
/// </summary>
public static class MicrovmScenarios
{
    private static JsonObject Summary(Stats s) => new()
    {
        ["n"] = s.N, ["p50"] = Math.Round(s.P50, 1), ["p90"] = Math.Round(s.P90, 1), ["mean"] = Math.Round(s.Mean, 1),
        ["min"] = Math.Round(s.Min, 1), ["max"] = Math.Round(s.Max, 1),
    };

    private static JsonArray Samples(IEnumerable<double> samples) => new([.. samples.Select(v => (JsonNode)Math.Round(v, 1))]);

    /// <summary>The raw boot: kernel + initramfs → init prints → power off, as Moat's probe runs it.</summary>
    private static async Task<string[]> RawBootAsync(Bench bench)
    {
        var status = (await bench.Manager.Runtimes.StatusAsync(CancellationToken.None)).Single(s => s.Tier == IsolationTier.Microvm);
        string accel = status.Details.TryGetValue("accelerator", out var a) ? a : "tcg";
        var kernelDir = Path.Combine(Bench.RepoRoot, "artifacts", "kernel");
        var kernel = File.Exists(Path.Combine(kernelDir, "vmlinux")) ? Path.Combine(kernelDir, "vmlinux") : Path.Combine(kernelDir, "vmlinuz");
        // The initramfs the runtime built for this agent and kernel (the newest in its cache).
        var initramfs = new DirectoryInfo(Path.Combine(bench.DataDirectory, "cache", "microvm")).EnumerateFiles("initramfs-*.cpio")
            .OrderByDescending(f => f.LastWriteTimeUtc).FirstOrDefault()?.FullName
            ?? throw new InvalidOperationException("no initramfs in the microVM cache: create one sandbox first");
        var append = "console=ttyS0 quiet panic=-1 oops=panic pci=off random.trust_cpu=on lockdown=confidentiality";
        if (accel == "tcg" && TscKhz() is int khz and > 0)
            append += $" tsc_early_khz={khz}";
        return ["-M", "microvm", "-accel", accel, "-cpu", accel == "kvm" ? "host" : "max", "-m", "320", "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
                "-kernel", kernel, "-initrd", initramfs, "-append", append + " -- --vm --probe"];
    }

    private static int TscKhz()
    {
        foreach (var line in File.ReadLines("/proc/cpuinfo"))
        {
            if (line.StartsWith("cpu MHz", StringComparison.Ordinal) && double.TryParse(line[(line.IndexOf(':') + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out double mhz))
                return (int)Math.Round(mhz * 1000);
        }
        return 0;
    }

    /// <summary>create → the first command's result (`python3 -c pass`), against a raw boot to init and power-off.</summary>
    public static async Task<JsonObject> CreateAsync(Bench bench, int n)
    {
        string[] command = ["python3", "-c", "pass"];
        // One sandbox first: it builds the template's disk image and the initramfs the raw boot uses.
        var first = await bench.Manager.CreateAsync(bench.Spec(), Bench.Tenant, CancellationToken.None);
        await bench.Manager.DeleteAsync(first.Id, Bench.Tenant, CancellationToken.None);
        var rawArgs = await RawBootAsync(bench);
        var raw = new List<double>();
        var moat = new List<double>();
        var moatCreate = new List<double>();
        for (int i = -1; i < n; i++) // one warm-up round
        {
            var rawMs = await Bench.TimeProcessAsync("qemu-system-x86_64", rawArgs);
            var clock = Stopwatch.StartNew();
            var sandbox = await bench.Manager.CreateAsync(bench.Spec(), Bench.Tenant, CancellationToken.None);
            double created = clock.Elapsed.TotalMilliseconds;
            var result = await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, new CommandSpec { Argv = command }, default, CancellationToken.None);
            double total = clock.Elapsed.TotalMilliseconds;
            await bench.Manager.DeleteAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
            if (result.Exit.ExitCode != 0)
                throw new InvalidOperationException("python3 -c pass failed in the microVM");
            if (i < 0)
                continue;
            raw.Add(rawMs);
            moat.Add(total);
            moatCreate.Add(created);
        }
        var r = Stats.Of(raw);
        var m = Stats.Of(moat);
        var c = Stats.Of(moatCreate);
        Console.WriteLine($"raw qemu-system-x86_64 -M microvm boot → init → power off: {r}");
        Console.WriteLine($"moat create+exec: {m}  (create alone p50 {c.P50:0} ms)");
        Console.WriteLine($"ratio p50: {m.P50 / r.P50:0.00}x (create alone {c.P50 / r.P50:0.00}x)");
        return new JsonObject
        {
            ["command"] = string.Join(' ', command),
            ["raw"] = Summary(r),
            ["rawCommand"] = "qemu-system-x86_64 " + string.Join(' ', rawArgs),
            ["moat"] = Summary(m),
            ["moatCreateOnly"] = Summary(c),
            ["ratioP50"] = Math.Round(m.P50 / r.P50, 3),
            ["createOnlyRatioP50"] = Math.Round(c.P50 / r.P50, 3),
            ["samples"] = new JsonObject { ["raw"] = Samples(raw), ["moat"] = Samples(moat), ["moatCreateOnly"] = Samples(moatCreate) },
        };
    }

    /// <summary>
    /// The round trip of `true` in a running microVM. QEMU has nothing like `runc exec`, so the
    /// side-by-side figure is the same exec in a container sandbox of the same node.
    /// </summary>
    public static async Task<JsonObject> ExecAsync(Bench bench, int n)
    {
        var command = new CommandSpec { Argv = ["true"] };
        async Task<List<double>> MeasureAsync(IsolationTier tier)
        {
            var sandbox = await bench.Manager.CreateAsync(bench.Spec() with { Tier = tier }, Bench.Tenant, CancellationToken.None);
            try
            {
                for (int i = 0; i < 5; i++)
                    await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, command, default, CancellationToken.None);
                var samples = new List<double>();
                for (int i = 0; i < n; i++)
                {
                    var clock = Stopwatch.StartNew();
                    await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, command, default, CancellationToken.None);
                    samples.Add(clock.Elapsed.TotalMilliseconds);
                }
                return samples;
            }
            finally
            {
                await bench.Manager.DeleteAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
            }
        }
        var vm = Stats.Of(await MeasureAsync(IsolationTier.Microvm));
        var container = Stats.Of(await MeasureAsync(IsolationTier.Container));
        Console.WriteLine($"moat exec true, microvm: {vm}");
        Console.WriteLine($"moat exec true, container: {container}");
        Console.WriteLine($"microvm / container p50: {vm.P50 / container.P50:0.0}x");
        return new JsonObject
        {
            ["moat"] = Summary(vm),
            ["container"] = Summary(container),
            ["ratioToContainerP50"] = Math.Round(vm.P50 / container.P50, 2),
        };
    }
}
