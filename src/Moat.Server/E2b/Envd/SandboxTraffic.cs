using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Options;
using Moat.Core.Errors;
using Moat.Core.Networking;
using Moat.Core.Sandboxes;
using Moat.Networking.Inbound;
using Moat.Server.Api;
using Moat.Server.Auth;
using Moat.Server.Errors;
using Moat.Server.E2b.Connect;
using Moat.Server.E2b.Interpreter;

namespace Moat.Server.E2b.Envd;

/// <summary>
/// The data plane of E2B's protocol: requests addressed to a port of a sandbox, either by the
/// headers the SDKs send when <c>sandboxUrl</c> points at Moat (<c>E2b-Sandbox-Id</c>,
/// <c>E2b-Sandbox-Port</c>) or by a <c>{port}-{sandboxId}.{domain}</c> host name. Port 49983 is
/// envd (process and filesystem RPCs, files, health) and 49999 the code interpreter; Moat answers
/// both itself through the sandbox's agent, no daemon listens inside. A request must carry the
/// sandbox's access token (<c>X-Access-Token</c> or <c>E2B-Traffic-Access-Token</c>), a signed
/// file URL, or an API key of the sandbox's tenant. Every other port is the sandbox's own: Moat's
/// inbound proxy forwards the request (HTTP or WebSocket) to the server listening there, admitting
/// the same credentials, Moat's port token, or anyone for a port made public.
/// </summary>
internal sealed class SandboxTraffic(
    SandboxManager manager,
    E2bAccessTokens tokens,
    InboundAccess inbound,
    IOptions<E2bOptions> options,
    ProcessService process,
    FilesystemService filesystem,
    EnvdRest rest,
    InterpreterPort interpreter,
    TimeProvider time)
{
    /// <summary>envd's port.</summary>
    public const int EnvdPort = 49983;

    /// <summary>E2B's credentials and routing headers: they address Moat and never enter the sandbox.</summary>
    private static readonly HashSet<string> E2bHeaders = new(StringComparer.OrdinalIgnoreCase)
    {
        "X-Access-Token", "E2B-Traffic-Access-Token", "E2b-Sandbox-Id", "E2b-Sandbox-Port",
    };

    /// <summary>Handles the request if it is addressed to a sandbox; otherwise passes it on.</summary>
    public async Task InvokeAsync(HttpContext context, Func<Task> next)
    {
        if (!TryAddress(context, out var sandboxId, out int port, out var path))
        {
            await next().ConfigureAwait(false);
            return;
        }
        if (port is not (EnvdPort or InterpreterPort.Port))
        {
            await ForwardPortAsync(context, sandboxId, port, path).ConfigureAwait(false);
            return;
        }
        bool rpc = port == EnvdPort && (path.StartsWith("/" + ProcessService.Service + "/", StringComparison.Ordinal) || path.StartsWith("/" + FilesystemService.Service + "/", StringComparison.Ordinal));
        var record = await AuthenticateAsync(context, sandboxId, port, path).ConfigureAwait(false);
        if (record is null)
        {
            await FailAsync(context, rpc, new ConnectException(ConnectCode.Unauthenticated, "send the sandbox's access token (X-Access-Token: envdAccessToken from the create response) or an API key of its tenant"), StatusCodes.Status401Unauthorized).ConfigureAwait(false);
            return;
        }
        if (record.State != SandboxState.Running)
        {
            string message = $"sandbox {record.Id} is {record.State.Name()}" + (record.State == SandboxState.Paused ? "; connect to it to resume it" : record.StateReason is { } why ? $" ({why})" : "");
            await FailAsync(context, rpc, new ConnectException(ConnectCode.Unavailable, message), StatusCodes.Status502BadGateway).ConfigureAwait(false);
            return;
        }
        string user;
        try
        {
            user = UserOf(context);
        }
        catch (MoatException ex)
        {
            await FailAsync(context, rpc, new ConnectException(ConnectCode.Unauthenticated, ex.Message), StatusCodes.Status401Unauthorized).ConfigureAwait(false);
            return;
        }
        var target = new SandboxTarget(record, user, port);
        switch (port)
        {
            case EnvdPort when path.StartsWith("/" + ProcessService.Service + "/", StringComparison.Ordinal):
                await process.HandleAsync(context, target, path[(ProcessService.Service.Length + 2)..]).ConfigureAwait(false);
                break;
            case EnvdPort when path.StartsWith("/" + FilesystemService.Service + "/", StringComparison.Ordinal):
                await filesystem.HandleAsync(context, target, path[(FilesystemService.Service.Length + 2)..]).ConfigureAwait(false);
                break;
            case EnvdPort:
                await rest.HandleAsync(context, target, path).ConfigureAwait(false);
                break;
            case InterpreterPort.Port:
                await interpreter.HandleAsync(context, target, path).ConfigureAwait(false);
                break;
        }
    }

    /// <summary>A port of the sandbox's own: admitted, then relayed by the inbound proxy.</summary>
    private async Task ForwardPortAsync(HttpContext context, string sandboxId, int port, string path)
    {
        try
        {
            var target = await AdmitPortAsync(context, sandboxId, port).ConfigureAwait(false);
            if (target is null)
            {
                await EnvdRest.WriteErrorAsync(context, StatusCodes.Status401Unauthorized,
                    $"port {port} of sandbox {sandboxId} is private: send the sandbox's access token (X-Access-Token or E2B-Traffic-Access-Token: envdAccessToken / trafficAccessToken from the create response), its port token ({NetworkEndpoints.TokenHeader}), or an API key of its tenant").ConfigureAwait(false);
                return;
            }
            await InboundProxy.ForwardAsync(context, InboundProxy.NetworkOf(manager), target, port, path, E2bHeaders).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
        }
        catch (MoatException ex) when (!context.Response.HasStarted)
        {
            await EnvdRest.WriteErrorAsync(context, ErrorWriter.StatusOf(ex.Kind), ex.Message).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Who may reach an ordinary port: E2B's access token of the sandbox (or Moat's port token in
    /// its place), an API key of the sandbox's tenant (another tenant's sandbox is not found), Moat's
    /// port token, or anyone when the port is public. Null: none of them.
    /// </summary>
    private async Task<InboundTarget?> AdmitPortAsync(HttpContext context, string sandboxId, int port)
    {
        var headers = context.Request.Headers;
        var token = headers["X-Access-Token"].ToString();
        if (string.IsNullOrEmpty(token))
            token = headers["E2B-Traffic-Access-Token"].ToString();
        token = token.Trim();
        if (token.Length > 0)
        {
            if (await manager.FindByAccessTokenAsync(sandboxId, token, context.RequestAborted).ConfigureAwait(false) is { } record)
                return manager.InboundTargetOf(record.Id, null).Target;
            return inbound.Verify(sandboxId, token) ? manager.InboundTargetOf(sandboxId, null).Target : null;
        }
        if (context.Items[typeof(Caller)] is Caller caller)
            return manager.InboundTargetOf(sandboxId, caller.TenantId).Target;
        var moatToken = headers[NetworkEndpoints.TokenHeader].FirstOrDefault() ?? context.Request.Query[NetworkEndpoints.TokenQuery].FirstOrDefault();
        if (inbound.Verify(sandboxId, moatToken) || inbound.IsPublic(sandboxId, port))
            return manager.InboundTargetOf(sandboxId, null).Target;
        return null;
    }

    /// <summary>Which sandbox and port the request is for: by header (sandboxUrl) or by host name (domain).</summary>
    private bool TryAddress(HttpContext context, out string sandboxId, out int port, out string path)
    {
        var request = context.Request;
        path = request.Path.Value ?? "/";
        sandboxId = "";
        port = EnvdPort;
        if (request.Headers.TryGetValue("E2b-Sandbox-Id", out var idHeader) && idHeader.ToString() is { Length: > 0 } id)
        {
            sandboxId = id.Trim();
            if (request.Headers.TryGetValue("E2b-Sandbox-Port", out var portHeader) && int.TryParse(portHeader.ToString(), out int p) && p is > 0 and < 65536)
                port = p;
            var prefix = options.Value.Prefix.TrimEnd('/');
            if (prefix.Length > 0 && path.StartsWith(prefix + "/", StringComparison.Ordinal))
                path = path[prefix.Length..];
            return true;
        }
        // {port}-{sandboxId}.{domain}
        var host = request.Host.Host;
        int dot = host.IndexOf('.');
        if (dot <= 0 || !InboundHosts.TryParseLabel(host[..dot], out int hostPort, out var hostId))
            return false;
        if (options.Value.Domain is { Length: > 0 } domain && !string.Equals(host[(dot + 1)..].TrimEnd('.'), domain.Split(':')[0].TrimEnd('.'), StringComparison.OrdinalIgnoreCase))
            return false;
        sandboxId = hostId;
        port = hostPort;
        return true;
    }

    private async Task<SandboxRecord?> AuthenticateAsync(HttpContext context, string sandboxId, int port, string path)
    {
        var headers = context.Request.Headers;
        var token = headers["X-Access-Token"].ToString();
        if (string.IsNullOrEmpty(token))
            token = headers["E2B-Traffic-Access-Token"].ToString();
        if (!string.IsNullOrEmpty(token))
            return await manager.FindByAccessTokenAsync(sandboxId, token.Trim(), context.RequestAborted).ConfigureAwait(false);
        if (context.Items[typeof(Caller)] is Caller caller)
        {
            try
            {
                return await manager.GetAsync(sandboxId, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
            }
            catch (MoatException ex) when (ex.Kind == ErrorKind.NotFound)
            {
                return null;
            }
        }
        // A signed URL (the SDK's uploadUrl / downloadUrl) opens one file for one operation.
        var query = context.Request.Query;
        if (port == EnvdPort && path == "/files" && query["signature"].ToString() is { Length: > 0 } signature)
        {
            long? expiration = long.TryParse(query["signature_expiration"].ToString(), out long e) ? e : null;
            var operation = context.Request.Method == HttpMethods.Post ? "write" : "read";
            if (tokens.VerifySignature(sandboxId, signature, query["path"].ToString(), operation, query["username"].ToString(), expiration, time))
                return await manager.FindByAccessTokenAsync(sandboxId, tokens.Issue(sandboxId), context.RequestAborted).ConfigureAwait(false);
        }
        return null;
    }

    /// <summary>The user to act as: <c>Authorization: Basic base64("user:")</c> as E2B sends it, or <c>username</c> on file routes; default <c>user</c>.</summary>
    private static string UserOf(HttpContext context)
    {
        var authorization = context.Request.Headers.Authorization.ToString();
        string? user = null;
        if (authorization.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase))
        {
            try
            {
                var decoded = Encoding.UTF8.GetString(Convert.FromBase64String(authorization["Basic ".Length..].Trim()));
                user = decoded.Split(':')[0];
            }
            catch (FormatException)
            {
                throw MoatException.Invalid("invalid_user", "the Authorization header is not valid Basic credentials");
            }
        }
        if (string.IsNullOrEmpty(user) && context.Request.Query["username"].ToString() is { Length: > 0 } username)
            user = username;
        if (string.IsNullOrEmpty(user))
            return SandboxManager.DefaultUser;
        if (!CommandSpec.ValidUser(user))
            throw MoatException.Invalid("invalid_user", $"'{user}' is not a valid user name");
        return user;
    }

    private static async Task FailAsync(HttpContext context, bool rpc, ConnectException error, int status)
    {
        if (!rpc)
        {
            await EnvdRest.WriteErrorAsync(context, status, error.Message).ConfigureAwait(false);
            return;
        }
        if (ConnectRpc.IsStreaming(context.Request))
            await ConnectRpc.OpenStream(context).EndAsync(error).ConfigureAwait(false);
        else
            await ConnectRpc.WriteUnaryErrorAsync(context, error).ConfigureAwait(false);
    }
}
