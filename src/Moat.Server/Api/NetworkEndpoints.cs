using System.Net;
using System.Text;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Primitives;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Networking;
using Moat.Core.Sandboxes;
using Moat.Networking.Inbound;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>
/// The network of a sandbox: its policy (read and changed while it runs), its connection log, and
/// the way in to its ports — an authenticated reverse proxy at
/// <c>/v1/sandboxes/{id}/ports/{port}/...</c> for HTTP and WebSocket.
/// </summary>
internal static class NetworkEndpoints
{
    /// <summary>Header carrying a sandbox's port access token.</summary>
    public const string TokenHeader = "X-Moat-Access-Token";

    /// <summary>Query parameter carrying a sandbox's port access token (for browsers).</summary>
    public const string TokenQuery = "moat_token";

    public static void Map(IEndpointRouteBuilder app)
    {
        var sandboxes = app.MapGroup("/v1/sandboxes").WithTags("network");
        sandboxes.MapGet("/{id}/network", GetAsync).WithName("GetSandboxNetwork");
        sandboxes.MapPut("/{id}/network", SetAsync).WithName("SetSandboxNetwork");
        sandboxes.MapGet("/{id}/network/log", LogAsync).WithName("GetSandboxNetworkLog");
        sandboxes.MapGet("/{id}/network/ports/{port:int}", PortAsync).WithName("GetSandboxPort");
        sandboxes.MapPut("/{id}/network/ports/{port:int}", SetPortAsync).WithName("SetSandboxPort");
        // The proxy authenticates itself: an API key of the tenant, the sandbox's token, or a public port.
        app.Map("/v1/sandboxes/{id}/ports/{port:int}/{**rest}", InboundProxy.HandleAsync).AllowAnonymous().ExcludeFromDescription();
    }

    private static async Task<IResult> GetAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Caller();
        var record = await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        var address = manager.Network is Moat.Networking.NetworkController controller ? controller.AddressOf(record.Id)?.ToString() : null;
        return Results.Json(new SandboxNetworkDto
        {
            Mode = record.Spec.Network.Mode.ToString().ToLowerInvariant(),
            Allow = record.Spec.Network.Allow,
            Address = address,
        }, NetworkJson.Default.SandboxNetworkDto);
    }

    private static async Task<IResult> SetAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        // Another tenant's sandbox is 404 before anything about the body is said.
        await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        var request = await Json.ReadAsync(context, MoatJson.Default.NetworkDto, new NetworkDto()).ConfigureAwait(false);
        if (request.Mode is null)
            throw MoatException.Invalid("invalid_network", "mode is required: none, allow or open");
        var policy = ApiMapping.ToPolicy(request);
        var record = await manager.SetNetworkAsync(id, caller.TenantId, policy, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(record.ToDto(), MoatJson.Default.SandboxDto);
    }

    private static async Task<IResult> LogAsync(HttpContext context, SandboxManager manager, string id, long? after, int? limit)
    {
        var caller = context.Caller();
        var record = await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        if (after is < 0)
            throw MoatException.Invalid("invalid_after", "after must be 0 or more (the next value of the previous page)");
        if (limit is < 1 or > 10_000)
            throw MoatException.Invalid("invalid_limit", "limit must be 1-10000");
        if (manager.Network is not { } network)
            return Results.Json(new EgressLogPage([], after ?? 0, 0), NetworkJson.Default.EgressLogPage);
        var page = await network.ReadLogAsync(record.Id, after ?? 0, limit ?? 1000, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(page, NetworkJson.Default.EgressLogPage);
    }

    private static async Task<IResult> PortAsync(HttpContext context, SandboxManager manager, InboundAccess access, string id, int port)
    {
        var caller = context.Caller();
        CheckPort(port);
        var record = await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(PortDto(context, access, record.Id, port), NetworkJson.Default.SandboxPortDto);
    }

    private static async Task<IResult> SetPortAsync(HttpContext context, SandboxManager manager, InboundAccess access, string id, int port)
    {
        var caller = context.Writer();
        CheckPort(port);
        var record = await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        var request = await Json.ReadAsync(context, NetworkJson.Default.SetPortRequest, new SetPortRequest()).ConfigureAwait(false);
        if (request.Public is not { } isPublic)
            throw MoatException.Invalid("invalid_port_access", "public (true or false) is required");
        if (record.State.IsTerminal())
            throw new MoatException(ErrorKind.Conflict, "sandbox_not_running", $"sandbox {id} has ended");
        access.SetPublic(record.Id, port, isPublic);
        return Results.Json(PortDto(context, access, record.Id, port), NetworkJson.Default.SandboxPortDto);
    }

    internal static void CheckPort(int port)
    {
        if (port is < 1 or > 65535)
            throw MoatException.Invalid("invalid_port", $"port must be 1-65535, got {port}");
    }

    private static SandboxPortDto PortDto(HttpContext context, InboundAccess access, string id, int port)
    {
        var request = context.Request;
        var url = $"{request.Scheme}://{request.Host}/v1/sandboxes/{id}/ports/{port}/";
        return new SandboxPortDto
        {
            Port = port,
            Url = url,
            HostUrl = access.Domain.Length > 0 ? $"{request.Scheme}://{port}-{id}.{access.Domain}{(request.Host.Port is int p ? $":{p}" : "")}/" : null,
            Token = access.TokenFor(id),
            Public = access.IsPublic(id, port),
        };
    }
}

