using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Security.Cryptography;
using Moat.Core.Runtimes;
using Moat.Runtimes.Cgroups;
using Moat.Tests;

namespace Moat.RedTeam;

/// <summary>
/// The host oracle of the red-team suite: what an attack could change on this machine, read from
/// the host before and after each attack. An attack is contained only if nothing here moved.
/// </summary>
public sealed class HostWatch : IDisposable
{
    /// <summary>The file an escaping attack tries to create on the host (at / and at /tmp).</summary>
    public const string EscapeMarker = "moat-redteam-escape";

    /// <summary>Host sysctls an attack from inside could try to set.</summary>
    private static readonly string[] Sysctls =
    [
        "kernel/core_pattern", "kernel/core_uses_pid", "kernel/hostname", "kernel/domainname", "kernel/modprobe",
        "kernel/randomize_va_space", "kernel/sysrq", "kernel/panic", "kernel/ctrl-alt-del", "kernel/printk",
        "kernel/unprivileged_bpf_disabled", "kernel/kptr_restrict", "kernel/dmesg_restrict", "kernel/perf_event_paranoid",
        "vm/overcommit_memory", "vm/unprivileged_userfaultfd", "fs/suid_dumpable", "kernel/poweroff_cmd",
    ];

    /// <summary>Host files whose contents must not change.</summary>
    private static readonly string[] Files = ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];

    private readonly TcpListener _tcp;
    private readonly UdpClient _udp;
    private int _tcpSeen;
    private int _udpSeen;
    private readonly CancellationTokenSource _stop = new();

    public HostWatch(IEnumerable<string> watchedFiles)
    {
        WatchedFiles = [.. Files, .. watchedFiles];
        // A listener on every host address: a sandbox that reaches the host at all is seen here.
        _tcp = new TcpListener(IPAddress.IPv6Any, 0);
        _tcp.Server.DualMode = true;
        _tcp.Start();
        Port = ((IPEndPoint)_tcp.LocalEndpoint).Port;
        _udp = new UdpClient(AddressFamily.InterNetworkV6);
        _udp.Client.DualMode = true;
        _udp.Client.Bind(new IPEndPoint(IPAddress.IPv6Any, Port));
        _ = AcceptAsync();
        _ = ReceiveAsync();
    }

    /// <summary>The TCP and UDP port the host listens on, on all its addresses.</summary>
    public int Port { get; }

    /// <summary>Files hashed on every snapshot (host files, the agent, template layer files).</summary>
    public IReadOnlyList<string> WatchedFiles { get; }

    /// <summary>Connections and datagrams the host listener got.</summary>
    public (int Tcp, int Udp) Reached => (Volatile.Read(ref _tcpSeen), Volatile.Read(ref _udpSeen));

    /// <summary>Every address of this host, for a sandbox to try.</summary>
    public static IReadOnlyList<string> HostAddresses() =>
    [
        .. NetworkInterface.GetAllNetworkInterfaces()
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Select(a => a.Address)
            .Where(a => !IPAddress.IsLoopback(a) && !a.IsIPv6LinkLocal)
            .Select(a => a.ToString())
            .Distinct(),
        // QEMU's user-mode gateway and the usual bridge gateways, in case any of them were wired.
        "10.0.2.2", "172.17.0.1", "192.168.122.1",
    ];

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                using var client = await _tcp.AcceptTcpClientAsync(_stop.Token);
                Interlocked.Increment(ref _tcpSeen);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
        }
    }

    private async Task ReceiveAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await _udp.ReceiveAsync(_stop.Token);
                Interlocked.Increment(ref _udpSeen);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
        }
    }

    /// <summary>What the host looks like now: name → value.</summary>
    public Dictionary<string, string> Snapshot(IEnumerable<RuntimeInstance> sandboxes)
    {
        var state = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var sysctl in Sysctls)
            state["sysctl " + sysctl] = ReadOrAbsent("/proc/sys/" + sysctl);
        foreach (var file in WatchedFiles)
            state["file " + file] = File.Exists(file) ? Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file))) : "absent";
        foreach (var dir in new[] { "/", "/tmp", "/root", "/etc" })
            state["escape marker in " + dir] = File.Exists(Path.Combine(dir, EscapeMarker)) || Directory.Exists(Path.Combine(dir, EscapeMarker)) ? "present" : "absent";
        state["kernel modules"] = File.Exists("/proc/modules")
            ? string.Join(',', File.ReadLines("/proc/modules").Select(l => l.Split(' ')[0]).Order(StringComparer.Ordinal))
            : "no module support";
        state["host mounts naming the marker"] = File.ReadLines("/proc/self/mountinfo").Count(l => l.Contains(EscapeMarker, StringComparison.Ordinal)).ToString();
        var (tcp, udp) = Reached;
        state["host listener"] = $"tcp={tcp} udp={udp}";
        foreach (var sandbox in sandboxes)
        {
            if (!sandbox.Properties.TryGetValue("cgroup", out var cgroup))
                continue;
            // The limits the platform set, read where the kernel enforces them.
            foreach (var limit in new[] { "memory.max", "memory.swap.max", "pids.max", "cpu.max", "cgroup.type" })
                state[$"cgroup {cgroup} {limit}"] = ReadOrAbsent(Path.Combine("/sys/fs/cgroup" + cgroup, limit));
        }
        return state;
    }

    /// <summary>The differences between two snapshots, in words.</summary>
    public static List<string> Changes(Dictionary<string, string> before, Dictionary<string, string> after) =>
        [.. before.Where(kv => !after.TryGetValue(kv.Key, out var now) || now != kv.Value)
            .Select(kv => $"{kv.Key}: {Short(kv.Value)} -> {Short(after.GetValueOrDefault(kv.Key, "gone"))}")];

    /// <summary>The host's clock is where elapsed time says it should be (nobody set it).</summary>
    public static bool ClockPlausible(DateTime before, TimeSpan elapsed) =>
        Math.Abs((DateTime.UtcNow - (before + elapsed)).TotalSeconds) < 30;

    /// <summary>Memory and pids of a sandbox's cgroup against its limits, from the host.</summary>
    public static string? AccountingProblem(RuntimeInstance instance)
    {
        if (!instance.Properties.TryGetValue("cgroup", out var path))
            return null;
        var cgroup = CgroupHierarchy.At(path);
        if (!cgroup.Exists())
            return null;
        var (_, peak, limit) = cgroup.Memory();
        if (limit > 0 && peak > limit)
            return $"memory peak {peak} above the limit {limit}";
        var pidsMax = ReadOrAbsent(Path.Combine("/sys/fs/cgroup" + path, "pids.max"));
        if (long.TryParse(pidsMax, out var max) && cgroup.Pids() > max)
            return $"pids {cgroup.Pids()} above the limit {max}";
        return null;
    }

    private static string ReadOrAbsent(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return "absent";
        }
    }

    private static string Short(string value) => value.Length > 80 ? value[..80] + "…" : value;

    public void Dispose()
    {
        _stop.Cancel();
        _tcp.Stop();
        _udp.Dispose();
        _stop.Dispose();
    }
}
