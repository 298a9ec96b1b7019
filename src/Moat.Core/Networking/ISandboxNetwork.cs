using System.Net;
using Moat.Core.Sandboxes;

namespace Moat.Core.Networking;

/// <summary>What the egress proxy should do with a new TCP connection, before it has seen any byte.</summary>
public enum TcpPlan
{
    /// <summary>Refuse it.</summary>
    Deny,
    /// <summary>Dial the address the sandbox dialled (after the always-denied check).</summary>
    DialAddress,
    /// <summary>Find out the name first (TLS server name, HTTP Host, or the name Moat resolved the address for), then ask <see cref="ISandboxNetwork.AllowsName"/>.</summary>
    NeedName,
}

/// <summary>
/// The egress policy of one sandbox in one network mode: one implementation per mode (none,
/// allow, open). Pure decisions; the proxy, the resolver and the firewall act on them, and the
/// always-denied ranges (<see cref="DeniedRanges"/>, the host's own addresses, other sandboxes,
/// SMTP) are enforced around them whatever the mode says.
/// </summary>
public interface ISandboxNetwork
{
    /// <summary>The policy this object enforces.</summary>
    NetworkPolicy Policy { get; }

    /// <summary>Whether the sandbox needs an interface at all (none: loopback only).</summary>
    bool NeedsInterface { get; }

    /// <summary>What to do with a TCP connection to <paramref name="address"/>:<paramref name="port"/>.</summary>
    TcpPlan PlanTcp(IPAddress address, int port);

    /// <summary>Whether a TCP connection to <paramref name="name"/> on <paramref name="port"/> is allowed (the rule that allows it, or null).</summary>
    string? AllowsName(string name, int port);

    /// <summary>Whether a UDP datagram to <paramref name="address"/>:<paramref name="port"/> is allowed (the rule, or null).</summary>
    string? AllowsUdp(IPAddress address, int port);

    /// <summary>Whether a TCP connection straight to an address is allowed (the rule, or null); only meaningful after <see cref="TcpPlan.DialAddress"/>.</summary>
    string? AllowsAddress(IPAddress address, int port);

    /// <summary>Whether the sandbox's resolver answers questions about <paramref name="name"/>.</summary>
    bool Resolves(string name);
}
