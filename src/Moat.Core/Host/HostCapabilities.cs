namespace Moat.Core.Host;

/// <summary>What the Moat process itself is allowed to do on this host (it may run with fewer than all capabilities).</summary>
public static class HostCapabilities
{
    private const int CapSysResource = 24;
    private static readonly Lazy<ulong> Effective = new(ReadEffective);

    /// <summary>Whether this process may lower OOM scores (CAP_SYS_RESOURCE).</summary>
    public static bool CanLowerOomScore => (Effective.Value & (1UL << CapSysResource)) != 0;

    /// <summary>Whether this process holds a capability.</summary>
    public static bool Has(int capability) => (Effective.Value & (1UL << capability)) != 0;

    private static ulong ReadEffective()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("CapEff:", StringComparison.Ordinal))
                return Convert.ToUInt64(line["CapEff:".Length..].Trim(), 16);
        }
        return 0;
    }
}
