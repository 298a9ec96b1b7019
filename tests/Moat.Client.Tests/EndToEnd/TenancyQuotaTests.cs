using System.Net;
using System.Text;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>Per-tenant quotas (422 naming the quota, never clamped) and rate limits (429 with Retry-After), at their edges.</summary>
[Collection(ServerCollection.Name)]
public sealed class TenancyQuotaTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [SkippableFact]
    public async Task Each_quota_refuses_one_step_over_its_edge_and_admits_exactly_at_it()
    {
        var quotas = new QuotasDto { MaxSandboxes = 1, MaxVcpus = 1.5, MaxMemoryMiB = 320, MaxDiskMiB = 300, MaxLifetimeSeconds = 600, AllowedTiers = ["container"] };
        var (tenant, key) = await TenancyKit.NewTenantAsync(Server, "quota", quotas, cancellationToken: Timeout);
        using var client = Server.Client(key);
        void AtEdge(SandboxCreateOptions o)
        {
            o.Cpus = 1.5;
            o.MemoryMiB = 320;
            o.DiskMiB = 300;
            o.Timeout = TimeSpan.FromSeconds(600);
        }

        async Task Refused(string code, Action<SandboxCreateOptions> change)
        {
            var ex = await Assert.ThrowsAsync<MoatQuotaExceededException>(() => TenancyKit.SandboxAsync(client, Timeout, o => { AtEdge(o); change(o); }));
            Assert.Equal(code, ex.Code);
            Assert.Equal(422, ex.StatusCode);
        }
        await Refused("quota_vcpus", o => o.Cpus = 1.6);
        await Refused("quota_memory", o => o.MemoryMiB = 321);
        await Refused("quota_disk", o => o.DiskMiB = 301);
        await Refused("quota_lifetime", o => o.Timeout = TimeSpan.FromSeconds(601));
        await Refused("tier_not_allowed", o => o.Isolation = "gvisor");
        Assert.Empty(await client.ListSandboxesAsync(cancellationToken: Timeout));

        await using (var sandbox = await TenancyKit.SandboxAsync(client, Timeout, AtEdge))
        {
            // Exactly what was asked for: nothing clamped.
            var info = await sandbox.GetInfoAsync(Timeout);
            Assert.Equal(1.5, info.Resources.Cpus);
            Assert.Equal(320, info.Resources.MemoryMiB);
            Assert.Equal(300, info.Resources.DiskMiB);
            Assert.Equal(600, info.TimeoutSeconds);

            var second = await Assert.ThrowsAsync<MoatQuotaExceededException>(() => TenancyKit.SandboxAsync(client, Timeout, o => { o.Cpus = 0.1; o.MemoryMiB = 64; o.DiskMiB = 64; }));
            Assert.Equal("quota_sandboxes", second.Code);
            Assert.Contains("quota is 1", second.Message);

            // An extension cannot carry the sandbox past its maximum lifetime; one within it is fine.
            var extend = await Assert.ThrowsAsync<MoatQuotaExceededException>(() => sandbox.SetTimeoutAsync(TimeSpan.FromSeconds(900), Timeout));
            Assert.Equal("quota_lifetime", extend.Code);
            await sandbox.SetTimeoutAsync(TimeSpan.FromSeconds(300), Timeout);
        }

        // Deleted: its share is free again.
        await using var again = await TenancyKit.SandboxAsync(client, Timeout, AtEdge);
        Assert.Equal("running", (await again.GetInfoAsync(Timeout)).State);
        Assert.NotNull(tenant.Id);
    }

    [SkippableFact]
    public async Task Parallel_creates_cannot_together_pass_the_sandbox_quota()
    {
        var (_, key) = await TenancyKit.NewTenantAsync(Server, "race", new QuotasDto { MaxSandboxes = 2 }, cancellationToken: Timeout);
        using var client = Server.Client(key);

        var attempts = Enumerable.Range(0, 5).Select(async _ =>
        {
            try
            {
                return (Sandbox: await TenancyKit.SandboxAsync(client, Timeout, o => { o.MemoryMiB = 128; o.DiskMiB = 64; }), Error: (MoatApiException?)null);
            }
            catch (MoatQuotaExceededException ex)
            {
                return (Sandbox: (Sandbox?)null, Error: (MoatApiException?)ex);
            }
        }).ToList();
        var results = await Task.WhenAll(attempts);
        try
        {
            Assert.Equal(2, results.Count(r => r.Sandbox is not null));
            Assert.All(results.Where(r => r.Error is not null), r => Assert.Equal("quota_sandboxes", r.Error!.Code));
            Assert.Equal(2, (await client.ListSandboxesAsync(state: "running", cancellationToken: Timeout)).Count);
        }
        finally
        {
            foreach (var r in results)
            {
                if (r.Sandbox is not null)
                    await r.Sandbox.DisposeAsync();
            }
        }
    }

    [SkippableFact]
    public async Task The_create_rate_answers_429_with_retry_after_one_past_the_limit()
    {
        var (_, key) = await TenancyKit.NewTenantAsync(Server, "crate", rates: new RateLimitsDto { CreatesPerMinute = 2 }, cancellationToken: Timeout);
        var (_, otherKey) = await TenancyKit.NewTenantAsync(Server, "crate2", rates: new RateLimitsDto { CreatesPerMinute = 2 }, cancellationToken: Timeout);
        using var http = TenancyKit.Http(Server, key);
        // Invalid creates cost a token too (the limiter runs before the handler) and start nothing.
        StringContent Bogus() => new("""{"isolation":"bogus"}""", Encoding.UTF8, "application/json");

        Assert.Equal(HttpStatusCode.BadRequest, (await http.PostAsync("v1/sandboxes", Bogus(), Timeout)).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await http.PostAsync("v1/sandboxes", Bogus(), Timeout)).StatusCode);
        var limited = await http.PostAsync("v1/sandboxes", Bogus(), Timeout);

        Assert.Equal(HttpStatusCode.TooManyRequests, limited.StatusCode);
        Assert.Contains("create_rate_limited", await limited.Content.ReadAsStringAsync(Timeout));
        var retry = Assert.Single(limited.Headers.GetValues("Retry-After"));
        Assert.InRange(int.Parse(retry, System.Globalization.CultureInfo.InvariantCulture), 1, 30);
        // Other requests of the tenant, and other tenants' creates, are not affected.
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("v1/sandboxes", Timeout)).StatusCode);
        using var other = TenancyKit.Http(Server, otherKey);
        Assert.Equal(HttpStatusCode.BadRequest, (await other.PostAsync("v1/sandboxes", Bogus(), Timeout)).StatusCode);
    }

    [SkippableFact]
    public async Task The_request_rate_answers_429_one_past_the_limit_and_a_raised_limit_applies_at_once()
    {
        var (tenant, key) = await TenancyKit.NewTenantAsync(Server, "rrate", rates: new RateLimitsDto { RequestsPerMinute = 5 }, cancellationToken: Timeout);
        using var http = TenancyKit.Http(Server, key);

        for (int i = 0; i < 5; i++)
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("v1/sandboxes", Timeout)).StatusCode);
        var limited = await http.GetAsync("v1/sandboxes", Timeout);

        Assert.Equal(HttpStatusCode.TooManyRequests, limited.StatusCode);
        Assert.Contains("\"rate_limited\"", await limited.Content.ReadAsStringAsync(Timeout));
        Assert.InRange(int.Parse(Assert.Single(limited.Headers.GetValues("Retry-After")), System.Globalization.CultureInfo.InvariantCulture), 1, 12);
        using var client = Server.Client(key);
        var typed = await Assert.ThrowsAsync<MoatRateLimitedException>(() => client.ListSandboxesAsync(cancellationToken: Timeout));
        Assert.NotNull(typed.RetryAfter);

        using var op = Server.Client(await TenancyKit.OperatorKeyAsync(Server));
        await op.UpdateTenantAsync(tenant.Id, new UpdateTenantRequest { RateLimits = new RateLimitsDto { RequestsPerMinute = 1000 } }, Timeout);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("v1/sandboxes", Timeout)).StatusCode);
    }
}
