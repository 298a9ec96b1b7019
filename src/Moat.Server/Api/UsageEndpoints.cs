using System.Globalization;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.State;
using Moat.Server.Auth;
using Moat.Server.Tenancy;

namespace Moat.Server.Api;

/// <summary>Usage per tenant per day (JSON or CSV), priced by the operator's table.</summary>
internal static class UsageEndpoints
{
    public static void Map(IEndpointRouteBuilder app) =>
        app.MapGet("/v1/usage", GetAsync).WithName("GetUsage").WithTags("usage");

    /// <summary>A tenant's keys see their own tenant; the operator sees all (or one, with <c>tenant=</c>).</summary>
    private static async Task<IResult> GetAsync(HttpContext context, UsageMeter meter, IUsageStore store, string? tenant, string? from, string? to, string? format)
    {
        var caller = context.Caller();
        string? tenantFilter = caller.Role == Roles.Operator ? tenant : caller.TenantId;
        if (caller.Role != Roles.Operator && tenant is not null && tenant != caller.TenantId)
            throw new MoatException(ErrorKind.NotFound, "tenant_not_found", $"tenant '{tenant}' does not exist");
        var today = DateOnly.FromDateTime(DateTime.UtcNow);
        var first = Day(from, "from") ?? today.AddDays(-30);
        var last = Day(to, "to") ?? today;
        if (last < first)
            throw MoatException.Invalid("invalid_range", $"to ({last:yyyy-MM-dd}) is before from ({first:yyyy-MM-dd})");
        if (last.DayNumber - first.DayNumber > 3660)
            throw MoatException.Invalid("invalid_range", "a usage query spans at most 3660 days");
        if (format is not (null or "json" or "csv"))
            throw MoatException.Invalid("invalid_format", $"format must be json or csv, got '{format}'");
        await meter.FlushAsync(context.RequestAborted).ConfigureAwait(false);
        var rows = await store.QueryAsync(tenantFilter, first, last, context.RequestAborted).ConfigureAwait(false);
        var prices = meter.Options;
        var days = rows.Select(r => new UsageDayDto
        {
            TenantId = r.TenantId,
            Day = r.Day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
            VcpuSeconds = Math.Round(r.Amounts.VcpuSeconds, 3),
            MemoryGiBSeconds = Math.Round(r.Amounts.MemoryGiBSeconds, 3),
            DiskGiBHours = Math.Round(r.Amounts.DiskGiBHours, 6),
            SandboxSeconds = Math.Round(r.Amounts.SandboxSeconds, 3),
            Cost = Math.Round(r.Amounts.VcpuSeconds * prices.PricePerVcpuSecond + r.Amounts.MemoryGiBSeconds * prices.PricePerMemoryGiBSecond + r.Amounts.DiskGiBHours * prices.PricePerDiskGiBHour, 6),
            Currency = prices.Currency,
        }).ToList();
        if (format == "csv")
        {
            var csv = new StringBuilder("tenant,day,vcpu_seconds,memory_gib_seconds,disk_gib_hours,sandbox_seconds,cost,currency\n");
            foreach (var d in days)
                csv.Append(CultureInfo.InvariantCulture, $"{Csv(d.TenantId)},{d.Day},{d.VcpuSeconds},{d.MemoryGiBSeconds},{d.DiskGiBHours},{d.SandboxSeconds},{d.Cost},{Csv(d.Currency)}\n");
            return Results.Text(csv.ToString(), "text/csv; charset=utf-8");
        }
        return Results.Json(new UsageResponse(days), TenancyJson.Default.UsageResponse);
    }

    private static string Csv(string value) => value.AsSpan().IndexOfAny(",\"\n\r") >= 0 ? "\"" + value.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"" : value;

    private static DateOnly? Day(string? value, string name) =>
        value is null ? null
        : DateOnly.TryParseExact(value, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out var d) ? d
        : throw MoatException.Invalid("invalid_day", $"{name} must be a day as yyyy-MM-dd, got '{value}'");
}
