using System.Net;
using Moat.Core.Networking;
using Moat.Core.Sandboxes;

namespace Moat.Networking.Policy;

/// <summary>
/// Mode <c>open</c>: the internet, minus what is always denied (private, loopback, link-local and
/// metadata addresses, this host, other sandboxes, SMTP) — which the proxy checks on every
/// address it dials, so here everything else is allowed.
/// </summary>
public sealed class OpenNetwork : ISandboxNetwork
{
    /// <summary>The one instance.</summary>
    public static readonly OpenNetwork Instance = new();

    private static readonly NetworkPolicy OpenPolicy = new(NetworkMode.Open, []);

    /// <inheritdoc />
    public NetworkPolicy Policy => OpenPolicy;

    /// <inheritdoc />
    public bool NeedsInterface => true;

    /// <inheritdoc />
    public TcpPlan PlanTcp(IPAddress address, int port) => TcpPlan.DialAddress;

    /// <inheritdoc />
    public string? AllowsName(string name, int port) => "open";

    /// <inheritdoc />
    public string? AllowsUdp(IPAddress address, int port) => "open";

    /// <inheritdoc />
    public string? AllowsAddress(IPAddress address, int port) => "open";

    /// <inheritdoc />
    public bool Resolves(string name) => true;
}
