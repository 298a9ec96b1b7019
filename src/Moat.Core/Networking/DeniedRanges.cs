using System.Net;
using System.Net.Sockets;

namespace Moat.Core.Networking;

/// <summary>
/// Destinations no sandbox reaches in any mode: private, shared, loopback, link-local (cloud
/// metadata), multicast, reserved and documentation ranges of IPv4 and IPv6, plus the cloud
/// metadata services that sit on public-looking addresses. Checks work on parsed addresses, never
/// on strings, so every spelling of an address (decimal, hex, octal, IPv4-mapped, NAT64) lands here
/// as the same bytes.
/// </summary>
public static class DeniedRanges
{
    private static readonly (IPNetwork Network, string Reason)[] V4 =
    [
        (IPNetwork.Parse("0.0.0.0/8"), "reserved"),
        (IPNetwork.Parse("10.0.0.0/8"), "private"),
        (IPNetwork.Parse("100.64.0.0/10"), "shared_address_space"),
        (IPNetwork.Parse("127.0.0.0/8"), "loopback"),
        (IPNetwork.Parse("169.254.0.0/16"), "link_local"),
        (IPNetwork.Parse("172.16.0.0/12"), "private"),
        (IPNetwork.Parse("192.0.0.0/24"), "reserved"),
        (IPNetwork.Parse("192.0.2.0/24"), "documentation"),
        (IPNetwork.Parse("192.88.99.0/24"), "reserved"),
        (IPNetwork.Parse("192.168.0.0/16"), "private"),
        (IPNetwork.Parse("198.18.0.0/15"), "reserved"),
        (IPNetwork.Parse("198.51.100.0/24"), "documentation"),
        (IPNetwork.Parse("203.0.113.0/24"), "documentation"),
        (IPNetwork.Parse("224.0.0.0/4"), "multicast"),
        (IPNetwork.Parse("240.0.0.0/4"), "reserved"),
        // Azure's wire server and instance metadata relay: public-looking, host-only.
        (IPNetwork.Parse("168.63.129.16/32"), "metadata"),
    ];

    private static readonly (IPNetwork Network, string Reason)[] V6 =
    [
        (IPNetwork.Parse("::/128"), "reserved"),
        (IPNetwork.Parse("::1/128"), "loopback"),
        (IPNetwork.Parse("100::/64"), "reserved"),
        (IPNetwork.Parse("64:ff9b:1::/48"), "reserved"),
        (IPNetwork.Parse("2001::/23"), "reserved"),
        (IPNetwork.Parse("2001:db8::/32"), "documentation"),
        (IPNetwork.Parse("2002::/16"), "reserved"),
        (IPNetwork.Parse("3fff::/20"), "documentation"),
        (IPNetwork.Parse("5f00::/16"), "reserved"),
        // Unique local: also AWS's IPv6 metadata service (fd00:ec2::254).
        (IPNetwork.Parse("fc00::/7"), "private"),
        (IPNetwork.Parse("fe80::/10"), "link_local"),
        (IPNetwork.Parse("fec0::/10"), "private"),
        (IPNetwork.Parse("ff00::/8"), "multicast"),
    ];

    private static readonly IPNetwork Nat64 = IPNetwork.Parse("64:ff9b::/96");

    /// <summary>The always-denied networks, for documentation and for rule validation.</summary>
    public static IEnumerable<(IPNetwork Network, string Reason)> All => V4.Concat(V6);

    /// <summary>
    /// Why <paramref name="address"/> is never reachable from a sandbox, or null when it may be.
    /// IPv4-mapped and NAT64 (64:ff9b::/96) IPv6 addresses are judged by the IPv4 address they carry.
    /// </summary>
    public static string? Classify(IPAddress address)
    {
        if (address.AddressFamily == AddressFamily.InterNetworkV6)
        {
            if (address.IsIPv4MappedToIPv6)
                return Classify(address.MapToIPv4());
            if (Nat64.Contains(address))
            {
                var bytes = address.GetAddressBytes();
                return Classify(new IPAddress(bytes.AsSpan(12, 4)));
            }
            // IPv4-compatible (::a.b.c.d, deprecated) addresses carry an IPv4 address too.
            var b6 = address.GetAddressBytes();
            if (b6.AsSpan(0, 12).IndexOfAnyExcept((byte)0) < 0)
                return b6.AsSpan(12).IndexOfAnyExcept((byte)0) < 0 ? "reserved" : Classify(new IPAddress(b6.AsSpan(12, 4)));
            foreach (var (network, reason) in V6)
            {
                if (network.Contains(address))
                    return reason;
            }
            return null;
        }
        if (address.AddressFamily != AddressFamily.InterNetwork)
            return "reserved";
        if (address.Equals(IPAddress.Broadcast))
            return "reserved";
        foreach (var (network, reason) in V4)
        {
            if (network.Contains(address))
                return reason;
        }
        return null;
    }

    /// <summary>Whether every address of <paramref name="network"/> is always denied (a rule naming it could never allow anything).</summary>
    public static bool Covers(IPNetwork network)
    {
        var ranges = network.BaseAddress.AddressFamily == AddressFamily.InterNetwork ? V4 : V6;
        foreach (var (range, _) in ranges)
        {
            if (range.PrefixLength <= network.PrefixLength && range.Contains(network.BaseAddress))
                return true;
        }
        if (network.BaseAddress.AddressFamily == AddressFamily.InterNetworkV6 && network.PrefixLength >= 96
            && (network.BaseAddress.IsIPv4MappedToIPv6 || Nat64.Contains(network.BaseAddress)))
        {
            var bytes = network.BaseAddress.GetAddressBytes();
            return Covers(new IPNetwork(new IPAddress(bytes.AsSpan(12, 4)), network.PrefixLength - 96));
        }
        return false;
    }
}
