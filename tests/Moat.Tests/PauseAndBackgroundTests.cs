using System.Text;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>Pause and resume on every tier; commands that outlive their request and are re-attached later.</summary>
public sealed class PauseAndBackgroundTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_paused_sandbox_uses_no_cpu_keeps_its_files_and_resumes_exactly(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, timeoutSeconds: 300);
        // A counter that ticks while the sandbox runs.
        await Manager.StartBackgroundAsync(sb.Id, Tenant, new CommandSpec { Shell = "i=0; while :; do i=$((i+1)); echo $i > /home/user/counter.tmp; mv /home/user/counter.tmp /home/user/counter; done" }, CancellationToken.None);
        await Task.Delay(500);
        if (tier == IsolationTier.Microvm)
        {
            // Under TCG starting the shell can take longer than that: pause only once it ticks,
            // so that "goes on after resume" compares two real readings.
            for (int i = 0; i < 300 && (await ShAsync(sb.Id, "cat /home/user/counter 2>/dev/null")).Stdout.Length == 0; i++)
                await Task.Delay(100);
        }
        var paused = await Manager.PauseAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.Equal(SandboxState.Paused, paused.State);
        var cpuAtPause = (await Manager.Runtimes.Find(tier)!.ReadUsageAsync(paused.Instance!, CancellationToken.None))!.CpuTime;
        await Task.Delay(1500);
        var cpuLater = (await Manager.Runtimes.Find(tier)!.ReadUsageAsync(paused.Instance!, CancellationToken.None))!.CpuTime;
        // Host oracle: the cgroup's CPU time stays flat while frozen (a busy loop would add ~1.5 s).
        Assert.True((cpuLater - cpuAtPause).TotalMilliseconds < 100, $"CPU time grew by {(cpuLater - cpuAtPause).TotalMilliseconds} ms while paused");
        var refused = await Assert.ThrowsAsync<MoatException>(() => ShAsync(sb.Id, "true"));
        Assert.Equal(ErrorKind.Conflict, refused.Kind);
        Assert.Equal("sandbox_paused", (await Assert.ThrowsAsync<MoatException>(() => Manager.PauseAsync(sb.Id, Tenant, CancellationToken.None))).Code);
        // The lifetime clock stopped while paused.
        var resumed = await Manager.ResumeAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.Equal(SandboxState.Running, resumed.State);
        Assert.True(resumed.ExpiresAt - DateTimeOffset.UtcNow > TimeSpan.FromSeconds(290));
        var first = int.Parse((await ShAsync(sb.Id, "cat /home/user/counter")).Stdout);
        await Task.Delay(300);
        var second = int.Parse((await ShAsync(sb.Id, "cat /home/user/counter")).Stdout);
        Assert.True(second > first, "the counter goes on after resume");
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Repeated_pause_resume_cycles_keep_every_file(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        for (int cycle = 0; cycle < 5; cycle++)
        {
            await Manager.WriteFileAsync(sb.Id, Tenant, $"/home/user/cycle-{cycle}.txt", new MemoryStream(Encoding.UTF8.GetBytes($"cycle {cycle}")), null, 0, CancellationToken.None);
            await Manager.PauseAsync(sb.Id, Tenant, CancellationToken.None);
            await Manager.ResumeAsync(sb.Id, Tenant, CancellationToken.None);
        }
        var all = await ShAsync(sb.Id, "cat /home/user/cycle-*.txt");
        Assert.Equal("cycle 0cycle 1cycle 2cycle 3cycle 4", all.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_background_command_keeps_its_output_until_someone_attaches(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        int pid = await Manager.StartBackgroundAsync(sb.Id, Tenant, new CommandSpec { Shell = "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo done >&2; exit 4", Tag = "job" }, CancellationToken.None);
        Assert.True(pid > 1);
        var listed = await Manager.ListCommandsAsync(sb.Id, Tenant, CancellationToken.None);
        Assert.Contains(listed, p => p.Pid == pid && p.Tag == "job");
        await Task.Delay(2000); // it finishes while nobody listens
        await using var attached = await Manager.AttachCommandAsync(sb.Id, Tenant, pid, null, replay: true, CancellationToken.None);
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        await foreach (var chunk in attached.ReadOutputAsync())
            (chunk.Stream == Core.Agent.OutputStream.Stdout ? stdout : stderr).Append(Encoding.UTF8.GetString(chunk.Data.Span));
        var exit = await attached.WaitExitAsync();
        Assert.Equal("line 1\nline 2\nline 3\n", stdout.ToString());
        Assert.Equal("done\n", stderr.ToString());
        Assert.Equal(4, exit.ExitCode);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_background_command_can_be_signalled(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        int pid = await Manager.StartBackgroundAsync(sb.Id, Tenant, new CommandSpec { Argv = ["sleep", "300"] }, CancellationToken.None);
        await Manager.SignalCommandAsync(sb.Id, Tenant, pid, 9, CancellationToken.None);
        await using var attached = await Manager.AttachCommandAsync(sb.Id, Tenant, pid, null, replay: true, CancellationToken.None);
        var exit = await attached.WaitExitAsync();
        Assert.Equal(9, exit.Signal);
    }
}
