using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>What only the microVM tier promises: a guest kernel of its own, and a VMM whose failures stay its own.</summary>
public sealed class MicrovmTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    private const IsolationTier Vm = IsolationTier.Microvm;

    [SkippableFact]
    public async Task The_kernel_inside_is_the_guests_own()
    {
        var sb = await CreateAsync(Vm);
        var inside = (await ShAsync(sb.Id, "uname -r")).Stdout.Trim();
        var host = File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        var status = (await Manager.Runtimes.StatusAsync(CancellationToken.None)).Single(s => s.Tier == Vm);
        Assert.Equal(status.Details["kernel"], inside);
        Assert.NotEqual(host, inside);
        // Network mode none: no NIC at all, loopback only, and up (the agent brings it up).
        var links = (await ShAsync(sb.Id, "ls /sys/class/net; cat /sys/class/net/lo/flags")).Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["lo", "0x9"], links);
    }
}
