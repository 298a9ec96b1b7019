using System.Net.Http.Headers;
using System.Security.Cryptography;
using Microsoft.Extensions.DependencyInjection;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Moat.Server.Auth;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>What the tenancy, audit, metrics and usage tests share: an operator key, fresh tenants, raw HTTP.</summary>
internal static class TenancyKit
{
    private static string? _operatorKey;
    private static readonly SemaphoreSlim Gate = new(1, 1);

    /// <summary>An operator key of this server (minted behind the API once, as `moat serve` prints one at first start).</summary>
    public static async Task<string> OperatorKeyAsync(ServerFixture server)
    {
        await Gate.WaitAsync();
        try
        {
            if (_operatorKey is null)
            {
                var keys = server.Services.GetRequiredService<ApiKeyService>();
                var (_, key) = await keys.CreateAsync("default", Roles.Operator, "tests operator");
                _operatorKey = key;
            }
            return _operatorKey;
        }
        finally
        {
            Gate.Release();
        }
    }

    /// <summary>A new tenant with the given settings and an admin key of it.</summary>
    public static async Task<(TenantDto Tenant, string AdminKey)> NewTenantAsync(ServerFixture server, string prefix, QuotasDto? quotas = null, RateLimitsDto? rates = null, CancellationToken cancellationToken = default)
    {
        using var op = server.Client(await OperatorKeyAsync(server));
        var id = $"{prefix}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}";
        var tenant = await op.CreateTenantAsync(new CreateTenantRequest { Id = id, Name = prefix, Quotas = quotas, RateLimits = rates }, cancellationToken);
        var key = await op.CreateTenantKeyAsync(id, "admin", "admin", cancellationToken);
        return (tenant, key.Key!);
    }

    /// <summary>A raw HTTP client for the server with a key.</summary>
    public static HttpClient Http(ServerFixture server, string? key)
    {
        var http = new HttpClient { BaseAddress = server.Url, Timeout = TimeSpan.FromMinutes(2) };
        if (key is not null)
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return http;
    }

    /// <summary>A small container sandbox for a tenant's client (the caller deletes it).</summary>
    public static Task<Sandbox> SandboxAsync(MoatClient client, CancellationToken cancellationToken, Action<SandboxCreateOptions>? configure = null)
    {
        var options = new SandboxCreateOptions { Template = "base", Isolation = "container", MemoryMiB = 256, DiskMiB = 256, Cpus = 1, Timeout = TimeSpan.FromMinutes(5) };
        configure?.Invoke(options);
        return client.CreateSandboxAsync(options, cancellationToken);
    }
}
