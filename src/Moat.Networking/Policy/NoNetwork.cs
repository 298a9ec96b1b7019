using System.Net;
using Moat.Core.Networking;
using Moat.Core.Sandboxes;

namespace Moat.Networking.Policy;

/// <summary>
/// Mode <c>none</c>: loopback only. A sandbox created this way gets no interface at all; one that
/// switched to none keeps its link, but every connection, datagram and DNS question is refused
/// (and logged).
/// </summary>
public sealed class NoNetwork : ISandboxNetwork
{
    /// <summary>The one instance.</summary>
    public static readonly NoNetwork Instance = new();

    /// <inheritdoc />
    public NetworkPolicy Policy => NetworkPolicy.None;

    /// <inheritdoc />
    public bool NeedsInterface => false;

    /// <inheritdoc />
    public TcpPlan PlanTcp(IPAddress address, int port) => TcpPlan.Deny;

    /// <inheritdoc />
    public string? AllowsName(string name, int port) => null;

    /// <inheritdoc />
    public string? AllowsUdp(IPAddress address, int port) => null;

    /// <inheritdoc />
    public string? AllowsAddress(IPAddress address, int port) => null;

    /// <inheritdoc />
    public bool Resolves(string name) => false;
}
