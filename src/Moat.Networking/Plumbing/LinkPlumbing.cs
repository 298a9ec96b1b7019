using System.Globalization;
using System.Text;
using Moat.Core.Host;

namespace Moat.Networking.Plumbing;

/// <summary>
/// Makes and removes the namespaces and links: the gateway namespace (Moat's end of every link,
/// no route anywhere), and per sandbox a namespace with loopback and <c>eth0</c>, one end of a
/// veth pair whose other end (<c>msb{slot}</c>) is in the gateway. Uses <c>ip</c> and <c>nft</c>
/// through the process runner; sysctls are written from a thread inside the namespace.
/// </summary>
public sealed class LinkPlumbing(ProcessRunner runner, Nftables nftables)
{
    /// <summary>The <c>ip netns</c> name of a sandbox's namespace.</summary>
    public static string SandboxNamespace(string sandboxId) => $"moat-{sandboxId}";

    /// <summary>Makes the gateway namespace, or brings an existing one (a restarted server's) back to the base rules.</summary>
    /// <returns>Whether it already existed.</returns>
    public async Task<bool> EnsureGatewayAsync(string name, CancellationToken cancellationToken)
    {
        bool existed = NetworkNamespace.Exists(name);
        if (!existed)
            await IpAsync(["netns", "add", name], cancellationToken).ConfigureAwait(false);
        try
        {
            using (var ns = NetworkNamespace.Open(name))
            {
                // Never a router: nothing is forwarded, whatever a rule says; IPv6 is off.
                ns.Sysctl("net.ipv4.ip_forward", "0");
                ns.Sysctl("net.ipv4.conf.all.rp_filter", "1");
                ns.Sysctl("net.ipv4.conf.default.rp_filter", "1");
                ns.Sysctl("net.ipv6.conf.all.disable_ipv6", "1");
                ns.Sysctl("net.ipv6.conf.default.disable_ipv6", "1");
            }
            if (!existed)
            {
                // Diverted packets (marked by the sandbox chains) are delivered to the local proxy sockets.
                await BatchAsync(name,
                [
                    "link set lo up",
                    $"rule add fwmark {Nftables.ProxyMark} lookup {Nftables.LocalTable}",
                    $"route replace local 0.0.0.0/0 dev lo table {Nftables.LocalTable}",
                ], cancellationToken).ConfigureAwait(false);
            }
            await nftables.ApplyAsync(NetworkNamespace.PathOf(name), Nftables.BaseTable(), cancellationToken).ConfigureAwait(false);
        }
        catch when (!existed)
        {
            await DeleteNamespaceAsync(name, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
        return existed;
    }

    /// <summary>
    /// Makes a sandbox's link: its namespace (new, or the one of a running process when
    /// <paramref name="pid"/> is given), the veth pair, addresses, default route, and its rules.
    /// </summary>
    public async Task CreateLinkAsync(string gateway, string sandboxId, int? pid, Lease lease, int tcpPort, int udpPort, CancellationToken cancellationToken)
    {
        var sandboxNs = SandboxNamespace(sandboxId);
        if (pid is { } p)
            await IpAsync(["netns", "attach", sandboxNs, p.ToString(CultureInfo.InvariantCulture)], cancellationToken).ConfigureAwait(false);
        else
            await IpAsync(["netns", "add", sandboxNs], cancellationToken).ConfigureAwait(false);
        using (var ns = NetworkNamespace.Open(sandboxNs))
        {
            ns.Sysctl("net.ipv6.conf.all.disable_ipv6", "1");
            ns.Sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        }
        await BatchAsync(gateway,
        [
            $"link add {lease.GatewayInterface} type veth peer name eth0 netns {sandboxNs}",
            $"addr add {lease.Gateway}/30 dev {lease.GatewayInterface}",
            $"link set {lease.GatewayInterface} up",
        ], cancellationToken).ConfigureAwait(false);
        await BatchAsync(sandboxNs,
        [
            "link set lo up",
            $"addr add {lease.Address}/30 dev eth0",
            "link set eth0 up",
            $"route add default via {lease.Gateway} dev eth0",
        ], cancellationToken).ConfigureAwait(false);
        await nftables.ApplyAsync(NetworkNamespace.PathOf(gateway), Nftables.SandboxRules(lease, tcpPort, udpPort), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Re-installs a sandbox's rules in a rebuilt gateway table (after a restart).</summary>
    public Task RestoreRulesAsync(string gateway, Lease lease, int tcpPort, int udpPort, CancellationToken cancellationToken) =>
        nftables.ApplyAsync(NetworkNamespace.PathOf(gateway), Nftables.SandboxRules(lease, tcpPort, udpPort), cancellationToken);

    /// <summary>Bridges a tap device to the sandbox's link for a VM; the guest takes the link's address.</summary>
    public Task CreateTapAsync(string sandboxId, Lease lease, CancellationToken cancellationToken) =>
        BatchAsync(SandboxNamespace(sandboxId),
        [
            "tuntap add dev tap0 mode tap",
            "link add br0 type bridge",
            "addr flush dev eth0",
            "link set eth0 master br0",
            "link set tap0 master br0",
            "link set br0 up",
            "link set tap0 up",
        ], cancellationToken);

    /// <summary>The MAC address of a VM guest on a slot (locally administered).</summary>
    public static string GuestMac(Lease lease) => string.Create(CultureInfo.InvariantCulture, $"02:4d:6f:{(lease.Index >> 16) & 0xFF:x2}:{(lease.Index >> 8) & 0xFF:x2}:{lease.Index & 0xFF:x2}");

    /// <summary>Removes a sandbox's rules, link and namespace; what is already gone is fine.</summary>
    public async Task DeleteLinkAsync(string gateway, string sandboxId, Lease? lease, CancellationToken cancellationToken)
    {
        if (lease is not null && NetworkNamespace.Exists(gateway))
        {
            await nftables.RemoveSandboxRulesAsync(NetworkNamespace.PathOf(gateway), lease, cancellationToken).ConfigureAwait(false);
            // Deleting one end removes both, even if something still pins the sandbox's namespace.
            await runner.RunAsync("ip", ["-n", gateway, "link", "del", lease.GatewayInterface], new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(30) }, cancellationToken).ConfigureAwait(false);
        }
        await DeleteNamespaceAsync(SandboxNamespace(sandboxId), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Removes a named namespace if it exists.</summary>
    public async Task DeleteNamespaceAsync(string name, CancellationToken cancellationToken)
    {
        if (!NetworkNamespace.Exists(name))
            return;
        var result = await runner.RunAsync("ip", ["netns", "del", name], new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(30) }, cancellationToken).ConfigureAwait(false);
        if (result.ExitCode != 0 && NetworkNamespace.Exists(name))
            throw new IOException($"ip netns del {name}: {result.Stderr.Trim()}");
    }

    private Task IpAsync(string[] args, CancellationToken cancellationToken) =>
        runner.RunAsync("ip", args, new HostCommandOptions { Timeout = TimeSpan.FromSeconds(30) }, cancellationToken);

    private Task BatchAsync(string ns, IEnumerable<string> lines, CancellationToken cancellationToken) =>
        runner.RunAsync("ip", ["-n", ns, "-batch", "-"], new HostCommandOptions { Stdin = Encoding.ASCII.GetBytes(string.Join('\n', lines) + "\n"), Timeout = TimeSpan.FromSeconds(30) }, cancellationToken);
}
