using System.Diagnostics;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>Warm pools: a ready sandbox handed out on create, refilled in the background, never reused.</summary>
public sealed class WarmPoolTests
{
    private static NodeFixture PoolNode(IsolationTier tier, int size) => new()
    {
        ExtraConfig = new Dictionary<string, string?>
        {
            ["Moat:Pools:0:Template"] = "base",
            ["Moat:Pools:0:Tier"] = tier.Name(),
            ["Moat:Pools:0:Size"] = size.ToString(),
            ["Moat:Pools:0:MemoryMiB"] = "256",
            ["Moat:Pools:0:DiskMiB"] = "256",
            ["Moat:Pools:0:Pids"] = "256",
        },
    };

    private static async Task WaitReadyAsync(SandboxManager manager, int ready)
    {
        for (int i = 0; i < 600; i++)
        {
            await manager.RefillPoolsAsync(CancellationToken.None);
            if (manager.PoolStatuses().Sum(p => p.Ready) >= ready)
                return;
            await Task.Delay(100);
        }
        throw new TimeoutException("the pool did not fill");
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_create_of_the_pools_shape_is_served_warm_and_the_pool_refills(IsolationTier tier)
    {
        var node = PoolNode(tier, 2);
        await node.InitializeAsync();
        try
        {
            var status = (await node.Manager.Runtimes.StatusAsync(CancellationToken.None)).Single(s => s.Tier == tier);
            Skip.IfNot(status.Usable, $"tier {tier.Name()} is not usable on this host: {status.Reason}");
            await WaitReadyAsync(node.Manager, 2);
            var clock = Stopwatch.StartNew();
            var claimed = await node.Manager.CreateAsync(NodeFixture.Spec(tier) with { Timeout = TimeSpan.FromSeconds(60), Metadata = new Dictionary<string, string> { ["who"] = "me" } }, NodeFixture.Tenant, CancellationToken.None);
            var ran = await node.Manager.RunCommandAsync(claimed.Id, NodeFixture.Tenant, new CommandSpec { Argv = ["echo", "warm"] }, default, CancellationToken.None);
            var elapsed = clock.Elapsed;
            Assert.Equal("warm\n", System.Text.Encoding.UTF8.GetString(ran.Stdout));
            var pool = node.Manager.PoolStatuses().Single();
            Assert.Equal(1, pool.Hits);
            // It is the tenant's now, with the tenant's lifetime and labels; no one else sees it.
            var record = await node.Manager.GetAsync(claimed.Id, NodeFixture.Tenant, CancellationToken.None);
            Assert.Equal("me", record.Spec.Metadata["who"]);
            Assert.True(record.ExpiresAt < DateTimeOffset.UtcNow.AddMinutes(2));
            await Assert.ThrowsAsync<MoatException>(() => node.Manager.GetAsync(claimed.Id, SandboxManager.PoolTenant + "x", CancellationToken.None));
            // Deleted, it is gone for good; the pool makes a new one instead.
            await node.Manager.DeleteAsync(claimed.Id, NodeFixture.Tenant, CancellationToken.None);
            await WaitReadyAsync(node.Manager, 2);
            Assert.DoesNotContain(claimed.Id, (await node.Manager.ListAsync(new Core.State.SandboxQuery { TenantId = SandboxManager.PoolTenant, States = [SandboxState.Running] }, CancellationToken.None)).Select(r => r.Id));
            // Another shape misses the pool and is made cold.
            var cold = await node.Manager.CreateAsync(NodeFixture.Spec(tier, memoryMiB: 300), NodeFixture.Tenant, CancellationToken.None);
            Assert.Equal(1, node.Manager.PoolStatuses().Single().Hits);
            await node.Manager.DeleteAsync(cold.Id, NodeFixture.Tenant, CancellationToken.None);
            _ = elapsed;
        }
        finally
        {
            await node.DisposeAsync();
        }
    }
}
