using System.Collections.Frozen;
using System.Net;
using Moat.Core.Networking;

namespace Moat.Networking.Policy;

/// <summary>
/// What no sandbox reaches in any mode, checked on the address Moat is about to dial (after its
/// own resolution): the built-in denied ranges, the operator's extra ones, the sandbox pool (other
/// sandboxes and the gateway), every address of this host and its uplink, and the denied ports.
/// </summary>
public sealed class AddressGuard
{
    private readonly IReadOnlyList<IPNetwork> _extra;
    private readonly IPNetwork _pool;
    private readonly FrozenSet<int> _deniedPorts;
    private volatile FrozenSet<IPAddress> _hostAddresses = FrozenSet<IPAddress>.Empty;

    /// <summary>Creates the guard.</summary>
    public AddressGuard(NetworkOptions options, IPNetwork pool)
    {
        _extra = options.Deny.Select(d => d.Contains('/') ? IPNetwork.Parse(d) : new IPNetwork(IPAddress.Parse(d), IPAddress.Parse(d).AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 32 : 128)).ToList();
        _pool = pool;
        _deniedPorts = options.DeniedPorts.ToFrozenSet();
    }

    /// <summary>Replaces the set of this host's own addresses (refreshed by the controller).</summary>
    public void SetHostAddresses(IEnumerable<IPAddress> addresses) =>
        _hostAddresses = addresses.Select(Canonical).ToFrozenSet();

    /// <summary>Why <paramref name="address"/> is never a destination, or null.</summary>
    public string? Check(IPAddress address)
    {
        address = Canonical(address);
        if (DeniedRanges.Classify(address) is { } reason)
            return reason;
        if (_pool.BaseAddress.AddressFamily == address.AddressFamily && _pool.Contains(address))
            return "sandbox_network";
        if (_hostAddresses.Contains(address))
            return "host_address";
        foreach (var network in _extra)
        {
            if (network.BaseAddress.AddressFamily == address.AddressFamily && network.Contains(address))
                return "denied_by_operator";
        }
        return null;
    }

    /// <summary>Why <paramref name="address"/>:<paramref name="port"/> is never a destination, or null.</summary>
    public string? Check(IPAddress address, int port)
    {
        if (_deniedPorts.Contains(port))
            return port is 25 or 465 or 587 ? "smtp" : "denied_port";
        return Check(address);
    }

    private static IPAddress Canonical(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 && address.ScopeId != 0 ? new IPAddress(address.GetAddressBytes()) : address;
}