/// <summary>
/// The inbound reverse proxy. Admits an API key of the sandbox's tenant, the sandbox's own access
/// token (header <c>X-Moat-Access-Token</c> or query <c>moat_token</c>), or anyone for a public
/// port; strips those credentials before the request enters the sandbox; forwards HTTP/1.1 over a
/// connection the network controller opens into the sandbox, and relays WebSocket (any upgrade)
/// byte for byte after the sandbox answered 101.
/// </summary>
internal static class InboundProxy
{
    private const int MaxResponseHead = 64 * 1024;

    private static readonly HashSet<string> HopByHop = new(StringComparer.OrdinalIgnoreCase)
    {
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Host",
        // Moat's own credentials never enter the sandbox.
        "Authorization", "X-API-Key", NetworkEndpoints.TokenHeader,
    };

    /// <summary>The path form: <c>/v1/sandboxes/{id}/ports/{port}/{rest}</c>.</summary>
    public static async Task HandleAsync(HttpContext context, SandboxManager manager, InboundAccess access, string id, int port, string? rest)
    {
        NetworkEndpoints.CheckPort(port);
        var network = NetworkOf(manager);
        var target = Authorize(context, manager, access, id, port);
        await ForwardAsync(context, network, target, port, "/" + (rest ?? ""), NoExtraHeaders).ConfigureAwait(false);
    }

    /// <summary>
    /// The host form: <c>{port}-{id}.{Moat:Network:Inbound:Domain}</c>, the request's whole path
    /// going to the sandbox's port. Same credentials as the path form.
    /// </summary>
    public static async Task HandleHostAsync(HttpContext context, SandboxManager manager, InboundAccess access, string id, int port)
    {
        var network = NetworkOf(manager);
        var target = Authorize(context, manager, access, id, port);
        await ForwardAsync(context, network, target, port, context.Request.Path.Value is { Length: > 0 } path ? path : "/", NoExtraHeaders).ConfigureAwait(false);
    }

    /// <summary>No credential headers to remove beyond Moat's own.</summary>
    public static readonly IReadOnlySet<string> NoExtraHeaders = new HashSet<string>();

    /// <summary>The node's network controller, which opens connections into sandboxes.</summary>
    public static INetworkController NetworkOf(SandboxManager manager) =>
        manager.Network ?? throw new MoatException(ErrorKind.Unavailable, "network_unavailable", "this server has no network controller");

