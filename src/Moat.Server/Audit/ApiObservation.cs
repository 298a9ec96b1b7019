using System.Diagnostics;
using System.Globalization;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Server.Auth;
using Moat.Server.Errors;
using Moat.Server.Metrics;

namespace Moat.Server.Audit;

/// <summary>
/// Outermost middleware: once a request has its answer, an audit record of it (who, which key,
/// what, result) and its count in the metrics. Health, metrics and OpenAPI requests are not
/// audited; requests without a valid key are (as anonymous), since failed attempts matter too.
/// </summary>
internal static class ApiObservation
{
    public static async Task InvokeAsync(HttpContext context, Func<Task> next)
    {
        long start = Stopwatch.GetTimestamp();
        var scope = AuditScope.Begin();
        try
        {
            await next().ConfigureAwait(false);
        }
        finally
        {
            Record(context, scope, Stopwatch.GetElapsedTime(start));
        }
    }

    private static void Record(HttpContext context, AuditScope scope, TimeSpan elapsed)
    {
        var path = context.Request.Path.Value ?? "";
        if (path is "/healthz" or "/readyz" or "/metrics" || path.StartsWith("/openapi/", StringComparison.Ordinal))
            return;
        var services = context.RequestServices;
        int status = context.Response.StatusCode;
        var code = ErrorWriter.CodeOf(context);
        (services.GetService(typeof(MoatMetrics)) as MoatMetrics)?.Request(context.Request.Method, status, code);
        if (services.GetService(typeof(AuditLog)) is not AuditLog audit)
            return;
        var caller = context.Items[typeof(Caller)] as Caller;
        var route = (context.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText;
        string? sandbox = null;
        if (context.Request.RouteValues.TryGetValue("id", out var id) && id is string s && (route?.Contains("sandboxes/{id}", StringComparison.Ordinal) ?? false))
            sandbox = s;
        sandbox ??= scope.CreatedSandboxId;
        var result = status.ToString(CultureInfo.InvariantCulture) + (code is null ? "" : " " + code);
        audit.Append(AuditKinds.Api, $"{context.Request.Method} {route ?? path}", caller?.TenantId, caller?.KeyId, sandbox, result, AuditHook.Json(w =>
        {
            w.WriteString("path", path.Length > 512 ? path[..512] : path);
            w.WriteNumber("durationMs", Math.Round(elapsed.TotalMilliseconds, 1));
            if (caller is not null)
                w.WriteString("role", caller.Role);
            if (context.Connection.RemoteIpAddress is { } ip)
                w.WriteString("remote", ip.ToString());
        }));
    }
}
