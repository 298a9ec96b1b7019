using System.Text;
using Moat.Core.Host;

namespace Moat.Networking.Plumbing;

/// <summary>
/// Moat's firewall, all of it in one table (<c>inet moat</c>) of the gateway namespace — the
/// host's own tables are never touched. Everything a sandbox sends arrives on its link and is
/// dispatched by interface to its own chain, which drops what does not carry its address, drops
/// IPv6 (off unless filtered like IPv4), lets its DNS questions reach Moat's resolver, and hands
/// every TCP connection and UDP datagram to the transparent proxy. Nothing is ever forwarded:
/// the proxy is the only way out, so it sees, decides and logs every attempt.
/// </summary>
public sealed class Nftables(ProcessRunner runner)
{
    /// <summary>Packet mark of traffic diverted to the proxy (routed to the local table).</summary>
    public const int ProxyMark = 0x1;

    /// <summary>Packet mark of DNS questions to Moat's resolver on the gateway address.</summary>
    public const int DnsMark = 0x2;

    /// <summary>Policy-routing table that delivers diverted packets locally.</summary>
    public const int LocalTable = 100;

    /// <summary>The base table: dispatch by interface, nothing forwarded, nothing else accepted. Replaces any older copy.</summary>
    public static string BaseTable() => $$"""
        add table inet moat
        delete table inet moat
        table inet moat {
          map sandboxes { type ifname : verdict; }
          chain prerouting {
            type filter hook prerouting priority mangle; policy drop;
            iifname "lo" accept
            iifname vmap @sandboxes
          }
          chain input {
            type filter hook input priority filter; policy drop;
            iifname "lo" accept
            meta mark {{ProxyMark}} accept
            meta mark {{DnsMark}} accept
            ct state established,related ct direction reply accept
          }
          chain forward {
            type filter hook forward priority filter; policy drop;
          }
        }

        """;

    /// <summary>The rules of one sandbox's link.</summary>
    public static string SandboxRules(Lease lease, int tcpPort, int udpPort)
    {
        var c = lease.Chain;
        var sb = new StringBuilder();
        sb.Append(CultureLine($"add chain inet moat {c}"));
        // Only the sandbox's own address may send from its link (a VM guest controls its kernel).
        sb.Append(CultureLine($"add rule inet moat {c} ip saddr != {lease.Address} drop"));
        sb.Append(CultureLine($"add rule inet moat {c} meta nfproto ipv6 drop"));
        // Answers on connections Moat itself opened to the sandbox (the inbound proxy).
        sb.Append(CultureLine($"add rule inet moat {c} ct state established,related ct direction reply accept"));
        sb.Append(CultureLine($"add rule inet moat {c} ip daddr {lease.Gateway} meta l4proto {{ tcp, udp }} th dport 53 meta mark set {DnsMark} accept"));
        sb.Append(CultureLine($"add rule inet moat {c} meta l4proto tcp tproxy ip to :{tcpPort} meta mark set {ProxyMark} accept"));
        sb.Append(CultureLine($"add rule inet moat {c} meta l4proto udp tproxy ip to :{udpPort} meta mark set {ProxyMark} accept"));
        sb.Append(CultureLine($"add rule inet moat {c} drop"));
        sb.Append(CultureLine($"add element inet moat sandboxes {{ \"{lease.GatewayInterface}\" : jump {c} }}"));
        return sb.ToString();
    }

    /// <summary>Removes one sandbox's rules; what is already gone is not an error.</summary>
    public async Task RemoveSandboxRulesAsync(string namespacePath, Lease lease, CancellationToken cancellationToken)
    {
        string element = $"delete element inet moat sandboxes {{ \"{lease.GatewayInterface}\" }}\n";
        string chain = $"flush chain inet moat {lease.Chain}\ndelete chain inet moat {lease.Chain}\n";
        if ((await TryApplyAsync(namespacePath, element + chain, cancellationToken).ConfigureAwait(false)).ExitCode == 0)
            return;
        // Half made or half removed: each part on its own, tolerating what is missing.
        await TryApplyAsync(namespacePath, element, cancellationToken).ConfigureAwait(false);
        await TryApplyAsync(namespacePath, chain, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Applies a script atomically inside the namespace at <paramref name="namespacePath"/>.</summary>
    public Task ApplyAsync(string namespacePath, string script, CancellationToken cancellationToken) =>
        runner.RunAsync("nsenter", [$"--net={namespacePath}", "nft", "-f", "-"], new HostCommandOptions { Stdin = Encoding.UTF8.GetBytes(script), Timeout = TimeSpan.FromSeconds(30) }, cancellationToken);

    private Task<HostCommandResult> TryApplyAsync(string namespacePath, string script, CancellationToken cancellationToken) =>
        runner.RunAsync("nsenter", [$"--net={namespacePath}", "nft", "-f", "-"], new HostCommandOptions { Stdin = Encoding.UTF8.GetBytes(script), Timeout = TimeSpan.FromSeconds(30), Check = false }, cancellationToken);

    private static string CultureLine(FormattableString line) => FormattableString.Invariant(line) + "\n";
}