    /// <summary>
    /// Forwards the request (already admitted) to <paramref name="port"/> of the sandbox as
    /// <paramref name="path"/> plus the query (without <c>moat_token</c>), leaving out Moat's
    /// credentials and <paramref name="alsoRemove"/>; relays the answer, or the upgraded stream.
    /// </summary>
    public static async Task ForwardAsync(HttpContext context, INetworkController network, InboundTarget target, int port, string path, IReadOnlySet<string> alsoRemove)
    {
        var cancel = context.RequestAborted;
        await using var upstream = await network.ConnectInboundAsync(target, port, cancel).ConfigureAwait(false);
        var upgrade = context.Features.Get<IHttpUpgradeFeature>();
        bool isUpgrade = upgrade is { IsUpgradableRequest: true };
        await WriteRequestHeadAsync(context, upstream, path, isUpgrade, alsoRemove, cancel).ConfigureAwait(false);
        if (!isUpgrade)
        {
            await context.Request.Body.CopyToAsync(upstream, cancel).ConfigureAwait(false);
            await upstream.FlushAsync(cancel).ConfigureAwait(false);
        }
        var (status, headers, leftover) = await ReadResponseHeadAsync(upstream, cancel).ConfigureAwait(false);
        context.Response.StatusCode = status;
        foreach (var (name, value) in headers)
        {
            bool keep = status == 101
                ? !HopByHop.Contains(name) || name.Equals("Connection", StringComparison.OrdinalIgnoreCase) || name.Equals("Upgrade", StringComparison.OrdinalIgnoreCase)
                : !HopByHop.Contains(name) && !name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase);
            if (!keep)
                continue;
            context.Response.Headers.Append(name, value);
        }
        if (status == 101 && isUpgrade)
        {
            var client = await upgrade!.UpgradeAsync().ConfigureAwait(false);
            if (leftover.Length > 0)
                await client.WriteAsync(leftover, cancel).ConfigureAwait(false);
            await client.FlushAsync(cancel).ConfigureAwait(false);
            var up = upstream.CopyToAsync(client, cancel);
            var down = client.CopyToAsync(upstream, cancel);
            await Task.WhenAny(up, down).ConfigureAwait(false);
            return;
        }
        // The request said Connection: close, so the body runs to the end of the stream.
        if (leftover.Length > 0)
            await context.Response.Body.WriteAsync(leftover, cancel).ConfigureAwait(false);
        await upstream.CopyToAsync(context.Response.Body, cancel).ConfigureAwait(false);
    }

    private static InboundTarget Authorize(HttpContext context, SandboxManager manager, InboundAccess access, string id, int port)
    {
        if (context.Items[typeof(Caller)] is Caller caller)
            return manager.InboundTargetOf(id, caller.TenantId).Target;
        string? token = context.Request.Headers[NetworkEndpoints.TokenHeader].FirstOrDefault() ?? context.Request.Query[NetworkEndpoints.TokenQuery].FirstOrDefault();
        if (SandboxManager.ValidId(id) && (access.Verify(id, token) || access.IsPublic(id, port)))
            return manager.InboundTargetOf(id, null).Target;
        throw new MoatException(ErrorKind.Unauthenticated, "port_access_denied",
            $"port {port} of sandbox {id} is private: send its access token in {NetworkEndpoints.TokenHeader} (or ?{NetworkEndpoints.TokenQuery}=), or an API key of its tenant");
    }

    private static async Task WriteRequestHeadAsync(HttpContext context, Stream upstream, string path, bool isUpgrade, IReadOnlySet<string> alsoRemove, CancellationToken cancellationToken)
    {
        var request = context.Request;
        var query = QueryString.Create(request.Query.Where(q => q.Key != NetworkEndpoints.TokenQuery).Select(q => new KeyValuePair<string, StringValues>(q.Key, q.Value)));
        var head = new StringBuilder();
        head.Append(request.Method).Append(' ').Append(Uri.EscapeDataString(path).Replace("%2F", "/", StringComparison.Ordinal)).Append(query.Value).Append(" HTTP/1.1\r\n");
        head.Append("Host: ").Append(request.Host.Value).Append("\r\n");
        foreach (var (name, values) in request.Headers)
        {
            if (HopByHop.Contains(name) || alsoRemove.Contains(name) || name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
                continue;
            foreach (var value in values)
                head.Append(name).Append(": ").Append(value).Append("\r\n");
        }
        head.Append("X-Forwarded-For: ").Append(context.Connection.RemoteIpAddress?.ToString() ?? "unknown").Append("\r\n");
        if (isUpgrade)
        {
            head.Append("Connection: Upgrade\r\nUpgrade: ").Append(request.Headers.Upgrade.ToString()).Append("\r\n");
        }
        else
        {
            head.Append("Connection: close\r\n");
            if (request.ContentLength is { } length)
                head.Append("Content-Length: ").Append(length).Append("\r\n");
            else if (request.Method is not ("GET" or "HEAD" or "DELETE" or "OPTIONS"))
                throw new MoatException(ErrorKind.InvalidArgument, "length_required", "requests with a body to a sandbox port need a Content-Length");
        }
        head.Append("\r\n");
        await upstream.WriteAsync(Encoding.Latin1.GetBytes(head.ToString()), cancellationToken).ConfigureAwait(false);
    }

    private static async Task<(int Status, List<(string Name, string Value)> Headers, byte[] Leftover)> ReadResponseHeadAsync(Stream upstream, CancellationToken cancellationToken)
    {
        var buffer = new byte[MaxResponseHead];
        int have = 0;
        while (true)
        {
            int end = buffer.AsSpan(0, have).IndexOf("\r\n\r\n"u8);
            if (end >= 0)
            {
                var lines = Encoding.Latin1.GetString(buffer, 0, end).Split("\r\n");
                var statusParts = lines[0].Split(' ', 3);
                if (statusParts.Length < 2 || !statusParts[0].StartsWith("HTTP/1.", StringComparison.Ordinal) || !int.TryParse(statusParts[1], out int status) || status is < 100 or > 599)
                    throw new MoatException(ErrorKind.Unavailable, "port_bad_response", "the server in the sandbox did not answer with HTTP/1.x");
                var headers = new List<(string, string)>();
                foreach (var line in lines.Skip(1))
                {
                    int colon = line.IndexOf(':');
                    if (colon > 0)
                        headers.Add((line[..colon].Trim(), line[(colon + 1)..].Trim()));
                }
                return (status, headers, buffer[(end + 4)..have]);
            }
            if (have == buffer.Length)
                throw new MoatException(ErrorKind.Unavailable, "port_bad_response", $"the server in the sandbox sent a response head over {MaxResponseHead} bytes");
            int n = await upstream.ReadAsync(buffer.AsMemory(have), cancellationToken).ConfigureAwait(false);
            if (n == 0)
                throw new MoatException(ErrorKind.Unavailable, "port_bad_response", "the server in the sandbox closed the connection without answering");
            have += n;
        }
    }
}

