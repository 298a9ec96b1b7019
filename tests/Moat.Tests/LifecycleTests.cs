using Moat.Core.Errors;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>Sandbox lifetimes, teardown without leftovers, failures of the agent — on every tier.</summary>
public sealed class LifecycleTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    private string RuncRoot => Path.Combine(Node.DataDirectory, "runc-state");

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Teardown_leaves_nothing_on_the_host(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var instance = await InstanceAsync(sb.Id);
        await ShAsync(sb.Id, "sleep 1000 & setsid sleep 1000 & echo x > /tmp/file");
        Assert.NotEmpty(HostOracle.Leftovers(instance, RuncRoot));
        await Manager.DeleteAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.Empty(HostOracle.Leftovers(instance, RuncRoot));
        var record = await Manager.GetAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.Equal(SandboxState.Stopped, record.State);
        Assert.Equal("deleted", record.StateReason);
        // Deleting again is not an error; using it is a conflict.
        await Manager.DeleteAsync(sb.Id, Tenant, CancellationToken.None);
        var ex = await Assert.ThrowsAsync<MoatException>(() => ShAsync(sb.Id, "true"));
        Assert.Equal(ErrorKind.Conflict, ex.Kind);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task The_lifetime_ends_the_sandbox_and_everything_in_it(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, timeoutSeconds: 2);
        var instance = await InstanceAsync(sb.Id);
        // Background, setsid'd, SIGTERM-ignoring processes: none may outlive the deadline.
        await ShAsync(sb.Id, "nohup sleep 1000 >/dev/null 2>&1 & setsid sh -c 'trap \"\" TERM; sleep 1000' >/dev/null 2>&1 & echo started");
        var ended = await WaitForEndAsync(sb.Id, TimeSpan.FromSeconds(30));
        Assert.Equal(SandboxState.Stopped, ended.State);
        Assert.Equal("timeout", ended.StateReason);
        Assert.Empty(HostOracle.Leftovers(instance, RuncRoot));
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task The_lifetime_can_be_extended(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, timeoutSeconds: 2);
        await Manager.SetTimeoutAsync(sb.Id, Tenant, TimeSpan.FromSeconds(60), CancellationToken.None);
        await Task.Delay(3000);
        await Manager.ReapExpiredAsync(CancellationToken.None);
        Assert.Equal("alive\n", (await ShAsync(sb.Id, "echo alive")).Stdout);
        var record = await Manager.GetAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.True(record.ExpiresAt > DateTimeOffset.UtcNow + TimeSpan.FromSeconds(50));
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task With_onTimeout_pause_the_lifetime_end_pauses_and_a_resume_keeps_the_files(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, timeoutSeconds: 120);
        await ShAsync(sb.Id, "echo kept > /home/user/kept.txt");
        var set = await Manager.SetTimeoutAsync(sb.Id, Tenant, TimeSpan.FromSeconds(1), CancellationToken.None, TimeoutAction.Pause);
        Assert.Equal(TimeoutAction.Pause, set.Spec.OnTimeout);
        await Task.Delay(1500);
        await Manager.ReapExpiredAsync(CancellationToken.None);
        var paused = await Manager.GetAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.Equal(SandboxState.Paused, paused.State);
        Assert.Equal("timeout", paused.StateReason);
        // Host oracle: the runtime instance is still there (paused, not torn down).
        Assert.NotNull(await Manager.Runtimes.Find(tier)!.ReadUsageAsync(paused.Instance!, CancellationToken.None));
        // Reaping again leaves a paused sandbox alone; a new lifetime set while paused counts from the resume.
        await Manager.ReapExpiredAsync(CancellationToken.None);
        await Manager.SetTimeoutAsync(sb.Id, Tenant, TimeSpan.FromSeconds(60), CancellationToken.None);
        var resumed = await Manager.ResumeAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.Equal(SandboxState.Running, resumed.State);
        Assert.Null(resumed.StateReason);
        Assert.True(resumed.ExpiresAt > DateTimeOffset.UtcNow + TimeSpan.FromSeconds(50));
        Assert.Equal("kept\n", (await ShAsync(sb.Id, "cat /home/user/kept.txt")).Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Killing_the_agent_marks_the_sandbox_failed_and_cleans_it(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var instance = await InstanceAsync(sb.Id);
        // From the host: kill the sandbox's init (the agent) outright.
        Assert.NotNull(instance.Pid);
        Core.Host.Linux.Kill(instance.Pid!.Value, 9);
        var ended = await WaitForEndAsync(sb.Id, TimeSpan.FromSeconds(30));
        Assert.Equal(SandboxState.Failed, ended.State);
        Assert.StartsWith("agent_", ended.StateReason);
        Assert.Empty(HostOracle.Leftovers(instance, RuncRoot));
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Twenty_sandboxes_run_at_once(IsolationTier tier)
    {
        await RequireAsync(tier);
        var created = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => CreateAsync(tier)));
        var outputs = await Task.WhenAll(created.Select(sb => ShAsync(sb.Id, "echo $(hostname) && cat /proc/1/cmdline | tr '\\0' ' '")));
        Assert.All(outputs, o => Assert.Equal(0, o.ExitCode));
        Assert.Equal(20, created.Select(s => s.Id).Distinct().Count());
        // Each sandbox is its own world: a file written in one is absent in the others.
        await ShAsync(created[0].Id, "echo secret > /tmp/only-here");
        var others = await Task.WhenAll(created.Skip(1).Select(sb => ShAsync(sb.Id, "test -e /tmp/only-here && echo leak || echo clean")));
        Assert.All(others, o => Assert.Equal("clean\n", o.Stdout));
    }

    [Fact]
    public async Task Another_tenants_sandbox_does_not_exist()
    {
        var tier = (await Manager.Runtimes.StatusAsync(CancellationToken.None)).First(s => s.Usable).Tier;
        var sb = await CreateAsync(tier);
        foreach (var action in new Func<Task>[]
        {
            () => Manager.GetAsync(sb.Id, "tenant-b", CancellationToken.None),
            () => Manager.DeleteAsync(sb.Id, "tenant-b", CancellationToken.None),
            () => Manager.RunCommandAsync(sb.Id, "tenant-b", new CommandSpec { Argv = ["true"] }, default, CancellationToken.None),
            () => Manager.OpenFileAsync(sb.Id, "tenant-b", "/etc/passwd", null, CancellationToken.None),
            () => Manager.SetTimeoutAsync(sb.Id, "tenant-b", TimeSpan.FromSeconds(10), CancellationToken.None),
        })
        {
            var ex = await Assert.ThrowsAsync<MoatException>(action);
            Assert.Equal(ErrorKind.NotFound, ex.Kind);
        }
        Assert.Empty(await Manager.ListAsync(new Core.State.SandboxQuery { TenantId = "tenant-b" }, CancellationToken.None));
        Assert.Equal("ok\n", (await ShAsync(sb.Id, "echo ok")).Stdout);
    }
}
