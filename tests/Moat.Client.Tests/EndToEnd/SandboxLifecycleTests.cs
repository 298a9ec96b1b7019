using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>Against a real server: create, inspect, list, extend, kill — and the errors on the way.</summary>
[Collection(ServerCollection.Name)]
public sealed class SandboxLifecycleTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [SkippableFact]
    public async Task Capabilities_list_every_tier_and_the_container_tier_is_usable()
    {
        var caps = await Client.GetCapabilitiesAsync(Timeout);

        Assert.Equal(["container", "gvisor", "microvm"], caps.Tiers.Select(t => t.Name).Order());
        Assert.True(caps.Tiers.Single(t => t.Name == "container").Usable);
        Assert.True(caps.Limits.MaxMemoryMiB > 0);
        Assert.True(await Client.IsHealthyAsync(Timeout));
    }

    [SkippableFact]
    public async Task A_sandbox_is_created_running_with_what_was_asked()
    {
        await using var sandbox = await Client.CreateSandboxAsync(new SandboxCreateOptions
        {
            Template = "base",
            Isolation = "container",
            MemoryMiB = 512,
            Cpus = 1,
            DiskMiB = 1024,
            Timeout = TimeSpan.FromMinutes(5),
            Env = { ["GREETING"] = "hi" },
            Metadata = { ["suite"] = "client-e2e" },
        }, Timeout);

        Assert.Equal("running", sandbox.Info.State);
        Assert.Equal("container", sandbox.Info.Isolation);
        Assert.Equal(512, sandbox.Info.Resources.MemoryMiB);
        Assert.Equal(1024, sandbox.Info.Resources.DiskMiB);
        Assert.Equal(["GREETING"], sandbox.Info.EnvKeys);
        Assert.InRange(sandbox.Info.ExpiresAt - sandbox.Info.CreatedAt, TimeSpan.FromSeconds(295), TimeSpan.FromSeconds(305));
        var greeting = await sandbox.Commands.RunAsync("echo $GREETING", Timeout);
        Assert.Equal("hi\n", greeting.Stdout);
        var info = await sandbox.GetInfoAsync(Timeout);
        Assert.Equal("running", info.State);
        Assert.NotNull(info.Usage);
    }

    [SkippableFact]
    public async Task List_filters_by_state_and_metadata()
    {
        var tag = Guid.NewGuid().ToString("N");
        var mine = await CreateAsync(o => o.Metadata["run"] = tag);
        var other = await CreateAsync(o => o.Metadata["run"] = "someone-else");

        var tagged = await Client.ListSandboxesAsync(metadata: new Dictionary<string, string> { ["run"] = tag }, cancellationToken: Timeout);
        var running = await Client.ListSandboxesAsync(state: "running", cancellationToken: Timeout);

        Assert.Equal(mine.Id, Assert.Single(tagged).Id);
        Assert.Contains(running, s => s.Id == mine.Id);
        Assert.Contains(running, s => s.Id == other.Id);
        Assert.All(running, s => Assert.Equal("running", s.State));
    }

    [SkippableFact]
    public async Task Timeout_extends_then_kill_ends_the_sandbox()
    {
        var sandbox = await CreateAsync(o => o.Timeout = TimeSpan.FromSeconds(60));
        var before = sandbox.Info.ExpiresAt;

        var extended = await sandbox.SetTimeoutAsync(TimeSpan.FromMinutes(10), Timeout);
        Assert.True(extended.ExpiresAt > before.AddMinutes(8), $"{extended.ExpiresAt} vs {before}");

        await sandbox.KillAsync(Timeout);

        var after = await Client.GetSandboxAsync(sandbox.Id, Timeout);
        Assert.Equal("stopped", after.State);
        Assert.NotNull(after.EndedAt);
        var exec = await Assert.ThrowsAsync<MoatConflictException>(() => sandbox.Commands.RunAsync("true", Timeout));
        Assert.Equal("sandbox_not_running", exec.Code);
        var timeout = await Assert.ThrowsAsync<MoatConflictException>(() => sandbox.SetTimeoutAsync(TimeSpan.FromMinutes(1), Timeout));
        Assert.Equal("sandbox_not_running", timeout.Code);
        await Assert.ThrowsAsync<MoatConflictException>(() => sandbox.Files.ReadTextAsync("/etc/hostname", Timeout));
        // Killing again, and disposing, are no errors.
        await sandbox.KillAsync(Timeout);
        await sandbox.DisposeAsync();
    }

    [SkippableFact]
    public async Task An_unknown_sandbox_is_not_found()
    {
        var get = await Assert.ThrowsAsync<MoatNotFoundException>(() => Client.GetSandboxAsync("sb00000000000000000x", Timeout));
        Assert.Equal("sandbox_not_found", get.Code);
        Assert.Equal(404, get.StatusCode);
        await Assert.ThrowsAsync<MoatNotFoundException>(() => Client.ConnectAsync("no-such-sandbox", Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => Client.KillSandboxAsync("sb00000000000000000x", Timeout));
    }

    [SkippableFact]
    public async Task A_bad_request_is_a_validation_error_with_the_servers_code()
    {
        var isolation = await Assert.ThrowsAsync<MoatValidationException>(() => Client.CreateSandboxAsync(new SandboxCreateOptions { Isolation = "hypervisor-of-dreams" }, Timeout));
        Assert.Equal("invalid_isolation", isolation.Code);
        Assert.Contains("hypervisor-of-dreams", isolation.Message);

        var memory = await Assert.ThrowsAsync<MoatValidationException>(() => Client.CreateSandboxAsync(new SandboxCreateOptions { Isolation = "container", MemoryMiB = 1 }, Timeout));
        Assert.Equal("invalid_memory", memory.Code);

        var state = await Assert.ThrowsAsync<MoatValidationException>(() => Client.ListSandboxesAsync(state: "sleeping", cancellationToken: Timeout));
        Assert.Equal("invalid_state", state.Code);
    }

    [SkippableFact]
    public async Task A_missing_or_unknown_key_is_an_authentication_error()
    {
        using var anonymous = new MoatClient(new MoatClientOptions { BaseUrl = Server.Url });
        using var stranger = Server.Client("moat_" + new string('0', 52));

        var none = await Assert.ThrowsAsync<MoatAuthenticationException>(() => anonymous.ListSandboxesAsync(cancellationToken: Timeout));
        var unknown = await Assert.ThrowsAsync<MoatAuthenticationException>(() => stranger.ListSandboxesAsync(cancellationToken: Timeout));

        Assert.Equal("unauthenticated", none.Code);
        Assert.Equal(401, unknown.StatusCode);
        Assert.True(await anonymous.IsHealthyAsync(Timeout));
    }
}
