using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>Against a real server: filesystem snapshots (restore into new sandboxes) and forks.</summary>
[Collection(ServerCollection.Name)]
public sealed class SnapshotTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    // Changes of every kind on top of the template: a new binary file, a new directory tree, a
    // changed file, a deleted file (a whiteout), a symlink, modes and owners (user and root).
    private const string UserChanges =
        "set -e; mkdir -p /home/user/proj/src; printf 'print(42)\\n' > /home/user/proj/src/main.py; "
        + "head -c 300000 /dev/urandom > /home/user/blob.bin; chmod 0750 /home/user/proj; ln -s proj/src/main.py /home/user/link";

    private const string RootChanges =
        "set -e; echo changed >> /etc/issue; rm /etc/debian_version; mkdir -p /opt/app; chmod 1770 /opt/app";

    private const string Fingerprint =
        "cd /; sha256sum home/user/blob.bin home/user/proj/src/main.py etc/issue; readlink home/user/link; "
        + "stat -c '%a %U' home/user/proj opt/app; test -e etc/debian_version && echo still-there || echo deleted";

    [SkippableTheory]
    [InlineData("container")]
    [InlineData("gvisor")]
    public async Task A_snapshot_restores_every_change_into_new_sandboxes_and_outlives_its_source(string isolation)
    {
        var source = await CreateAsync(o => o.Isolation = isolation);
        var changed = await source.Commands.RunAsync(UserChanges, Timeout);
        Assert.True(changed.ExitCode == 0, changed.Stderr);
        changed = await source.Commands.RunAsync(RootChanges, new CommandOptions { User = "root" }, Timeout);
        Assert.True(changed.ExitCode == 0, changed.Stderr);
        var expected = (await source.Commands.RunAsync(Fingerprint, Timeout)).Stdout;
        Assert.Contains("deleted", expected);

        var name = "snap-" + Guid.NewGuid().ToString("N")[..8];
        var snapshot = await source.SnapshotAsync(name, Timeout);
        Assert.Equal(name, snapshot.Name);
        Assert.Equal("filesystem", snapshot.Kind);
        Assert.Equal(source.Id, snapshot.SandboxId);
        Assert.True(snapshot.ChangedEntries >= 6, $"captured {snapshot.ChangedEntries} entries");
        // The source kept running through it, unchanged.
        Assert.Equal("running", (await source.GetInfoAsync(Timeout)).State);
        Assert.Equal(expected, (await source.Commands.RunAsync(Fingerprint, Timeout)).Stdout);
        await source.KillAsync(Timeout);

        // Restore twice after the source is gone: both see exactly its files, and are independent.
        var first = await CreateAsync(o => { o.Isolation = isolation; o.Template = name; });
        var second = await CreateAsync(o => { o.Isolation = isolation; o.Template = name; });
        Assert.Equal(expected, (await first.Commands.RunAsync(Fingerprint, Timeout)).Stdout);
        await first.Files.WriteAsync("/home/user/proj/src/main.py", "print(1)\n", Timeout);
        Assert.Equal(expected, (await second.Commands.RunAsync(Fingerprint, Timeout)).Stdout);

        var listed = await Client.ListSnapshotsAsync(Timeout);
        Assert.Contains(listed, s => s.Name == name && s.SandboxId == source.Id);
        // Refused while sandboxes restored from it live; gone once they are.
        var inUse = await Assert.ThrowsAsync<MoatConflictException>(() => Client.DeleteSnapshotAsync(name, Timeout));
        Assert.Equal("template_in_use", inUse.Code);
        await first.KillAsync(Timeout);
        await second.KillAsync(Timeout);
        await Client.DeleteSnapshotAsync(name, Timeout);
        Assert.DoesNotContain(await Client.ListSnapshotsAsync(Timeout), s => s.Name == name);
        await Assert.ThrowsAsync<MoatNotFoundException>(() => CreateAsync(o => { o.Isolation = isolation; o.Template = name; }));
    }

    [SkippableFact]
    public async Task Five_forks_start_from_the_sources_files_and_each_goes_its_own_way()
    {
        var source = await CreateAsync();
        await source.Files.WriteAsync("/home/user/state.txt", "generation 1\n", Timeout);
        var forks = await source.ForkAsync(5, Timeout);
        try
        {
            Assert.Equal(5, forks.Count);
            Assert.Equal(6, forks.Select(f => f.Id).Append(source.Id).Distinct().Count()); // all new, none the source
            var seeds = new HashSet<string>();
            for (int i = 0; i < forks.Count; i++)
            {
                Assert.Equal("running", forks[i].Info.State);
                Assert.Equal(source.Id, forks[i].Info.Metadata["moat.forkedFrom"]);
                Assert.Equal("generation 1\n", await forks[i].Files.ReadTextAsync("/home/user/state.txt", Timeout));
                await forks[i].Files.WriteAsync("/home/user/state.txt", $"fork {i}\n", Timeout);
                seeds.Add((await forks[i].Commands.RunAsync("python3 -c 'import os; print(os.urandom(16).hex())'", Timeout)).Stdout);
            }
            // Each wrote only its own copy; the source and the others are untouched.
            for (int i = 0; i < forks.Count; i++)
                Assert.Equal($"fork {i}\n", await forks[i].Files.ReadTextAsync("/home/user/state.txt", Timeout));
            Assert.Equal("generation 1\n", await source.Files.ReadTextAsync("/home/user/state.txt", Timeout));
            Assert.Equal(5, seeds.Count);
            // A fork's hidden template is no snapshot of the tenant's.
            Assert.DoesNotContain(await Client.ListSnapshotsAsync(Timeout), s => s.Name.StartsWith('~'));
        }
        finally
        {
            foreach (var fork in forks)
                await fork.DisposeAsync();
        }
    }

    [SkippableFact]
    public async Task Bad_snapshot_and_fork_requests_are_refused_and_another_tenant_sees_nothing()
    {
        var source = await CreateAsync();
        var bad = await Assert.ThrowsAsync<MoatValidationException>(() => source.SnapshotAsync("../escape", Timeout));
        Assert.Equal("invalid_template_name", bad.Code);
        var count = await Assert.ThrowsAsync<MoatValidationException>(() => Client.ForkSandboxAsync(source.Id, 51, Timeout));
        Assert.Equal("invalid_count", count.Code);

        var name = "snap-" + Guid.NewGuid().ToString("N")[..8];
        await source.SnapshotAsync(name, Timeout);
        var taken = await Assert.ThrowsAsync<MoatConflictException>(() => source.SnapshotAsync(name, Timeout));
        Assert.Equal("template_exists", taken.Code);

        var keys = (Moat.Server.Auth.ApiKeyService)Server.Services.GetService(typeof(Moat.Server.Auth.ApiKeyService))!;
        var (_, key) = await keys.CreateAsync("tenant-snapshots-other", "admin", "other", cancellationToken: Timeout);
        using var other = Server.Client(key);
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.SnapshotSandboxAsync(source.Id, "stolen", Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.ForkSandboxAsync(source.Id, 1, Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.DeleteSnapshotAsync(name, Timeout));
        Assert.Empty(await other.ListSnapshotsAsync(Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.CreateSandboxAsync(new SandboxCreateOptions { Template = name, Isolation = "container" }, Timeout));

        await Client.DeleteSnapshotAsync(name, Timeout);
        var gone = await Assert.ThrowsAsync<MoatNotFoundException>(() => Client.DeleteSnapshotAsync(name, Timeout));
        Assert.Equal("snapshot_not_found", gone.Code);
    }
}