/// <summary>GET /v1/sandboxes/{id}/network.</summary>
public sealed record SandboxNetworkDto
{
    /// <summary>none, allow or open.</summary>
    public required string Mode { get; init; }
    /// <summary>The allow list (mode allow).</summary>
    public IReadOnlyList<string> Allow { get; init; } = [];
    /// <summary>The sandbox's address on its link, when it has one.</summary>
    public string? Address { get; init; }
}

/// <summary>How to reach one port of a sandbox.</summary>
public sealed record SandboxPortDto
{
    /// <summary>The port inside the sandbox.</summary>
    public int Port { get; init; }
    /// <summary>The path-form URL of the inbound proxy.</summary>
    public required string Url { get; init; }
    /// <summary>The host-form URL, when the server has an inbound domain.</summary>
    public string? HostUrl { get; init; }
    /// <summary>The sandbox's access token (header X-Moat-Access-Token or query moat_token).</summary>
    public required string Token { get; init; }
    /// <summary>Whether the port is reachable without credentials.</summary>
    public bool Public { get; init; }
}

/// <summary>PUT /v1/sandboxes/{id}/network/ports/{port}.</summary>
public sealed record SetPortRequest
{
    /// <summary>Make the port reachable without credentials (true) or private again (false).</summary>
    public bool? Public { get; init; }
}

[JsonSourceGenerationOptions(System.Text.Json.JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, MaxDepth = 16)]
[JsonSerializable(typeof(SandboxNetworkDto))]
[JsonSerializable(typeof(SandboxPortDto))]
[JsonSerializable(typeof(SetPortRequest))]
[JsonSerializable(typeof(EgressLogPage))]
internal sealed partial class NetworkJson : JsonSerializerContext;
