using System.Net;
using Moat.Client.Tests.Infrastructure;

namespace Moat.Client.Tests.Unit;

/// <summary>A disposed sandbox is killed — once, tolerating that it may already be gone.</summary>
public sealed class SandboxDisposalTests
{
    [Fact]
    public async Task Dispose_kills_the_sandbox_once()
    {
        var handler = StubHandler.WithSandbox(_ => new HttpResponseMessage(HttpStatusCode.NoContent));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        await sandbox.DisposeAsync();
        await sandbox.DisposeAsync();

        var kill = handler.Single();
        Assert.Equal(HttpMethod.Delete, kill.Method);
        Assert.Equal("/v1/sandboxes/sb0123456789abcdefgh", kill.Uri.AbsolutePath);
    }

    [Theory]
    [InlineData(HttpStatusCode.NotFound, "sandbox_not_found")]
    [InlineData(HttpStatusCode.Conflict, "sandbox_not_running")]
    public async Task Dispose_ignores_a_sandbox_that_is_already_gone(HttpStatusCode status, string code)
    {
        var handler = StubHandler.WithSandbox(_ => StubHandler.Error(status, code, "gone"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        await sandbox.DisposeAsync();

        Assert.Single(handler.Calls);
    }

    [Fact]
    public async Task Dispose_reports_other_failures()
    {
        var handler = StubHandler.WithSandbox(_ => StubHandler.Error(HttpStatusCode.InternalServerError, "internal", "boom"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        var ex = await Assert.ThrowsAsync<MoatApiException>(() => sandbox.DisposeAsync().AsTask());
        Assert.Equal("internal", ex.Code);
    }

    [Fact]
    public async Task Dispose_leaves_the_sandbox_running_when_asked()
    {
        var handler = StubHandler.WithSandbox(_ => new HttpResponseMessage(HttpStatusCode.NoContent));
        using var client = StubHandler.Client(handler);

        await using (var sandbox = await client.ConnectAsync(StubHandler.SandboxId))
            sandbox.KillOnDispose = false;

        Assert.Empty(handler.Calls);
    }

    [Fact]
    public async Task Explicit_kill_reports_a_missing_sandbox()
    {
        var handler = StubHandler.WithSandbox(_ => StubHandler.Error(HttpStatusCode.NotFound, "sandbox_not_found", "sandbox 'x' does not exist"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        sandbox.KillOnDispose = false;

        await Assert.ThrowsAsync<MoatNotFoundException>(() => sandbox.KillAsync());
    }
}
