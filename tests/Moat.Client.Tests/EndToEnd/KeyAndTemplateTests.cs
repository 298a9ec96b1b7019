using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>Against a real server: the built-in template, and API keys minted, used and revoked.</summary>
[Collection(ServerCollection.Name)]
public sealed class KeyAndTemplateTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [SkippableFact]
    public async Task The_base_template_is_listed()
    {
        var templates = await Client.ListTemplatesAsync(Timeout);

        Assert.Contains(templates, t => t.Name == "base");
    }

    [SkippableFact]
    public async Task A_minted_key_works_until_it_is_revoked()
    {
        var key = await Client.CreateKeyAsync("client-e2e", "member", Timeout);
        Assert.StartsWith("moat_", key.Key);
        using var member = Server.Client(key.Key);

        await member.ListSandboxesAsync(cancellationToken: Timeout);
        var forbidden = await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => member.ListKeysAsync(Timeout));
        Assert.Equal("admin_required", forbidden.Code);
        var listed = await Client.ListKeysAsync(Timeout);
        Assert.Contains(listed, k => k.Id == key.Id && k.Key is null && k.Role == "member");

        await Client.RevokeKeyAsync(key.Id, Timeout);

        await Assert.ThrowsAsync<MoatAuthenticationException>(() => member.ListSandboxesAsync(cancellationToken: Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => Client.RevokeKeyAsync("000000000000", Timeout));
    }

    [SkippableFact]
    public async Task A_read_only_key_cannot_create()
    {
        var key = await Client.CreateKeyAsync("reader", "read-only", Timeout);
        using var reader = Server.Client(key.Key);

        var ex = await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => reader.CreateSandboxAsync(new SandboxCreateOptions { Isolation = "container" }, Timeout));

        Assert.Equal("read_only_key", ex.Code);
        await Client.RevokeKeyAsync(key.Id, Timeout);
    }
}
