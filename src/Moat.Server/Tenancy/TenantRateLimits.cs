using System.Globalization;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.RateLimiting;
using Moat.Server.Auth;
using Moat.Server.Errors;

namespace Moat.Server.Tenancy;

/// <summary>
/// Per-tenant request and create rates with ASP.NET Core's rate limiter: one token bucket per
/// tenant for all its requests, another for sandbox creations. The partition key carries the
/// limit itself, so a changed limit takes effect with the next request. Refusals are 429 with
/// Retry-After.
/// </summary>
internal static class TenantRateLimits
{
    public static void Configure(RateLimiterOptions options)
    {
        options.RejectionStatusCode = StatusCodes.Status429TooManyRequests;
        options.GlobalLimiter = PartitionedRateLimiter.CreateChained(
            PartitionedRateLimiter.Create<HttpContext, string>(context => Partition(context, creates: false)),
            PartitionedRateLimiter.Create<HttpContext, string>(context => Partition(context, creates: true)));
        options.OnRejected = async (rejected, cancellationToken) =>
        {
            var context = rejected.HttpContext;
            int retry = rejected.Lease.TryGetMetadata(MetadataName.RetryAfter, out var after) ? Math.Max(1, (int)Math.Ceiling(after.TotalSeconds)) : 1;
            context.Response.Headers.RetryAfter = retry.ToString(CultureInfo.InvariantCulture);
            bool create = IsCreate(context.Request);
            await ErrorWriter.WriteAsync(context, StatusCodes.Status429TooManyRequests, create ? "create_rate_limited" : "rate_limited",
                $"this tenant's {(create ? "sandbox create" : "request")} rate limit is reached; retry after {retry} s").ConfigureAwait(false);
        };
    }

    private static RateLimitPartition<string> Partition(HttpContext context, bool creates)
    {
        if (context.Items[typeof(Caller)] is not Caller caller)
            return RateLimitPartition.GetNoLimiter("");
        if (creates && !IsCreate(context.Request))
            return RateLimitPartition.GetNoLimiter("");
        var tenants = context.RequestServices.GetService(typeof(TenantService)) as TenantService;
        var limits = tenants?.CachedSettings(caller.TenantId)?.RateLimits;
        int? perMinute = creates ? limits?.CreatesPerMinute : limits?.RequestsPerMinute;
        if (perMinute is not { } n)
            return RateLimitPartition.GetNoLimiter("");
        return RateLimitPartition.GetTokenBucketLimiter($"{caller.TenantId}|{(creates ? "c" : "r")}|{n}", _ => Bucket(n));
    }

    /// <summary>A bucket of <paramref name="perMinute"/> tokens, refilled evenly over the minute.</summary>
    private static TokenBucketRateLimiterOptions Bucket(int perMinute)
    {
        // Refill as often as whole tokens allow: one token every 60/n s (n ≤ 60), else n/60 per second.
        var (period, tokens) = perMinute <= 60 ? (TimeSpan.FromSeconds(60.0 / perMinute), 1) : (TimeSpan.FromSeconds(1), perMinute / 60);
        return new TokenBucketRateLimiterOptions
        {
            TokenLimit = perMinute,
            TokensPerPeriod = tokens,
            ReplenishmentPeriod = period,
            QueueLimit = 0,
            AutoReplenishment = true,
        };
    }

    /// <summary>A sandbox creation on any surface: the native API, one-shot runs, E2B's control plane.</summary>
    internal static bool IsCreate(HttpRequest request) =>
        HttpMethods.IsPost(request.Method) && (request.Path.Value is { } path && (path.EndsWith("/sandboxes", StringComparison.Ordinal) || path == "/v1/run"));
}
