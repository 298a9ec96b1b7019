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

    /// <summary>
    /// N idle microVM sandboxes: host memory per sandbox three ways — MemAvailable before and after
    /// (everything, the kernel's share included), QEMU's PSS, and that PSS split into the guest's RAM
    /// QEMU has touched (the memfd backend: Pss_Shmem) and QEMU's own (the rest: TCG's translation
    /// cache, heap, its libraries' share). Every sandbox must still answer at the end.
    /// </summary>
    public static async Task<JsonObject> DensityAsync(Bench bench, int n)
    {
        const int guestMiB = 128;
        GC.Collect();
        await Task.Delay(2000);
        long before = Bench.MemAvailableBytes();
        var sandboxes = new List<SandboxRecord>();
        var clock = Stopwatch.StartNew();
        try
        {
            await Parallel.ForEachAsync(Enumerable.Range(0, n), new ParallelOptions { MaxDegreeOfParallelism = 2 }, async (_, ct) =>
            {
                var sandbox = await bench.Manager.CreateAsync(bench.Spec(memoryMiB: guestMiB, diskMiB: 64), Bench.Tenant, ct);
                lock (sandboxes)
                    sandboxes.Add(sandbox);
                Console.WriteLine($"{sandboxes.Count} microVMs, {clock.Elapsed.TotalSeconds:0} s");
            });
            double createSeconds = clock.Elapsed.TotalSeconds;
            await Task.Delay(15000); // let the guests settle into idle
            long after = Bench.MemAvailableBytes();
            var pss = new List<double>();
            var shmem = new List<double>();
            var own = new List<double>();
            var rss = new List<double>();
            foreach (var sandbox in sandboxes)
            {
                var record = await bench.Manager.GetAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
                if (record.Instance?.Pid is not { } pid)
                    continue;
                var rollup = Fields($"/proc/{pid}/smaps_rollup");
                double p = rollup["Pss"] / 1024.0, sh = rollup.GetValueOrDefault("Pss_Shmem") / 1024.0;
                pss.Add(p);
                shmem.Add(sh);
                own.Add(p - sh);
                rss.Add(rollup["Rss"] / 1024.0);
            }
            int answering = 0;
            foreach (var sandbox in sandboxes)
            {
                var r = await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, new CommandSpec { Argv = ["true"] }, default, CancellationToken.None);
                if (r.Exit.ExitCode == 0)
                    answering++;
            }
            double perSandbox = (before - after) / (double)sandboxes.Count / (1 << 20);
            var (P, S, O, R) = (Stats.Of(pss), Stats.Of(shmem), Stats.Of(own), Stats.Of(rss));
            Console.WriteLine($"{sandboxes.Count} idle microVMs ({guestMiB} MiB guests) in {createSeconds:0} s; {answering} answer");
            Console.WriteLine($"host memory per sandbox (MemAvailable): {perSandbox:0.0} MiB; QEMU PSS p50 {P.P50:0.0} MiB = guest RAM touched {S.P50:0.0} + QEMU itself {O.P50:0.0} (RSS p50 {R.P50:0.0})");
            return new JsonObject
            {
                ["sandboxes"] = sandboxes.Count,
                ["answering"] = answering,
                ["guestMemoryMiB"] = guestMiB,
                ["createSeconds"] = Math.Round(createSeconds, 1),
                ["hostMiBPerSandbox"] = Math.Round(perSandbox, 2),
                ["qemuPssMiB"] = Summary(P),
                ["guestTouchedMiB"] = Summary(S),
                ["qemuOwnMiB"] = Summary(O),
                ["qemuRssMiB"] = Summary(R),
                ["samples"] = new JsonObject { ["pss"] = Samples(pss), ["guestTouched"] = Samples(shmem), ["qemuOwn"] = Samples(own) },
            };
        }
        finally
        {
            foreach (var sandbox in sandboxes)
                await bench.Manager.DeleteAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
        }
    }

    /// <summary>
    /// Like for like: QEMU started by hand with exactly the command line Moat gave a sandbox's QEMU
    /// (same kernel, initramfs and agent, template disk, a copy of the formatted scratch volume, the
    /// virtio-serial channel, -sandbox, -runas/-chroot, memfd RAM, TCG cache) but none of Moat's
    /// work around it (no cgroup, namespaces, launcher, QMP watch, network, database), and the
    /// agent client connected straight to its socket to run `python3 -c pass` — against Moat's
    /// create → the same command's result, alternating in one run.
    /// </summary>
    public static async Task<JsonObject> BootAsync(Bench bench, int n)
    {
        string[] command = ["python3", "-c", "pass"];
        var template = await bench.Manager.CreateAsync(bench.Spec(), Bench.Tenant, CancellationToken.None);
        var record = await bench.Manager.GetAsync(template.Id, Bench.Tenant, CancellationToken.None);
        var instance = record.Instance ?? throw new InvalidOperationException("the sandbox has no instance");
        var argv = File.ReadAllText($"/proc/{instance.Pid}/cmdline").Split('\0', StringSplitOptions.RemoveEmptyEntries);
        var work = Path.Combine(bench.DataDirectory, "rawboot");
        Directory.CreateDirectory(work);
        var scratch = (Moat.Storage.Rootfs.ScratchVolumes)bench.Services.GetService(typeof(Moat.Storage.Rootfs.ScratchVolumes))!;
        await bench.Manager.DeleteAsync(template.Id, Bench.Tenant, CancellationToken.None);
        var loggers = (Microsoft.Extensions.Logging.ILoggerFactory)bench.Services.GetService(typeof(Microsoft.Extensions.Logging.ILoggerFactory))!;

        var raw = new List<double>();
        var moat = new List<double>();
        for (int i = -1; i < n; i++)
        {
            var dir = Path.Combine(work, $"run{i + 1}");
            Directory.CreateDirectory(Path.Combine(dir, "vm", "jail"));
            var args = argv.Skip(1).Select(a => a.Replace(instance.Directory, dir, StringComparison.Ordinal)).ToList();
            var clock = Stopwatch.StartNew();
            // A fresh scratch volume made the way Moat makes one (a copy of a cached formatted image).
            await scratch.CreateAsync(Path.Combine(dir, "vm", "scratch.img"), bench.Spec().Resources.DiskMiB, CancellationToken.None);
            var psi = new ProcessStartInfo(argv[0]) { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var a in args)
                psi.ArgumentList.Add(a);
            using (var qemu = Process.Start(psi)!)
            {
                try
                {
                    var socket = Path.Combine(dir, "vm", "agent.sock");
                    // As Moat does: connect once the guest's agent opened its port (QMP's VSERPORT_CHANGE).
                    await WaitForAgentPortAsync(Path.Combine(dir, "vm", "qmp.sock")).WaitAsync(TimeSpan.FromMinutes(2));
                    await using var agent = await Moat.Core.Agent.AgentClient.ConnectAsync(socket, new Moat.Core.Agent.AgentClientOptions { HandshakeTimeout = TimeSpan.FromMinutes(2) },
                        loggers.CreateLogger("rawboot"), null, null, CancellationToken.None);
                    var request = new Moat.Protocol.Messages.ExecRequest { Cwd = "/", User = "root" };
                    request.Argv.AddRange(command);
                    await using var process = await agent.ExecAsync(request, CancellationToken.None);
                    var exit = await process.Exit;
                    if (exit.ExitCode != 0)
                        throw new InvalidOperationException($"raw: python3 -c pass exited {exit.ExitCode}");
                    if (i >= 0)
                        raw.Add(clock.Elapsed.TotalMilliseconds);
                }
                finally
                {
                    qemu.Kill(true);
                    await qemu.WaitForExitAsync();
                }
            }
            Directory.Delete(dir, true);

            clock.Restart();
            var sandbox = await bench.Manager.CreateAsync(bench.Spec(), Bench.Tenant, CancellationToken.None);
            var result = await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, new CommandSpec { Argv = command }, default, CancellationToken.None);
            double total = clock.Elapsed.TotalMilliseconds;
            await bench.Manager.DeleteAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
            if (result.Exit.ExitCode != 0)
                throw new InvalidOperationException("python3 -c pass failed in the microVM");
            if (i >= 0)
                moat.Add(total);
            Console.WriteLine($"round {i + 1}: raw {(i >= 0 ? raw[^1] : 0):0} ms, moat {total:0} ms");
        }
        var r = Stats.Of(raw);
        var m = Stats.Of(moat);
        Console.WriteLine($"raw QEMU, Moat's own command line, agent client direct → python3 -c pass: {r}");
        Console.WriteLine($"moat create → python3 -c pass: {m}");
        Console.WriteLine($"ratio p50: {m.P50 / r.P50:0.00}x");
        return new JsonObject
        {
            ["command"] = string.Join(' ', command),
            ["rawCommand"] = string.Join(' ', argv),
            ["raw"] = Summary(r),
            ["moat"] = Summary(m),
            ["ratioP50"] = Math.Round(m.P50 / r.P50, 3),
            ["samples"] = new JsonObject { ["raw"] = Samples(raw), ["moat"] = Samples(moat) },
        };
    }

    private static async Task WaitForAgentPortAsync(string qmpSocket)
    {
        while (!File.Exists(qmpSocket))
            await Task.Delay(1);
        using var qmp = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        await qmp.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(qmpSocket));
        await using var stream = new System.Net.Sockets.NetworkStream(qmp);
        using var reader = new StreamReader(stream);
        await reader.ReadLineAsync(); // greeting
        await stream.WriteAsync("{\"execute\":\"qmp_capabilities\"}\n"u8.ToArray());
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.Contains("VSERPORT_CHANGE", StringComparison.Ordinal) && line.Contains("\"open\": true", StringComparison.Ordinal))
                return;
        }
        throw new InvalidOperationException("QEMU closed QMP before the agent's port opened");
    }

    /// <summary>The "Key: N kB" lines of a /proc file, in KiB.</summary>
    private static Dictionary<string, long> Fields(string file)
    {
        var fields = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var line in File.ReadLines(file))
        {
            int colon = line.IndexOf(':');
            if (colon <= 0)
                continue;
            var value = line[(colon + 1)..].Trim().Split(' ')[0];
            if (long.TryParse(value, out long kib))
                fields[line[..colon].Trim()] = kib;
        }
        return fields;
    }
}
