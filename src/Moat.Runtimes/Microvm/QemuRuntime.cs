using System.Collections.Concurrent;
using System.Globalization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Errors;
using Moat.Core.Host;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Runtimes.Cgroups;
using Moat.Runtimes.Oci;
using Moat.Storage.Rootfs;

namespace Moat.Runtimes.Microvm;

/// <summary>
/// The microVM tier: each sandbox is a QEMU <c>-M microvm</c> guest with its own kernel. The
/// guest boots Moat's initramfs (the agent is its init), whose root is the template's shared
/// read-only ext4 image under an overlay on the sandbox's own scratch volume; the agent talks
/// over a virtio-serial port whose host end is a Unix socket QEMU listens on. A network device
/// (virtio-net on a tap in the sandbox's network namespace) only when the policy needs one.
/// QEMU is confined the way Firecracker's jailer confines its VMM: its own cgroup (joined before
/// it starts), its seccomp sandbox, no monitor but Moat's QMP socket, an unprivileged user and an
/// empty chroot once it has opened its files, and network, IPC and UTS namespaces of its own.
/// KVM where a test boot shows it works; otherwise TCG, which is slow and not a security boundary.
/// </summary>
public sealed partial class QemuRuntime : ISandboxRuntime, IAsyncDisposable
{
    private const string Kvm = "kvm", Tcg = "tcg";
    /// <summary>The sandbox's memory limit (its commands' cgroup in the guest), kept with the instance.</summary>
    private const string MemoryLimitProperty = "memory_limit_bytes";
    private readonly ProcessRunner _runner;
    private readonly ScratchVolumes _scratch;
    private readonly QemuOptions _options;
    private readonly SandboxManagerOptions _manager;
    private readonly ILogger<QemuRuntime> _logger;
    private readonly TemplateDisks _disks;
    private readonly ConcurrentDictionary<string, QemuMachine> _machines = new();
    private readonly ConcurrentDictionary<string, string> _exitReports = new();
    private readonly SemaphoreSlim _probeLock = new(1, 1);
    private readonly SemaphoreSlim _boots;
    private Prepared? _prepared;

    /// <summary>What a probe established: the kernel, the initramfs built for it, the accelerator.</summary>
    private sealed record Prepared(GuestKernel Kernel, string Initramfs, string Accelerator, string Note);

    /// <summary>Creates the runtime; nothing is probed or built until asked.</summary>
    public QemuRuntime(ProcessRunner runner, ScratchVolumes scratch, IOptions<QemuOptions> options, IOptions<SandboxManagerOptions> manager, ILogger<QemuRuntime> logger)
    {
        _runner = runner;
        _scratch = scratch;
        _options = options.Value;
        _manager = manager.Value;
        _logger = logger;
        _disks = new TemplateDisks(CacheDirectory, runner);
        int boots = _options.ConcurrentBoots > 0 ? _options.ConcurrentBoots : Math.Max(2, Environment.ProcessorCount);
        _boots = new SemaphoreSlim(boots, boots);
    }

    /// <inheritdoc />
    public IsolationTier Tier => IsolationTier.Microvm;

    /// <inheritdoc />
    /// <remarks>
    /// With network mode allow or open the guest gets a virtio-net NIC on a tap device bridged to
    /// the sandbox's link: it takes the link's address, so the gateway's rules for that address, the
    /// egress proxy, the resolver and the limits apply to it exactly as to the other tiers.
    /// </remarks>
    public bool NeedsTapDevice => true;

    private string CacheDirectory => !string.IsNullOrEmpty(_options.ImageCache) ? _options.ImageCache : Path.Combine(_manager.DataDirectory, "cache", "microvm");

