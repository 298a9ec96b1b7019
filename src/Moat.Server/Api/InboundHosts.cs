using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Moat.Core.Sandboxes;
using Moat.Networking.Inbound;
using Moat.Server.E2b;

namespace Moat.Server.Api;

/// <summary>
/// The host form of the inbound proxy: a request whose host is <c>{port}-{sandboxId}.{domain}</c>
/// (<c>Moat:Network:Inbound:Domain</c>, reached through a wildcard DNS record) goes, whole path
/// and query, to that port of the sandbox — HTTP and WebSocket, with the same credentials as the
/// path form. When E2B's data plane uses the same domain it answers these hosts itself (it
/// accepts Moat's credentials on ordinary ports too).
/// </summary>
internal static class InboundHosts
{
    /// <summary>
    /// Parses <c>{port}-{sandboxId}.{domain}</c> (case-insensitive). Only exactly one label in front
    /// of the domain: <c>8000-id.other.domain</c> is no sandbox's host.
    /// </summary>
    public static bool TryParse(string host, string domain, out int port, out string sandboxId)
    {
        port = 0;
        sandboxId = "";
        int dot = host.IndexOf('.');
        if (dot <= 0 || domain.Length == 0 || !string.Equals(host[(dot + 1)..].TrimEnd('.'), domain, StringComparison.OrdinalIgnoreCase))
            return false;
        return TryParseLabel(host[..dot], out port, out sandboxId);
    }

    /// <summary>Parses the first label, <c>{port}-{sandboxId}</c>.</summary>
    public static bool TryParseLabel(string label, out int port, out string sandboxId)
    {
        port = 0;
        sandboxId = "";
        int dash = label.IndexOf('-');
        if (dash <= 0 || dash > 5 || !int.TryParse(label.AsSpan(0, dash), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int p) || p is < 1 or > 65535)
            return false;
        var id = label[(dash + 1)..].ToLowerInvariant();
        if (!SandboxManager.ValidId(id))
            return false;
        port = p;
        sandboxId = id;
        return true;
    }

    /// <summary>Answers sandbox hosts of the inbound domain. Goes after authentication, before E2B's data plane.</summary>
    public static WebApplication UseInboundHosts(this WebApplication app)
    {
        var access = app.Services.GetRequiredService<InboundAccess>();
        var e2bDomain = (app.Services.GetRequiredService<IOptions<E2bOptions>>().Value.Domain ?? "").Split(':')[0].Trim().TrimEnd('.');
        if (access.Domain.Length == 0 || string.Equals(e2bDomain, access.Domain, StringComparison.OrdinalIgnoreCase))
            return app;
        var manager = app.Services.GetRequiredService<SandboxManager>();
        app.Use((context, next) =>
            TryParse(context.Request.Host.Host, access.Domain, out int port, out var id)
                ? InboundProxy.HandleHostAsync(context, manager, access, id, port)
                : next(context));
        return app;
    }
}
