using System.Net;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>Tenants managed by the operator key; keys per tenant listed by prefix, used, revoked at once.</summary>
[Collection(ServerCollection.Name)]
public sealed class TenancyTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [SkippableFact]
    public async Task The_operator_creates_lists_updates_and_deletes_a_tenant()
    {
        using var op = Server.Client(await TenancyKit.OperatorKeyAsync(Server));
        var id = "crud-" + Guid.NewGuid().ToString("N")[..8];

        var created = await op.CreateTenantAsync(new CreateTenantRequest { Id = id, Name = "Acme", Quotas = new QuotasDto { MaxSandboxes = 3, AllowedTiers = ["container"] }, RateLimits = new RateLimitsDto { RequestsPerMinute = 600 } }, Timeout);
        Assert.Equal(id, created.Id);
        Assert.Equal(3, created.Quotas.MaxSandboxes);
        Assert.Contains(await op.ListTenantsAsync(Timeout), t => t.Id == id && t.Name == "Acme");
        var dup = await Assert.ThrowsAsync<MoatConflictException>(() => op.CreateTenantAsync(new CreateTenantRequest { Id = id }, Timeout));
        Assert.Equal("tenant_exists", dup.Code);
        var bad = await Assert.ThrowsAsync<MoatValidationException>(() => op.CreateTenantAsync(new CreateTenantRequest { Id = "Not Valid!" }, Timeout));
        Assert.Equal("invalid_tenant_id", bad.Code);
        var badQuota = await Assert.ThrowsAsync<MoatValidationException>(() => op.CreateTenantAsync(new CreateTenantRequest { Quotas = new QuotasDto { AllowedTiers = ["docker"] } }, Timeout));
        Assert.Equal("invalid_quota", badQuota.Code);

        var updated = await op.UpdateTenantAsync(id, new UpdateTenantRequest { Quotas = new QuotasDto { MaxVcpus = 4 } }, Timeout);
        Assert.Null(updated.Quotas.MaxSandboxes);
        Assert.Equal(4, updated.Quotas.MaxVcpus);
        Assert.Equal(600, updated.RateLimits.RequestsPerMinute);
        Assert.Equal(4, (await op.GetTenantAsync(id, Timeout)).Quotas.MaxVcpus);

        await op.DeleteTenantAsync(id, Timeout);
        await Assert.ThrowsAsync<MoatNotFoundException>(() => op.GetTenantAsync(id, Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => op.DeleteTenantAsync(id, Timeout));
    }

    [SkippableFact]
    public async Task Only_the_operator_key_manages_tenants()
    {
        var (tenant, adminKey) = await TenancyKit.NewTenantAsync(Server, "notop", cancellationToken: Timeout);
        using var admin = Server.Client(adminKey);

        var list = await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => admin.ListTenantsAsync(Timeout));
        Assert.Equal("operator_required", list.Code);
        await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => admin.CreateTenantAsync(new CreateTenantRequest { Id = "x-" + tenant.Id }, Timeout));
        await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => admin.UpdateTenantAsync(tenant.Id, new UpdateTenantRequest { Quotas = new QuotasDto() }, Timeout));
        var mint = await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => admin.CreateKeyAsync("escalate", "operator", Timeout));
        Assert.Equal("operator_required", mint.Code);
    }

    [SkippableFact]
    public async Task Keys_are_listed_by_prefix_with_last_use_and_a_revoked_key_fails_on_its_next_request()
    {
        var (tenant, adminKey) = await TenancyKit.NewTenantAsync(Server, "keys", cancellationToken: Timeout);
        using var op = Server.Client(await TenancyKit.OperatorKeyAsync(Server));
        using var admin = Server.Client(adminKey);
        var member = await admin.CreateKeyAsync("worker", "member", Timeout);
        using var memberClient = Server.Client(member.Key);

        // Warm the server's key cache with a successful request, then revoke: the very next request fails.
        await memberClient.ListSandboxesAsync(cancellationToken: Timeout);
        var listed = await op.ListTenantKeysAsync(tenant.Id, Timeout);
        var entry = Assert.Single(listed, k => k.Id == member.Id);
        Assert.Null(entry.Key);
        Assert.StartsWith("moat_" + member.Id, entry.Prefix);
        // The listed prefix identifies the key; the 40 secret digits after it are never shown again.
        Assert.StartsWith(entry.Prefix, member.Key);
        Assert.Equal(40, member.Key!.Length - entry.Prefix.Length);
        Assert.NotNull(entry.LastUsedAt);
        Assert.Null(entry.RevokedAt);

        await admin.RevokeKeyAsync(member.Id, Timeout);

        await Assert.ThrowsAsync<MoatAuthenticationException>(() => memberClient.ListSandboxesAsync(cancellationToken: Timeout));
        Assert.NotNull(Assert.Single(await op.ListTenantKeysAsync(tenant.Id, Timeout), k => k.Id == member.Id).RevokedAt);
    }

    [SkippableFact]
    public async Task Deleting_a_tenant_revokes_its_keys_at_once_and_refuses_while_it_has_sandboxes()
    {
        var (tenant, adminKey) = await TenancyKit.NewTenantAsync(Server, "gone", cancellationToken: Timeout);
        using var op = Server.Client(await TenancyKit.OperatorKeyAsync(Server));
        using var admin = Server.Client(adminKey);
        await using (var sandbox = await TenancyKit.SandboxAsync(admin, Timeout))
        {
            var busy = await Assert.ThrowsAsync<MoatConflictException>(() => op.DeleteTenantAsync(tenant.Id, Timeout));
            Assert.Equal("tenant_has_sandboxes", busy.Code);
        }

        await op.DeleteTenantAsync(tenant.Id, Timeout);

        await Assert.ThrowsAsync<MoatAuthenticationException>(() => admin.ListSandboxesAsync(cancellationToken: Timeout));
        using var http = TenancyKit.Http(Server, adminKey);
        var response = await http.GetAsync("v1/sandboxes", Timeout);
        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
    }

    [SkippableFact]
    public async Task The_operator_mints_keys_for_a_tenant_and_they_act_within_it()
    {
        var (tenant, adminKey) = await TenancyKit.NewTenantAsync(Server, "mint", cancellationToken: Timeout);
        using var op = Server.Client(await TenancyKit.OperatorKeyAsync(Server));
        var reader = await op.CreateTenantKeyAsync(tenant.Id, "ro", "read-only", Timeout);
        Assert.Equal(tenant.Id, reader.TenantId);
        using var readerClient = Server.Client(reader.Key);

        var denied = await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => TenancyKit.SandboxAsync(readerClient, Timeout));
        Assert.Equal("read_only_key", denied.Code);
        await Assert.ThrowsAsync<MoatNotFoundException>(() => op.CreateTenantKeyAsync("no-such-tenant-" + tenant.Id, "x", "admin", Timeout));
        Assert.NotEmpty(adminKey);
    }
}
