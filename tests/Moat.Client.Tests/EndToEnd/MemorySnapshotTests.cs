using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// Against a real server and real runsc: memory snapshots resume running processes exactly, forks
/// of a live sandbox resume them each with its own identity, and tiers that cannot save memory say so.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class MemorySnapshotTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    // A process whose state lives only in its memory: a random token drawn at start and a counter;
    // it writes both to a file every 100 ms. A restored copy that had restarted would show a new
    // token and a counter from 1.
    private const string Counter =
        "nohup python3 -c \"import os, time\ntoken = os.urandom(8).hex()\ni = 0\nwhile True:\n    i += 1\n    open('/home/user/counter.tmp', 'w').write(f'{token} {i} {os.getpid()}')\n    os.replace('/home/user/counter.tmp', '/home/user/counter')\n    time.sleep(0.1)\n\" > /dev/null 2>&1 &";

    private const string Files =
        "set -e; mkdir -p /home/user/proj; head -c 200000 /dev/urandom > /home/user/proj/blob.bin; echo kept > /tmp/in-tmp.txt";

    private const string Fingerprint = "sha256sum /home/user/proj/blob.bin /tmp/in-tmp.txt";

    private async Task RequireMemorySnapshotsAsync(string tier)
    {
        var caps = await Client.GetCapabilitiesAsync(Timeout);
        var status = caps.Tiers.Single(t => t.Name == tier);
        Skip.IfNot(status.Usable, $"tier {tier} is not usable on this host: {status.Reason}");
        Skip.IfNot(status.SnapshotKinds.Contains("memory"), $"tier {tier} takes no memory snapshots here: {status.MemorySnapshotProblem}");
    }

    private static async Task<(string Token, long Count, string Pid)> ReadCounterAsync(Sandbox sandbox, CancellationToken cancellationToken)
    {
        var parts = (await sandbox.Files.ReadTextAsync("/home/user/counter", cancellationToken)).Split(' ');
        return (parts[0], long.Parse(parts[1]), parts[2]);
    }

    private static async Task<(string Token, long Count, string Pid)> WaitForTicksAsync(Sandbox sandbox, long after, CancellationToken cancellationToken)
    {
        for (int i = 0; i < 100; i++)
        {
            try
            {
                var state = await ReadCounterAsync(sandbox, cancellationToken);
                if (state.Count > after)
                    return state;
            }
            catch (MoatNotFoundException)
            {
            }
            await Task.Delay(100, cancellationToken);
        }
        throw new TimeoutException($"the counter in {sandbox.Id} did not pass {after}");
    }

    [SkippableFact]
    public async Task A_memory_snapshot_resumes_the_running_process_and_the_files_in_new_sandboxes()
    {
        await RequireMemorySnapshotsAsync("gvisor");
        var source = await CreateAsync(o => o.Isolation = "gvisor");
        Assert.Equal(0, (await source.Commands.RunAsync(Files, Timeout)).ExitCode);
        Assert.Equal(0, (await source.Commands.RunAsync(Counter, Timeout)).ExitCode);
        var before = await WaitForTicksAsync(source, 3, Timeout);
        var files = (await source.Commands.RunAsync(Fingerprint, Timeout)).Stdout;

        var name = "mem-" + Guid.NewGuid().ToString("N")[..8];
        var snapshot = await source.SnapshotAsync(name, "memory", Timeout);
        Assert.Equal("memory", snapshot.Kind);
        Assert.Equal("gvisor", snapshot.Isolation);
        // The source runs on, with a working agent, and its process keeps counting.
        var after = await WaitForTicksAsync(source, before.Count + 2, Timeout);
        Assert.Equal(before.Token, after.Token);
        Assert.Contains(await Client.ListSnapshotsAsync(Timeout), s => s.Name == name && s.Kind == "memory");
        await source.KillAsync(Timeout);

        // Restored after its source is gone: the same process (token, pid) counts on from where it
        // was saved, not from 1; the files, /tmp included, are the source's.
        var restored = await CreateAsync(o => { o.Isolation = "gvisor"; o.Template = name; });
        var first = await ReadCounterAsync(restored, Timeout);
        Assert.Equal(before.Token, first.Token);
        Assert.Equal(before.Pid, first.Pid);
        Assert.True(first.Count >= before.Count, $"restored at {first.Count}, saved after {before.Count}");
        var later = await WaitForTicksAsync(restored, first.Count + 2, Timeout);
        Assert.Equal(before.Token, later.Token);
        Assert.Equal(files, (await restored.Commands.RunAsync(Fingerprint, Timeout)).Stdout);
        await restored.KillAsync(Timeout);

        await Client.DeleteSnapshotAsync(name, Timeout);
        Assert.DoesNotContain(await Client.ListSnapshotsAsync(Timeout), s => s.Name == name);
        var gone = await Assert.ThrowsAsync<MoatNotFoundException>(() => CreateAsync(o => { o.Isolation = "gvisor"; o.Template = name; }));
        Assert.Equal("template_not_found", gone.Code);
    }

    [SkippableFact]
    public async Task Five_memory_forks_of_a_live_sandbox_resume_its_process_each_with_its_own_identity()
    {
        await RequireMemorySnapshotsAsync("gvisor");
        var source = await CreateAsync(o => o.Isolation = "gvisor");
        Assert.Equal(0, (await source.Commands.RunAsync(Counter, Timeout)).ExitCode);
        await source.Files.WriteAsync("/home/user/state.txt", "generation 1\n", Timeout);
        var saved = await WaitForTicksAsync(source, 2, Timeout);

        var forks = await source.ForkAsync(5, "memory", Timeout);
        try
        {
            Assert.Equal(5, forks.Count);
            Assert.Equal(6, forks.Select(f => f.Id).Append(source.Id).Distinct().Count());
            var random = new HashSet<string>();
            for (int i = 0; i < forks.Count; i++)
            {
                Assert.Equal("running", forks[i].Info.State);
                Assert.Equal(source.Id, forks[i].Info.Metadata["moat.forkedFrom"]);
                // The source's process, resumed.
                var state = await WaitForTicksAsync(forks[i], saved.Count, Timeout);
                Assert.Equal(saved.Token, state.Token);
                Assert.Equal("generation 1\n", await forks[i].Files.ReadTextAsync("/home/user/state.txt", Timeout));
                await forks[i].Files.WriteAsync("/home/user/state.txt", $"fork {i}\n", Timeout);
                random.Add((await forks[i].Commands.RunAsync("python3 -c 'import os; print(os.urandom(16).hex())'", Timeout)).Stdout);
            }
            Assert.Equal(5, random.Count);
            for (int i = 0; i < forks.Count; i++)
                Assert.Equal($"fork {i}\n", await forks[i].Files.ReadTextAsync("/home/user/state.txt", Timeout));
            Assert.Equal("generation 1\n", await source.Files.ReadTextAsync("/home/user/state.txt", Timeout));
            // The source itself still runs its process.
            Assert.Equal(saved.Token, (await WaitForTicksAsync(source, saved.Count, Timeout)).Token);
        }
        finally
        {
            foreach (var fork in forks)
                await fork.DisposeAsync();
        }
    }

    [SkippableFact]
    public async Task Tiers_that_cannot_save_memory_say_so_and_bad_kinds_are_refused()
    {
        var caps = await Client.GetCapabilitiesAsync(Timeout);
        var container = caps.Tiers.Single(t => t.Name == "container");
        Skip.IfNot(container.Usable, $"container tier not usable: {container.Reason}");
        Assert.Contains("filesystem", container.SnapshotKinds);
        Assert.DoesNotContain("memory", container.SnapshotKinds);
        Assert.False(string.IsNullOrEmpty(container.MemorySnapshotProblem));

        var source = await CreateAsync();
        var unsupported = await Assert.ThrowsAsync<MoatConflictException>(() => source.SnapshotAsync("mem-" + Guid.NewGuid().ToString("N")[..8], "memory", Timeout));
        Assert.Equal("snapshot_kind_unsupported", unsupported.Code);
        var forkUnsupported = await Assert.ThrowsAsync<MoatConflictException>(() => source.ForkAsync(2, "memory", Timeout));
        Assert.Equal("snapshot_kind_unsupported", forkUnsupported.Code);
        var bad = await Assert.ThrowsAsync<MoatValidationException>(() => source.SnapshotAsync("x-" + Guid.NewGuid().ToString("N")[..8], "everything", Timeout));
        Assert.Equal("invalid_kind", bad.Code);
        // The filesystem snapshot still works on that tier, under its explicit kind too.
        var fs = await source.SnapshotAsync("fs-" + Guid.NewGuid().ToString("N")[..8], "filesystem", Timeout);
        Assert.Equal("filesystem", fs.Kind);
        Assert.Null(fs.Isolation);
        await Client.DeleteSnapshotAsync(fs.Name, Timeout);
    }

    [SkippableFact]
    public async Task A_memory_snapshot_resumes_only_on_its_own_tier()
    {
        await RequireMemorySnapshotsAsync("gvisor");
        var source = await CreateAsync(o => o.Isolation = "gvisor");
        var name = "mem-" + Guid.NewGuid().ToString("N")[..8];
        await source.SnapshotAsync(name, "memory", Timeout);
        var mismatch = await Assert.ThrowsAsync<MoatConflictException>(() => CreateAsync(o => { o.Isolation = "container"; o.Template = name; }));
        Assert.Equal("snapshot_tier_mismatch", mismatch.Code);
        await Client.DeleteSnapshotAsync(name, Timeout);
    }
}