    private string KernelImage
    {
        get
        {
            if (!string.IsNullOrEmpty(_options.Kernel))
                return _options.Kernel;
            // Not configured: the kernel next to the installation's artifacts (see build/kernel.sh).
            var dir = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(_manager.AgentDirectory.TrimEnd('/')))!, "kernel");
            return File.Exists(Path.Combine(dir, "vmlinux")) ? Path.Combine(dir, "vmlinux") : Path.Combine(dir, "vmlinuz");
        }
    }

    /// <summary>
    /// Why a sandbox's guest stopped, as its console showed it (a kernel panic, the agent's last
    /// words), for sandboxes that ended recently; null when nothing is known.
    /// </summary>
    public string? DescribeExit(string sandboxId) => _exitReports.TryGetValue(sandboxId, out var report) ? report : null;

    // ---- probe ----

    /// <inheritdoc />
    public async Task<TierStatus> ProbeAsync(CancellationToken cancellationToken)
    {
        await _probeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var details = new Dictionary<string, string>();
            var (prepared, problem) = await PrepareAsync(details, cancellationToken).ConfigureAwait(false);
            _prepared = prepared;
            return prepared is null
                ? new TierStatus(Tier, false, problem!, details)
                : new TierStatus(Tier, true, prepared.Note, details);
        }
        finally
        {
            _probeLock.Release();
        }
    }

    private async Task<(Prepared?, string?)> PrepareAsync(Dictionary<string, string> details, CancellationToken cancellationToken)
    {
        if (Environment.UserName != "root")
            return (null, $"moat must run as root to drive {_options.Binary}");
        HostCommandResult version;
        try
        {
            version = await _runner.RunAsync(_options.Binary, ["--version"], new HostCommandOptions { Timeout = TimeSpan.FromSeconds(10) }, cancellationToken).ConfigureAwait(false);
        }
        catch (MoatException ex)
        {
            return (null, $"{_options.Binary} is not installed ({ex.Message})");
        }
        var words = version.Stdout.Split('\n')[0].Split(' ');
        details["qemu"] = words.Length > 3 ? words[3] : version.Stdout.Trim();
        if (OciBundleRuntime.AgentProblem(_manager.AgentDirectory) is { } agentProblem)
            return (null, agentProblem);
        GuestKernel kernel;
        string initramfs;
        try
        {
            kernel = GuestKernel.Resolve(KernelImage, _options.KernelModules);
            details["kernel"] = kernel.Release;
            initramfs = GuestInitramfs.Ensure(CacheDirectory, _manager.AgentDirectory, kernel);
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException or InvalidDataException or UnauthorizedAccessException or NotSupportedException)
        {
            return (null, $"no usable guest kernel: {ex.Message}");
        }
        if (!await CommandWorksAsync("mkfs.ext4", ["-V"], cancellationToken).ConfigureAwait(false))
            return (null, "mkfs.ext4 (e2fsprogs) is needed to make the templates' disk images");
        if (!await CommandWorksAsync("unshare", ["--version"], cancellationToken).ConfigureAwait(false) || !await CommandWorksAsync("setsid", ["--version"], cancellationToken).ConfigureAwait(false))
            return (null, "unshare and setsid (util-linux) are needed to start QEMU in namespaces of its own");
        var user = VmmUser();
        details["vmm_user"] = user ?? "root";

        string accelerator, why;
        if (_options.Accelerator is Tcg)
        {
            accelerator = Tcg;
            why = "Moat:Qemu:Accelerator=tcg";
        }
        else if (!File.Exists("/dev/kvm"))
        {
            if (_options.Accelerator is Kvm)
                return (null, "Moat:Qemu:Accelerator=kvm but this host has no /dev/kvm");
            accelerator = Tcg;
            why = "this host has no /dev/kvm";
        }
        else
        {
            var kvm = await BootProbeAsync(Kvm, kernel, initramfs, cancellationToken).ConfigureAwait(false);
            if (kvm is null)
            {
                accelerator = Kvm;
                why = "";
            }
            else if (_options.Accelerator is Kvm)
                return (null, $"Moat:Qemu:Accelerator=kvm but a guest does not boot with KVM here: {kvm}");
            else
            {
                accelerator = Tcg;
                why = $"a test guest did not boot with KVM ({kvm})";
            }
        }
        if (accelerator == Tcg && await BootProbeAsync(Tcg, kernel, initramfs, cancellationToken).ConfigureAwait(false) is { } tcgProblem)
            return (null, $"a test guest did not boot even with TCG: {tcgProblem}");
        details["accelerator"] = accelerator;
        string note = accelerator == Kvm
            ? $"own guest kernel (Linux {kernel.Release}) on KVM"
            : $"own guest kernel (Linux {kernel.Release}) emulated with TCG because {why}: slow (boots take seconds, code runs several times slower) and not a security boundary (QEMU does not treat TCG as one); prefer gvisor for hostile code on this host";
        if (user is null)
            note += $"; QEMU keeps root: user '{_options.User}' does not exist (build/setup.sh creates it)";
        return (new Prepared(kernel, initramfs, accelerator, note), null);
    }

    /// <summary>
    /// Boots the real kernel and initramfs with <paramref name="accelerator"/> to an agent that only
    /// says it is alive and powers off. Null when that worked, else why not. A KVM that cannot run
    /// a standard guest (this host's nested PVM) hangs instead of failing, hence the short timeout.
    /// Verdicts are cached per QEMU, guest kernel, initramfs and host kernel until reboot.
    /// </summary>
    private async Task<string?> BootProbeAsync(string accelerator, GuestKernel kernel, string initramfs, CancellationToken cancellationToken)
    {
        const string cacheDir = "/run/moat/probes";
        Directory.CreateDirectory(cacheDir);
        var qemu = new FileInfo(Which(_options.Binary));
        var line = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(GuestCommandLineBase(accelerator))))[..8];
        var key = $"{(qemu.Exists ? qemu.LastWriteTimeUtc.Ticks : 0):x}-{kernel.Stamp()}-{Path.GetFileNameWithoutExtension(initramfs)}-{line}-{File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}";
        var cache = Path.Combine(cacheDir, $"qemu-{accelerator}.{key}");
        if (File.Exists(cache))
        {
            var verdict = File.ReadAllText(cache).Trim();
            return verdict == "ok" ? null : verdict;
        }
        string? problem;
        try
        {
            var result = await _runner.RunAsync(_options.Binary,
                ["-M", "microvm", "-accel", accelerator, "-cpu", accelerator == Kvm ? "host" : "max", "-m", "160", "-smp", "1",
                 "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
                 "-kernel", kernel.Image, "-initrd", initramfs, "-append", $"{GuestCommandLineBase(accelerator)} -- --vm --probe"],
                new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(accelerator == Kvm ? 15 : 90) }, cancellationToken).ConfigureAwait(false);
            problem = result.ExitCode == 0 && result.Stdout.Contains("moat-agent: probe ok", StringComparison.Ordinal) ? null
                : $"qemu exited {result.ExitCode}: {Tail(result.Stderr.Length > 0 ? result.Stderr : result.Stdout)}";
        }
        catch (MoatException ex) when (ex.Code == "host_command_timeout")
        {
            problem = "the guest hung";
        }
        LogBootProbe(_logger, accelerator, problem ?? "ok");
        await File.WriteAllTextAsync(cache, problem ?? "ok", CancellationToken.None).ConfigureAwait(false);
        return problem;
    }

    private async Task<bool> CommandWorksAsync(string program, IReadOnlyList<string> args, CancellationToken cancellationToken)
    {
        try
        {
            var r = await _runner.RunAsync(program, args, new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(10) }, cancellationToken).ConfigureAwait(false);
            return r.ExitCode == 0;
        }
        catch (MoatException)
        {
            return false;
        }
    }

    private async Task<Prepared> EnsurePreparedAsync(CancellationToken cancellationToken)
    {
        if (_prepared is { } ready)
            return ready;
        var status = await ProbeAsync(cancellationToken).ConfigureAwait(false);
        return _prepared ?? throw new MoatException(ErrorKind.Unavailable, "tier_unavailable", $"isolation tier 'microvm' is not available on this host: {status.Reason}");
    }

    // ---- start ----

    /// <inheritdoc />
    public async Task<RuntimeInstance> StartAsync(SandboxLaunch launch, CancellationToken cancellationToken)
    {
        var paths = new VmPaths(launch.Directory);
        if (paths.AgentSocket.Length > 107 || paths.Qmp.Length > 107)
            throw new MoatException(ErrorKind.Unavailable, "data_directory_too_deep", $"the VM sockets under {paths.Vm} would be longer than a Unix socket path may be (107); use a shorter Moat:DataDirectory");
        var prepared = await EnsurePreparedAsync(cancellationToken).ConfigureAwait(false);
        var cgroupPath = $"{_options.CgroupParent}/{launch.Id}";
        var instance = new RuntimeInstance
        {
            Tier = Tier,
            ContainerId = launch.Id,
            Directory = launch.Directory,
            AgentSocket = paths.AgentSocket,
            Properties = new Dictionary<string, string>
            {
                ["cgroup"] = cgroupPath,
                ["accelerator"] = prepared.Accelerator,
                [MemoryLimitProperty] = ((long)launch.Resources.MemoryMiB << 20).ToString(CultureInfo.InvariantCulture),
            },
        };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            // The initramfs is rebuilt when the agent was rebuilt since the probe.
            var initramfs = GuestInitramfs.Ensure(CacheDirectory, _manager.AgentDirectory, prepared.Kernel);
            var disk = await _disks.EnsureAsync(launch.Template, cancellationToken).ConfigureAwait(false);
            double images = clock.Elapsed.TotalMilliseconds;
            Directory.CreateDirectory(paths.Vm, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            Directory.CreateDirectory(paths.Jail);
            await _scratch.CreateAsync(paths.Scratch, launch.Resources.DiskMiB, cancellationToken).ConfigureAwait(false);

            var r = launch.Resources;
            int guestMiB = r.MemoryMiB + _options.GuestOverheadMiB;
            int hostMiB = guestMiB + _options.VmmOverheadMiB + (prepared.Accelerator == Tcg ? _options.TcgCacheMiB : 0);
            var cgroup = CgroupHierarchy.At(cgroupPath);
            // QEMU's threads (vCPUs, I/O workers) are what counts here, not the guest's processes.
            cgroup.Create((long)hostMiB << 20, r.Cpus, 512);

            var args = QemuArguments(launch, paths, prepared, initramfs, disk, guestMiB);
            int pid = await LaunchAsync(paths, cgroup, args, cancellationToken).ConfigureAwait(false);
            instance = instance with { Pid = pid, AgentPid = pid };
            var machine = await QemuMachine.AttachAsync(launch.Id, paths, _logger, cancellationToken).ConfigureAwait(false);
            _machines[launch.Id] = machine;
            double launched = clock.Elapsed.TotalMilliseconds;

            var timeout = TimeSpan.FromSeconds(_options.BootTimeoutSeconds > 0 ? _options.BootTimeoutSeconds : _manager.AgentStartTimeoutSeconds);
            using var boot = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            boot.CancelAfter(timeout);
            var first = await Task.WhenAny(machine.AgentPortOpened, machine.Stopped, Task.Delay(Timeout.Infinite, boot.Token)).ConfigureAwait(false);
            if (first != machine.AgentPortOpened)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (first == machine.Stopped)
                    throw new MoatException(ErrorKind.Internal, "sandbox_boot_failed", $"the microVM of sandbox {launch.Id} stopped while booting: {await machine.Stopped.ConfigureAwait(false)}");
                string console = await ConsoleTailAsync(machine).ConfigureAwait(false);
                throw new MoatException(ErrorKind.Timeout, "sandbox_start_timeout", $"the microVM of sandbox {launch.Id} did not start its agent within {timeout.TotalSeconds:0} s{console}");
            }
            LogStarted(_logger, launch.Id, prepared.Accelerator, images, launched - images, clock.Elapsed.TotalMilliseconds - launched);
            return instance;
        }
        catch (Exception ex) when (ex is IOException or System.Net.Sockets.SocketException or QmpException && !cancellationToken.IsCancellationRequested)
        {
            // QEMU went away under us: what it said on its way out is the reason.
            var log = ReadLog(paths);
            await DestroyAsync(instance, CancellationToken.None).ConfigureAwait(false);
            throw new MoatException(ErrorKind.Internal, "sandbox_boot_failed", $"QEMU of sandbox {launch.Id} failed ({ex.Message}): {Tail(log)}", ex);
        }
        catch
        {
            await DestroyAsync(instance, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// A boot is CPU-bound (under TCG, seconds of it): admitting a few at a time lets each finish
    /// quickly instead of all crawling together past their deadline, and the boot timeout then
    /// measures the guest rather than the queue before it.
    /// </remarks>
    public async Task<IDisposable?> AdmitStartAsync(CancellationToken cancellationToken)
    {
        await _boots.WaitAsync(cancellationToken).ConfigureAwait(false);
        return new BootSlot(_boots);
    }

    /// <summary>One admitted boot; disposing it (once) lets the next one in.</summary>
    private sealed class BootSlot(SemaphoreSlim boots) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0)
                return;
            try
            {
                boots.Release();
            }
            catch (ObjectDisposedException)
            {
                // The runtime shut down while this boot was in flight: nobody waits any more.
            }
        }
    }

    private static async Task<string> ConsoleTailAsync(QemuMachine machine)
    {
        try
        {
            var lines = (await machine.ReadConsoleAsync(CancellationToken.None).ConfigureAwait(false)).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            return lines.Length == 0 ? " (the console is empty)" : "; console: " + string.Join(" | ", lines.TakeLast(3)).Trim();
        }
        catch (Exception ex) when (ex is IOException or QmpException or MoatException or FormatException)
        {
            return "";
        }
    }

    private List<string> QemuArguments(SandboxLaunch launch, VmPaths paths, Prepared prepared, string initramfs, string disk, int guestMiB)
    {
        var r = launch.Resources;
        var hostname = IsHostname(launch.Hostname) ? launch.Hostname : "sandbox";
        string append = $"{GuestCommandLineBase(prepared.Accelerator)} -- --vm --listen virtio:moat.agent --hostname {hostname}"
            + $" --memory-mib {r.MemoryMiB} --pids {r.Pids} --nofile {r.OpenFiles}";
        var tap = launch.Network is not null ? launch.Tap ?? throw new MoatException(ErrorKind.Internal, "network_attach_failed", $"sandbox {launch.Id} has a network but no tap device for its VM") : null;
        if (tap is not null)
            append += $" --net {tap.Address}/{tap.PrefixLength},{tap.Gateway},{tap.Dns},{tap.Mtu}";
        var user = VmmUser();
        // QEMU runs in network, IPC and UTS namespaces of its own; with a NIC, in the sandbox's
        // network namespace, where the tap device is (it opens it before dropping root).
        var args = tap is null
            ? new List<string> { "unshare", "--net", "--ipc", "--uts", "--" }
            : new List<string> { "nsenter", $"--net={tap.NamespacePath}", "unshare", "--ipc", "--uts", "--" };
        args.AddRange(new List<string>
        {
            Which(_options.Binary),
            "-name", $"moat-{launch.Id},debug-threads=on",
            "-machine", "microvm,memory-backend=mem",
            // memfd rather than anonymous memory: QEMU asks for transparent huge pages on anonymous
            // guest RAM, which turns every page the guest touches into 2 MiB of host memory.
            "-object", $"memory-backend-memfd,id=mem,size={guestMiB}M,share=on",
            "-accel", prepared.Accelerator == Kvm ? "kvm" : $"tcg,tb-size={_options.TcgCacheMiB},split-wx=on",
            "-cpu", prepared.Accelerator == Kvm ? "host" : "max",
            "-smp", ((int)Math.Ceiling(r.Cpus)).ToString(CultureInfo.InvariantCulture),
            "-m", $"{guestMiB}M",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-kernel", prepared.Kernel.Image, "-initrd", initramfs, "-append", append,
            "-drive", $"id=root,file={Escape(disk)},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root,serial=moat-root",
            "-drive", $"id=scratch,file={Escape(paths.Scratch)},format=raw,if=none,discard=unmap,detect-zeroes=unmap",
            "-device", "virtio-blk-device,drive=scratch,serial=moat-scratch",
            "-device", "virtio-serial-device,max_ports=2",
            "-chardev", $"socket,id=agent,path={Escape(paths.AgentSocket)},server=on,wait=off",
            "-device", $"virtserialport,chardev=agent,name=moat.agent,id={QemuMachine.AgentPortId}",
            "-chardev", $"ringbuf,id={QemuMachine.ConsoleId},size={ConsoleSize()}",
            "-serial", $"chardev:{QemuMachine.ConsoleId}",
            "-qmp", $"unix:{Escape(paths.Qmp)},server=on,wait=off",
            // The guest stopping pauses QEMU (console intact) instead of ending it; Moat then quits it.
            "-action", "reboot=shutdown,shutdown=pause",
            // Set-uid calls stay allowed: QEMU needs them for -runas after the filter is in place
            // (QEMU 7.2 installs it first), and with every id and capability dropped they grant nothing.
            "-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
            "-pidfile", paths.PidFile,
        });
        if (tap is not null)
        {
            args.AddRange(["-netdev", $"tap,id=net0,ifname={tap.Name},script=no,downscript=no",
                "-device", $"virtio-net-device,netdev=net0,mac={tap.Mac}"]);
        }
        if (user is not null)
            args.AddRange(["-runas", user, "-chroot", paths.Jail]);
        return args;
    }

    /// <summary>The guest kernel's own parameters (before the agent's <c>--</c>).</summary>
    private string GuestCommandLineBase(string accelerator)
    {
        // panic=-1 reboots at once on a panic (oops=panic makes every oops one), which QEMU turns
        // into a pause: the console keeps the reason. pci=off: microvm has no PCI bus.
        // lockdown: even a root that regained capabilities could not reach devices, MSRs or
        // kernel memory from user space, nor load unsigned modules.
        var line = "console=ttyS0 quiet panic=-1 oops=panic pci=off random.trust_cpu=on lockdown=confidentiality";
        // Under TCG the guest's TSC calibration against the PIT fails now and then, and a guest
        // without a TSC frequency hangs at boot: tell it the host's (TCG's TSC is the host's).
        if (accelerator == Tcg && TscKhz() is int khz and > 0)
            line += $" tsc_early_khz={khz}";
        return line;
    }

    private int ConsoleSize()
    {
        int size = 4096;
        while (size < _options.ConsoleBytes && size < (1 << 24))
            size <<= 1;
        return size;
    }

    private int TscKhz()
    {
        if (_options.TscKhz > 0)
            return _options.TscKhz;
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
            {
                if (line.StartsWith("cpu MHz", StringComparison.Ordinal) && double.TryParse(line[(line.IndexOf(':') + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out double mhz))
                    return (int)Math.Round(mhz * 1000);
            }
        }
        catch (IOException)
        {
        }
        return 0;
    }

    /// <summary>
    /// Starts QEMU inside the VM's cgroup from its first instruction: a launcher shell writes its
    /// pid and stops itself; Moat moves it into the cgroup and lets it go on; it then execs
    /// (with an empty environment, in a new session, detached from Moat so that the VM survives a
    /// server restart) unshare and QEMU. Returns QEMU's pid once its QMP socket exists.
    /// </summary>
    private async Task<int> LaunchAsync(VmPaths paths, ICgroup cgroup, List<string> qemuArgs, CancellationToken cancellationToken)
    {
        File.Delete(paths.LauncherPidFile);
        File.Delete(paths.PidFile);
        const string script = "echo $$ > \"$0\" && kill -STOP $$ && log=\"$1\" && shift && exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin setsid -f \"$@\" </dev/null >/dev/null 2>>\"$log\"";
        var run = _runner.RunAsync("/bin/sh", ["-c", script, paths.LauncherPidFile, paths.Log, .. qemuArgs],
            new HostCommandOptions { Timeout = TimeSpan.FromSeconds(30) }, cancellationToken);
        int launcher = 0;
        try
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (launcher == 0 || ProcessState(launcher) != 'T')
            {
                if (run.IsCompleted)
                    await run.ConfigureAwait(false); // failed before stopping: surfaces the error
                if (DateTime.UtcNow > deadline)
                    throw new MoatException(ErrorKind.Internal, "vmm_launch_failed", "the QEMU launcher did not start");
                await Task.Delay(1, cancellationToken).ConfigureAwait(false);
                if (launcher == 0 && File.Exists(paths.LauncherPidFile) && int.TryParse(File.ReadAllText(paths.LauncherPidFile).Trim(), out int p))
                    launcher = p;
            }
            cgroup.Add(launcher);
            Linux.Kill(launcher, 18 /* SIGCONT */);
            await run.ConfigureAwait(false);
        }
        catch
        {
            if (launcher > 0)
                Linux.Kill(launcher, 9);
            throw;
        }

        var started = DateTime.UtcNow;
        while (true)
        {
            if (File.Exists(paths.PidFile) && int.TryParse(File.ReadAllText(paths.PidFile).Trim(), out int pid) && pid > 0 && File.Exists(paths.Qmp))
                return pid;
            if (DateTime.UtcNow - started > TimeSpan.FromSeconds(2) && cgroup.Processes().Count == 0)
                throw new MoatException(ErrorKind.Internal, "vmm_launch_failed", $"QEMU exited at start-up: {Tail(ReadLog(paths))}");
            if (DateTime.UtcNow - started > TimeSpan.FromSeconds(20))
                throw new MoatException(ErrorKind.Timeout, "vmm_launch_failed", $"QEMU did not create its QMP socket within 20 s: {Tail(ReadLog(paths))}");
            await Task.Delay(2, cancellationToken).ConfigureAwait(false);
        }
    }

    // ---- inspect, destroy, usage ----

    /// <inheritdoc />
    public async Task<InstanceStatus> InspectAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var paths = new VmPaths(instance.Directory);
        int? pid = instance.Pid ?? ReadPid(paths);
        if (pid is not { } p || !IsOurQemu(p, paths))
            return Directory.Exists(paths.Vm) ? InstanceStatus.Stopped : InstanceStatus.Missing;
        var machine = await MachineAsync(instance, paths, cancellationToken).ConfigureAwait(false);
        if (machine is null)
            return InstanceStatus.Running; // alive but its QMP socket is busy or slow: do not call it dead
        if (machine.Stopped.IsCompleted)
            return InstanceStatus.Stopped;
        try
        {
            return await machine.StatusAsync(cancellationToken).ConfigureAwait(false) switch
            {
                "running" => InstanceStatus.Running,
                "paused" => InstanceStatus.Paused,
                "shutdown" or "guest-panicked" or "internal-error" or "io-error" => InstanceStatus.Stopped,
                _ => InstanceStatus.Running,
            };
        }
        catch (Exception ex) when (ex is IOException or QmpException or MoatException)
        {
            return IsOurQemu(p, paths) ? InstanceStatus.Running : InstanceStatus.Stopped;
        }
    }

    /// <summary>The live QMP view of a VM, attaching one after a server restart.</summary>
    private async Task<QemuMachine?> MachineAsync(RuntimeInstance instance, VmPaths paths, CancellationToken cancellationToken)
    {
        if (_machines.TryGetValue(instance.ContainerId, out var machine))
            return machine;
        try
        {
            machine = await QemuMachine.AttachAsync(instance.ContainerId, paths, _logger, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or System.Net.Sockets.SocketException or MoatException)
        {
            return null;
        }
        if (!_machines.TryAdd(instance.ContainerId, machine))
        {
            await machine.DisposeAsync().ConfigureAwait(false);
            return _machines.GetValueOrDefault(instance.ContainerId);
        }
        // A guest that stopped while no server watched is still paused: its reason is on its console.
        try
        {
            if (await machine.StatusAsync(cancellationToken).ConfigureAwait(false) == "shutdown")
                Remember(instance.ContainerId, QemuMachine.Describe("", await machine.ReadConsoleAsync(cancellationToken).ConfigureAwait(false)));
        }
        catch (Exception ex) when (ex is IOException or QmpException or MoatException)
        {
        }
        return machine;
    }

    /// <inheritdoc />
    /// <remarks>
    /// QMP <c>stop</c>: the vCPUs halt and the guest's clock with them, so no guest code runs and
    /// QEMU's cgroup gets no CPU for it; guest RAM, the page cache and the disks stay as they are.
    /// QEMU itself keeps serving QMP (and the agent's socket, whose data waits until resume).
    /// </remarks>
    public async Task PauseAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var machine = await RunningMachineAsync(instance, cancellationToken).ConfigureAwait(false);
        await machine.StopAsync(cancellationToken).ConfigureAwait(false);
        if (await machine.StatusAsync(cancellationToken).ConfigureAwait(false) is var status and not "paused")
            throw new MoatException(ErrorKind.Internal, "pause_failed", $"the microVM of sandbox {instance.ContainerId} is '{status}' after QMP stop, not paused");
    }

    /// <inheritdoc />
    public async Task ResumeAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var machine = await RunningMachineAsync(instance, cancellationToken).ConfigureAwait(false);
        // A guest that powered off while paused (status "shutdown") must not be continued.
        if (await machine.StatusAsync(cancellationToken).ConfigureAwait(false) is var status and not ("paused" or "running"))
            throw new MoatException(ErrorKind.Conflict, "sandbox_not_running", $"the microVM of sandbox {instance.ContainerId} is '{status}' and cannot resume");
        await machine.ContinueAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task<QemuMachine> RunningMachineAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var paths = new VmPaths(instance.Directory);
        if (instance.Pid is not { } pid || !IsOurQemu(pid, paths))
            throw new MoatException(ErrorKind.Conflict, "sandbox_not_running", $"the microVM of sandbox {instance.ContainerId} is not running");
        var machine = await MachineAsync(instance, paths, cancellationToken).ConfigureAwait(false);
        if (machine is null || machine.Stopped.IsCompleted)
            throw new MoatException(ErrorKind.Unavailable, "vmm_unreachable", $"the QMP monitor of sandbox {instance.ContainerId}'s microVM does not answer");
        return machine;
    }

    /// <inheritdoc />
    public async Task DestroyAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var paths = new VmPaths(instance.Directory);
        var cgroup = CgroupHierarchy.At(instance.Properties.TryGetValue("cgroup", out var c) ? c : $"{_options.CgroupParent}/{instance.ContainerId}");
        _machines.TryRemove(instance.ContainerId, out var machine);
        try
        {
            if (machine is not null && machine.Stopped.IsCompleted && await machine.Stopped.ConfigureAwait(false) is { } report && report != "detached" && report != "QEMU exited")
                Remember(instance.ContainerId, report);
            int? pid = instance.Pid ?? ReadPid(paths);
            if (pid is { } p && IsOurQemu(p, paths))
            {
                if (machine is not null)
                {
                    try
                    {
                        await machine.QuitAsync(cancellationToken).ConfigureAwait(false);
                    }
                    catch (Exception ex) when (ex is IOException or QmpException or MoatException)
                    {
                    }
                }
                if (!await ExitedAsync(p, paths, TimeSpan.FromSeconds(machine is null ? 0 : 3), cancellationToken).ConfigureAwait(false))
                {
                    Linux.Kill(p, 9);
                    await ExitedAsync(p, paths, TimeSpan.FromSeconds(5), cancellationToken).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            if (machine is not null)
                await machine.DisposeAsync().ConfigureAwait(false);
        }
        // Whatever else is in the VM's cgroup (a launcher, a half-started QEMU) goes too.
        for (int attempt = 0; cgroup.Exists(); attempt++)
        {
            foreach (var leftover in cgroup.Processes())
                Linux.Kill(leftover, 9);
            try
            {
                cgroup.Remove();
            }
            catch (IOException ex) when (attempt < 100)
            {
                _ = ex; // busy until the killed processes are gone
                await Task.Delay(20, CancellationToken.None).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                LogDestroyFailed(_logger, instance.ContainerId, $"cgroup {cgroup.Path}: {ex.Message}");
                break;
            }
        }
        try
        {
            if (Directory.Exists(paths.Vm))
                Directory.Delete(paths.Vm, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            LogDestroyFailed(_logger, instance.ContainerId, ex.Message);
        }
    }

    /// <inheritdoc />
    public Task<HostUsage?> ReadUsageAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var cgroup = CgroupHierarchy.At(instance.Properties.TryGetValue("cgroup", out var c) ? c : $"{_options.CgroupParent}/{instance.ContainerId}");
        if (!cgroup.Exists())
            return Task.FromResult<HostUsage?>(null);
        var (current, peak, limit) = cgroup.Memory();
        var scratch = new VmPaths(instance.Directory).Scratch;
        long allocated = 0, size = 0;
        try
        {
            // The guest's filesystem is out of the host's sight; what the host can measure is how
            // much of the sparse volume the guest has filled (discarded blocks are punched out).
            allocated = Linux.AllocatedBytes(scratch);
            size = new FileInfo(scratch).Length;
        }
        catch (IOException)
        {
        }
        return Task.FromResult<HostUsage?>(new HostUsage
        {
            CpuTime = cgroup.CpuTime(),
            MemoryBytes = current,
            MemoryPeakBytes = peak,
            MemoryLimitBytes = limit,
            OomKills = cgroup.OomKills(),
            Pids = cgroup.Pids(),
            PidsLimitHits = cgroup.PidsLimitHits(),
            DiskUsedBytes = Math.Min(allocated, size),
            DiskLimitBytes = size,
        });
    }

    /// <inheritdoc />
    /// <remarks>The host's cgroup holds QEMU: guest RAM, the guest kernel, QEMU itself. The sandbox's own memory, processes and OOM kills are in the guest.</remarks>
    public bool UsageNeedsGuest => true;

    /// <inheritdoc />
    /// <remarks>
    /// CPU stays the host's reading of QEMU's cgroup: every vCPU and emulation cycle the VM cost
    /// the host, which is what the CPU limit (that cgroup's CFS quota) bounds and what a user is
    /// billed for. Memory, processes and their limits are the guest's view, as in the container
    /// tiers: the commands' cgroup the agent keeps inside the guest, with the sandbox's policy
    /// limit (known to the host; the guest's word is not needed for it). OOM kills add the guest's
    /// (a command killed at the sandbox's limit) to the host's (QEMU killed at its own). Disk stays
    /// the host's view of the scratch volume.
    /// </remarks>
    public HostUsage CombineUsage(RuntimeInstance instance, HostUsage host, Protocol.Messages.Usage guest) => host with
    {
        MemoryBytes = (long)Math.Min(guest.MemoryBytes, long.MaxValue),
        MemoryPeakBytes = (long)Math.Min(Math.Max(guest.GuestMemoryPeakBytes, guest.MemoryBytes), long.MaxValue),
        MemoryLimitBytes = instance.Properties.TryGetValue(MemoryLimitProperty, out var limit) && long.TryParse(limit, NumberStyles.None, CultureInfo.InvariantCulture, out long bytes)
            ? bytes : (long)Math.Min(guest.MemoryLimitBytes, long.MaxValue),
        OomKills = host.OomKills + (long)Math.Min(guest.GuestOomKills, int.MaxValue),
        Pids = (long)Math.Min(guest.GuestPids, int.MaxValue),
        PidsLimitHits = host.PidsLimitHits + (long)Math.Min(guest.GuestPidsLimitHits, int.MaxValue),
    };

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        // The VMs live on (a restarted server re-adopts them); only the QMP connections close.
        foreach (var machine in _machines.Values)
            await machine.DisposeAsync().ConfigureAwait(false);
        _machines.Clear();
        _probeLock.Dispose();
        _boots.Dispose();
    }

    // ---- helpers ----

    private void Remember(string sandboxId, string report)
    {
        _exitReports[sandboxId] = report;
        if (_exitReports.Count > 1024)
        {
            foreach (var key in _exitReports.Keys.Take(_exitReports.Count - 1024))
                _exitReports.TryRemove(key, out _);
        }
    }

    private static async Task<bool> ExitedAsync(int pid, VmPaths paths, TimeSpan within, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + within;
        while (true)
        {
            if (!IsOurQemu(pid, paths))
                return true;
            if (DateTime.UtcNow >= deadline)
                return false;
            await Task.Delay(10, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Whether <paramref name="pid"/> is a live (not zombie) QEMU of this VM (pids get reused).</summary>
    private static bool IsOurQemu(int pid, VmPaths paths)
    {
        try
        {
            var state = ProcessState(pid);
            if (state is null or 'Z' or 'X')
                return false;
            return File.ReadAllText($"/proc/{pid}/cmdline").Contains(paths.Qmp, StringComparison.Ordinal);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static char? ProcessState(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            int close = stat.LastIndexOf(')');
            return close > 0 && close + 2 < stat.Length ? stat[close + 2] : null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static int? ReadPid(VmPaths paths)
    {
        try
        {
            return int.TryParse(File.ReadAllText(paths.PidFile).Trim(), out int pid) && pid > 0 ? pid : null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string ReadLog(VmPaths paths)
    {
        try
        {
            using var log = new FileStream(paths.Log, FileMode.Open, FileAccess.Read);
            var buffer = new byte[Math.Min(log.Length, 8192)];
            log.Seek(-buffer.Length, SeekOrigin.End);
            log.ReadExactly(buffer);
            return System.Text.Encoding.UTF8.GetString(buffer);
        }
        catch (IOException)
        {
            return "(no output)";
        }
    }

    private string? VmmUser()
    {
        if (string.IsNullOrEmpty(_options.User))
            return null;
        try
        {
            return File.ReadLines("/etc/passwd").Any(l => l.StartsWith(_options.User + ":", StringComparison.Ordinal)) ? _options.User : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static bool IsHostname(string name) =>
        name.Length is > 0 and <= 63 && name.All(ch => char.IsAsciiLetterOrDigit(ch) || ch is '-' or '.');

    /// <summary>QEMU option values separate with commas; a comma inside a path is doubled.</summary>
    private static string Escape(string path) => path.Replace(",", ",,", StringComparison.Ordinal);

    private static string Which(string binary)
    {
        if (binary.Contains('/'))
            return binary;
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            var candidate = Path.Combine(dir, binary);
            if (File.Exists(candidate))
                return candidate;
        }
        return binary;
    }

    private static string Tail(string text)
    {
        text = text.Trim();
        return text.Length > 600 ? "…" + text[^600..] : text;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "microVM boot probe with {Accelerator}: {Verdict}")]
    private static partial void LogBootProbe(ILogger logger, string accelerator, string verdict);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Started microVM {SandboxId} ({Accelerator}): images {ImagesMs:0} ms, QEMU {LaunchMs:0} ms, boot to agent {BootMs:0} ms")]
    private static partial void LogStarted(ILogger logger, string sandboxId, string accelerator, double imagesMs, double launchMs, double bootMs);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Destroying microVM {SandboxId}: {Error}")]
    private static partial void LogDestroyFailed(ILogger logger, string sandboxId, string error);
}
