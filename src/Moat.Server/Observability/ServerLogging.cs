using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Moat.Server.Auth;

namespace Moat.Server.Observability;

/// <summary>
/// The server's log format (<c>Moat:Logging:Format</c>): <c>json</c> — one JSON object per line
/// with the logging scopes (tenantId, sandboxId, request) — or <c>text</c>, one line per message.
/// <c>auto</c> (the default) is json when stdout is not a terminal (a service manager, a container,
/// a pipe to a collector) and text when a person watches it.
/// </summary>
public static class ServerLogging
{
    /// <summary>Replaces the console logger with the configured format.</summary>
    public static void Configure(ILoggingBuilder logging, IConfiguration configuration)
    {
        var format = (configuration["Moat:Logging:Format"] ?? "auto").Trim().ToLowerInvariant();
        if (format == "auto")
            format = Console.IsOutputRedirected ? "json" : "text";
        if (format is not ("json" or "text"))
            throw new InvalidOperationException($"Moat:Logging:Format must be auto, json or text, got '{configuration["Moat:Logging:Format"]}'");
        logging.ClearProviders();
        if (format == "json")
        {
            logging.AddJsonConsole(o =>
            {
                o.IncludeScopes = true;
                o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ";
                o.UseUtcTimestamp = true;
            });
        }
        else
        {
            logging.AddSimpleConsole(o =>
            {
                o.IncludeScopes = true;
                o.SingleLine = true;
                o.TimestampFormat = "HH:mm:ss.fff ";
                o.UseUtcTimestamp = true;
            });
        }
    }

    /// <summary>After authentication: everything logged while a request runs carries its tenant and sandbox ids.</summary>
    public static void UseMoatLogScopes(this IApplicationBuilder app)
    {
        var logger = app.ApplicationServices.GetRequiredService<ILoggerFactory>().CreateLogger("Moat.Server.Request");
        app.Use(async (context, next) =>
        {
            var fields = new List<KeyValuePair<string, object?>>(2);
            if (context.Items[typeof(Caller)] is Caller caller)
                fields.Add(new("tenantId", caller.TenantId));
            if (context.Request.RouteValues.TryGetValue("id", out var id) && id is string sandbox && context.Request.Path.StartsWithSegments("/v1/sandboxes", StringComparison.Ordinal))
                fields.Add(new("sandboxId", sandbox));
            if (fields.Count == 0)
            {
                await next(context).ConfigureAwait(false);
                return;
            }
            using (logger.BeginScope(fields))
                await next(context).ConfigureAwait(false);
        });
    }
}
