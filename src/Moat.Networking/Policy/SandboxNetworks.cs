using Moat.Core.Networking;
using Moat.Core.Sandboxes;

namespace Moat.Networking.Policy;

/// <summary>The egress policy object for each network mode.</summary>
public static class SandboxNetworks
{
    /// <summary>The <see cref="ISandboxNetwork"/> that enforces <paramref name="policy"/>.</summary>
    public static ISandboxNetwork For(NetworkPolicy policy) => policy.Mode switch
    {
        NetworkMode.None => NoNetwork.Instance,
        NetworkMode.Open => OpenNetwork.Instance,
        NetworkMode.Allow => new AllowlistNetwork(policy),
        _ => throw new ArgumentOutOfRangeException(nameof(policy), policy.Mode, "unknown network mode"),
    };
}
