using System.Net;
using Moat.Core.Networking;
using Moat.Core.Sandboxes;

namespace Moat.Networking.Policy;

/// <summary>
/// Mode <c>allow</c>: only the listed destinations. Address and CIDR rules allow TCP and UDP to
/// those addresses (all ports, or the one named). Domain rules allow TCP only, recognised by name
/// — the TLS server name, the HTTP Host, or for other ports the name Moat itself resolved the
/// address for — and the proxy dials the name, never the address the sandbox chose. The
/// sandbox's resolver answers only names some rule covers.
/// </summary>
public sealed class AllowlistNetwork : ISandboxNetwork
{
    private readonly IReadOnlyList<EgressRule> _names;
    private readonly IReadOnlyList<EgressRule> _networks;
    private readonly HashSet<int> _namePorts;

    /// <summary>Creates the policy from a validated allow list.</summary>
    public AllowlistNetwork(NetworkPolicy policy)
    {
        Policy = policy;
        var rules = EgressRule.ParseAll(policy.Allow);
        _names = rules.Where(r => r.IsName).ToList();
        _networks = rules.Where(r => !r.IsName).ToList();
        _namePorts = [.. _names.SelectMany(r => r.Port is { } p ? [p] : EgressRule.WebPorts)];
    }

    /// <inheritdoc />
    public NetworkPolicy Policy { get; }

    /// <inheritdoc />
    public bool NeedsInterface => true;

    /// <inheritdoc />
    public TcpPlan PlanTcp(IPAddress address, int port)
    {
        if (AllowsAddress(address, port) is not null)
            return TcpPlan.DialAddress;
        return _namePorts.Contains(port) ? TcpPlan.NeedName : TcpPlan.Deny;
    }

    /// <inheritdoc />
    public string? AllowsName(string name, int port)
    {
        foreach (var rule in _names)
        {
            if (rule.AllowsPort(port) && rule.MatchesName(name))
                return rule.Text;
        }
        return null;
    }

    /// <inheritdoc />
    public string? AllowsUdp(IPAddress address, int port) => AllowsAddress(address, port);

    /// <inheritdoc />
    public string? AllowsAddress(IPAddress address, int port)
    {
        foreach (var rule in _networks)
        {
            if (rule.AllowsPort(port) && rule.MatchesAddress(address))
                return rule.Text;
        }
        return null;
    }

    /// <inheritdoc />
    public bool Resolves(string name)
    {
        foreach (var rule in _names)
        {
            if (rule.MatchesName(name))
                return true;
        }
        return false;
    }
}
