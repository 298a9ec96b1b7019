using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Host;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Runtimes.Agent;
using Moat.Runtimes.Oci;
using Moat.Storage.Rootfs;

namespace Moat.Runtimes.Runsc;

/// <summary>Configuration of the gVisor tier (section <c>Moat:Runsc</c>).</summary>
public sealed class RunscOptions : OciRuntimeOptions
{
    /// <inheritdoc />
    public override string Binary { get; set; } = "runsc";
    /// <inheritdoc />
    public override string Root { get; set; } = "/run/moat/runsc";
    /// <summary>gVisor platform (ptrace, systrap, kvm); empty chooses by probing.</summary>
    public string Platform { get; set; } = "";
    /// <summary>Also apply Moat's seccomp profile inside gVisor (defence in depth).</summary>
    public bool OciSeccomp { get; set; } = true;
}

/// <summary>
/// The gVisor tier: runsc runs the same bundle as the container tier, but the code talks to
/// gVisor's user-space kernel (the Sentry), not the host's. The agent's socket is a real host
/// socket thanks to <c>--host-uds=create</c>; the rootfs is written through the gofer to the
/// sandbox's own scratch volume (<c>--overlay2=none</c>), so the disk limit is the same as runc's.
/// </summary>
public sealed partial class RunscRuntime(ProcessRunner runner, OverlayRootfs rootfs, AgentLayer agentLayer, IOptions<RunscOptions> options, IOptions<SandboxManagerOptions> manager, ILogger<RunscRuntime> logger)
    : OciBundleRuntime(runner, rootfs, agentLayer, options.Value, logger)
{
    private readonly RunscOptions _options = options.Value;
    private string? _platform;

    /// <inheritdoc />
    public override IsolationTier Tier => IsolationTier.Gvisor;

    /// <inheritdoc />
    protected override System.Text.Json.JsonElement? Seccomp => _options.OciSeccomp ? Moat.Runtimes.Seccomp.SeccompProfile.ForSentry : null;

    /// <inheritdoc />
    protected override TimeSpan DeleteTimeout => TimeSpan.FromSeconds(120);

    /// <summary>
    /// The Sentry and gofer live in the sandbox's cgroup: about 15 MiB and 40 host tasks idle,
    /// and with the ptrace platform one more host task per application thread. The user's
    /// limits get this on top, so that they buy the user's own processes.
    /// </summary>
    protected override OciSpecBuilder.RuntimeOverhead Overhead => new(MemoryMiB: 64, Pids: 256, CountProcessesInside: true);

    /// <inheritdoc />
    protected override IReadOnlyList<string> GlobalFlags =>
    [
        "--root", _options.Root,
        "--platform", _platform ?? "ptrace",
        "--network", "none",
        "--host-uds", "create",
        "--overlay2", "none",
        .. _options.OciSeccomp ? ["--oci-seccomp"] : Array.Empty<string>(),
    ];

    /// <summary>A sandbox with a network uses gVisor's own network stack on the interfaces of the namespace Moat made (<c>--network=sandbox</c>), on every call.</summary>
    protected override IReadOnlyList<string> FlagsFor(RuntimeInstance instance) =>
        instance.Properties.ContainsKey("netns") ? [.. GlobalFlags.Select((f, i) => i > 0 && GlobalFlags[i - 1] == "--network" ? "sandbox" : f)] : GlobalFlags;

    /// <summary>
    /// Debian's runsc (release-20221219) refuses <c>--network=sandbox</c> in a prepared namespace on
    /// kernels that show /proc/sys/net in every namespace ("cannot run with network enabled in root
    /// network namespace", gVisor issue 10704). The work-around from PLATFORM-NOTES: run it in a
    /// private mount namespace where a tmpfs covers /proc/sys and every subdirectory but net/ is
    /// bound back. Nothing of it is visible outside (the namespace is a slave of the host's).
    /// runsc also moves the link's IPv4 address into its own stack, taking it off the interface, so
    /// the address is put (back) on before every start in that namespace.
    /// </summary>
    protected override async Task<(string Program, IReadOnlyList<string> Args)> LauncherAsync(SandboxLaunch launch, IReadOnlyList<string> runtimeArgs, CancellationToken cancellationToken)
    {
        if (launch.Network is not { } network)
            return (_options.Binary, runtimeArgs);
        await Runner.RunAsync("nsenter", [$"--net={network.NamespacePath}", "ip", "addr", "replace", $"{network.Address}/{network.PrefixLength}", "dev", network.Interface],
            new HostCommandOptions { Timeout = TimeSpan.FromSeconds(30) }, cancellationToken).ConfigureAwait(false);
        Directory.CreateDirectory("/run/moat");
        return ("unshare", ["--mount", "--propagation", "slave", "--", "/bin/sh", "-c", ProcSysWorkaround, "moat-runsc", _options.Binary, .. runtimeArgs]);
    }

    private const string ProcSysWorkaround = """
        set -e
        d=$(mktemp -d /run/moat/procsys.XXXXXX)
        mount --bind /proc/sys "$d"
        mount -t tmpfs -o mode=0555,size=16k moat-procsys /proc/sys
        for p in "$d"/*; do
          n=${p##*/}
          [ "$n" = net ] && continue
          mkdir "/proc/sys/$n"
          mount --bind "$p" "/proc/sys/$n"
        done
        umount "$d"
        rmdir "$d"
        exec "$@"
        """;

    /// <inheritdoc />
    protected override async Task<(string? Problem, string Note)> ProbeTierAsync(Dictionary<string, string> details, CancellationToken cancellationToken)
    {
        var help = await Runner.RunAsync(_options.Binary, ["flags"], new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(10) }, cancellationToken).ConfigureAwait(false);
        var offered = new List<string> { "ptrace" };
        if (help.Stdout.Contains("systrap", StringComparison.Ordinal) || help.Stderr.Contains("systrap", StringComparison.Ordinal))
            offered.Insert(0, "systrap");
        if (File.Exists("/dev/kvm"))
            offered.Insert(0, "kvm");
        details["platforms"] = string.Join(",", offered);
        var tried = new List<string>();
        foreach (var platform in string.IsNullOrEmpty(_options.Platform) ? offered : [_options.Platform])
        {
            if (await PlatformWorksAsync(platform, cancellationToken).ConfigureAwait(false))
            {
                _platform = platform;
                details["platform"] = platform;
                return (null, tried.Count == 0
                    ? $"user-space kernel (Sentry), platform {platform}"
                    : $"user-space kernel (Sentry), platform {platform} ({string.Join(", ", tried)} did not start a sandbox here)");
            }
            tried.Add(platform);
        }
        return ($"runsc could not start a sandbox with platform {string.Join(" or ", tried)}", "");
    }

    /// <summary>Starts a throw-away sandbox on <paramref name="platform"/> and checks it ran; the verdict is cached per runsc and kernel version.</summary>
    private async Task<bool> PlatformWorksAsync(string platform, CancellationToken cancellationToken)
    {
        // Verdicts hold until the kernel or runsc changes; /run is emptied at reboot.
        var cacheDir = "/run/moat/probes";
        Directory.CreateDirectory(cacheDir);
        var key = $"{new FileInfo(await WhichAsync(_options.Binary).ConfigureAwait(false)).LastWriteTimeUtc.Ticks:x}-{File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}";
        var cache = Path.Combine(cacheDir, $"runsc-platform-{platform}.{key}");
        if (File.Exists(cache))
            return File.ReadAllText(cache).Trim() == "ok";
        var root = Path.Combine(manager.Value.DataDirectory, "cache", $"runsc-probe-{Environment.ProcessId}");
        Directory.CreateDirectory(root);
        bool works;
        try
        {
            // A platform that cannot run here (KVM on a nested host) hangs rather than failing.
            var result = await Runner.RunAsync(_options.Binary, ["--root", root, "--platform", platform, "--network", "none", "do", "/bin/echo", "moat-probe"],
                new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(8) }, cancellationToken).ConfigureAwait(false);
            works = result.ExitCode == 0 && result.Stdout.Contains("moat-probe", StringComparison.Ordinal);
        }
        catch (Core.Errors.MoatException ex) when (ex.Code == "host_command_timeout")
        {
            works = false;
        }
        finally
        {
            await Runner.RunAsync(_options.Binary, ["--root", root, "list", "--quiet"], new HostCommandOptions { Check = false }, CancellationToken.None).ContinueWith(async t =>
            {
                foreach (var id in t.Result.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
                    await Runner.RunAsync(_options.Binary, ["--root", root, "delete", "--force", id.Trim()], new HostCommandOptions { Check = false }, CancellationToken.None).ConfigureAwait(false);
            }, TaskScheduler.Default).Unwrap().ConfigureAwait(false);
            try
            {
                Directory.Delete(root, recursive: true);
            }
            catch (IOException)
            {
            }
        }
        LogPlatformProbe(logger, platform, works);
        await File.WriteAllTextAsync(cache, works ? "ok" : "fails", CancellationToken.None).ConfigureAwait(false);
        return works;
    }

    private static Task<string> WhichAsync(string binary)
    {
        if (binary.Contains('/'))
            return Task.FromResult(binary);
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            var candidate = Path.Combine(dir, binary);
            if (File.Exists(candidate))
                return Task.FromResult(candidate);
        }
        return Task.FromResult(binary);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "gVisor platform {Platform}: {Works}")]
    private static partial void LogPlatformProbe(ILogger logger, string platform, bool works);
}
