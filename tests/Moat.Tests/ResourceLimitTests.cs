using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>Memory, processes, disk and CPU stop at the sandbox's own limits; the host is untouched.</summary>
public sealed class ResourceLimitTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_memory_bomb_is_killed_and_reported_as_oom(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, memoryMiB: 128);
        if (tier == IsolationTier.Gvisor)
        {
            // gVisor's Sentry is one host process holding all the sandbox's memory: the host's OOM
            // killer takes the whole sandbox, and the platform says so.
            try
            {
                var gone = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "x = []\nwhile True: x.append(bytearray(16 << 20))"] });
                // Or the Sentry refused the allocation (MemoryError), or the host's OOM killer took
                // only the command's ptrace stub: either way it stopped at the limit and the sandbox lives.
                Assert.True(gone.Raw.Exit.OomKilled || gone.Stderr.Contains("MemoryError"), $"exit {gone.ExitCode}: {gone.Stderr}");
                Assert.Equal("alive\n", (await ShAsync(sb.Id, "echo alive")).Stdout);
            }
            catch (Core.Errors.AgentUnavailableException)
            {
                var ended = await WaitForEndAsync(sb.Id, TimeSpan.FromSeconds(30));
                Assert.StartsWith(SandboxManager.OomReason, ended.StateReason);
            }
            return;
        }
        var ran = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "x = []\nwhile True: x.append(bytearray(16 << 20))"] });
        Assert.Equal(137, ran.ExitCode);
        Assert.Equal(9, ran.Raw.Exit.Signal);
        Assert.True(ran.Raw.Exit.OomKilled, "the exit should say the memory limit killed it");
        // The sandbox (and its agent) survived its own OOM.
        Assert.Equal("alive\n", (await ShAsync(sb.Id, "echo alive")).Stdout);
        var usage = await Manager.GetUsageAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.NotNull(usage);
        Assert.Equal(128L << 20, usage!.MemoryLimitBytes);
        Assert.True(usage.OomKills >= 1);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_fork_bomb_stops_at_the_pids_limit(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, pids: 64);
        if (tier == IsolationTier.Gvisor)
        {
            // With the ptrace platform every process inside is a host task of the Sentry's: at the
            // limit the Sentry itself cannot go on. The bomb is bounded, and the platform says why.
            try
            {
                await Manager.RunCommandAsync(sb.Id, Tenant, new CommandSpec { Shell = "bomb() { bomb | bomb & }; bomb; while :; do :; done", Timeout = TimeSpan.FromSeconds(3) }, default, CancellationToken.None);
                Assert.Equal("alive\n", (await ShAsync(sb.Id, "echo alive")).Stdout);
            }
            catch (Core.Errors.AgentUnavailableException)
            {
                var ended = await WaitForEndAsync(sb.Id, TimeSpan.FromSeconds(60));
                Assert.StartsWith(SandboxManager.PidsReason, ended.StateReason);
            }
            return;
        }
        var bomb = Manager.RunCommandAsync(sb.Id, Tenant, new CommandSpec { Shell = "bomb() { bomb | bomb & }; bomb; while :; do :; done", Timeout = TimeSpan.FromSeconds(3) }, default, CancellationToken.None);
        long peak = 0;
        while (!bomb.IsCompleted)
        {
            peak = Math.Max(peak, (await Manager.GetUsageAsync(sb.Id, Tenant, CancellationToken.None))!.Pids);
            await Task.Delay(100);
        }
        var ran = await bomb;
        // It never got past the limit; it ended (its own timeout, or the shell giving up when fork
        // failed) with everything it started gone, and the sandbox answers again.
        Assert.InRange(peak, 2, 64);
        Assert.True(ran.Exit.TimedOut || ran.Exit.ExitCode != 0, $"exit {ran.Exit.ExitCode}, timed out {ran.Exit.TimedOut}");
        Assert.Equal("alive\n", (await ShAsync(sb.Id, "echo alive")).Stdout);
        Assert.True((await Manager.GetUsageAsync(sb.Id, Tenant, CancellationToken.None))!.Pids < 10);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Filling_the_disk_stops_at_the_quota(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, diskMiB: 64);
        var ran = await ShAsync(sb.Id, "dd if=/dev/zero of=/home/user/fill bs=1M count=200 2>&1; echo rc=$?; df -m / | tail -1");
        Assert.Contains("No space left on device", ran.Stdout);
        var usage = await Manager.GetUsageAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.InRange(usage!.DiskLimitBytes, 61L << 20, 64L << 20); // ext4 keeps ~2% for metadata
        Assert.True(usage.DiskUsedBytes <= usage.DiskLimitBytes);
        // Inode exhaustion stops at the volume too, and the sandbox still works after cleanup.
        await ShAsync(sb.Id, "rm -f /home/user/fill");
        Assert.Equal("ok\n", (await ShAsync(sb.Id, "echo ok")).Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Open_files_are_limited(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var ran = await ShAsync(sb.Id, "ulimit -n");
        Assert.Equal("4096\n", ran.Stdout);
        var burst = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "import os\nfds=[]\ntry:\n  while True: fds.append(os.open('/dev/null', os.O_RDONLY))\nexcept OSError as e: print(len(fds) < 4096, e.errno)"] });
        Assert.Equal("True 24\n", burst.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Cpu_is_limited_to_the_requested_share(IsolationTier tier)
    {
        await RequireAsync(tier);
        var spec = NodeFixture.Spec(tier) with { Resources = new ResourceLimits { Cpus = 0.5, MemoryMiB = 256, DiskMiB = 256, Pids = 256 } };
        var sb = await Manager.CreateAsync(spec, Tenant, CancellationToken.None);
        try
        {
            var before = (await Manager.GetUsageAsync(sb.Id, Tenant, CancellationToken.None))!.CpuTime;
            // Two busy loops for two seconds of wall time: at most ~1 CPU-second at 0.5 CPUs.
            await ShAsync(sb.Id, "timeout 2 sh -c 'while :; do :; done' & timeout 2 sh -c 'while :; do :; done' & wait");
            var used = (await Manager.GetUsageAsync(sb.Id, Tenant, CancellationToken.None))!.CpuTime - before;
            Assert.InRange(used.TotalSeconds, 0.3, 1.4);
        }
        finally
        {
            await Manager.DeleteAsync(sb.Id, Tenant, CancellationToken.None);
        }
    }
}
