using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Extensions.Options;
using Moat.Contracts;
using Moat.Core.CodeInterpreter;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Moat.Server.Api;
using Moat.Server.Auth;

namespace Moat.Server.E2b.ControlPlane;

/// <summary>
/// E2B's control plane, the subset its SDKs call: create (with metadata, environment and timeout),
/// list (metadata and state filters, <c>X-Next-Token</c> pages), get, kill, set the timeout,
/// pause, connect (resuming a paused sandbox) and metrics. Everything is a thin mapping onto
/// <see cref="SandboxManager"/>; tenancy is the API key's, as in the native API.
/// </summary>
internal static class E2bSandboxEndpoints
{
    private const int MaxPage = 100;

    public static void Map(IEndpointRouteBuilder app, string prefix)
    {
        var e2b = app.MapGroup(prefix).AllowAnonymous().ExcludeFromDescription().AddEndpointFilter(E2bApiErrors.FilterAsync);
        e2b.MapPost("/sandboxes", CreateAsync);
        e2b.MapPost("/v2/sandboxes", CreateAsync);
        e2b.MapGet("/sandboxes", ListRunningAsync);
        e2b.MapGet("/v2/sandboxes", ListAsync);
        e2b.MapGet("/sandboxes/{id}", GetAsync);
        e2b.MapDelete("/sandboxes/{id}", KillAsync);
        e2b.MapPost("/sandboxes/{id}/timeout", SetTimeoutAsync);
        e2b.MapPost("/sandboxes/{id}/pause", PauseAsync);
        e2b.MapPost("/sandboxes/{id}/resume", ResumeAsync);
        e2b.MapPost("/sandboxes/{id}/connect", ConnectAsync);
        e2b.MapPost("/v2/sandboxes/{id}/connect", ConnectAsync);
        e2b.MapGet("/sandboxes/{id}/metrics", MetricsAsync);
        e2b.MapPost("/api-keys", CreateKeyAsync);
        // Anything else of E2B's API (templates, snapshots, volumes, teams...) is not served.
        app.MapFallback(prefix + "/{**rest}", (HttpContext context) =>
            E2bApiErrors.WriteAsync(context, StatusCodes.Status404NotFound, $"{context.Request.Method} {context.Request.Path} is not part of the E2B API subset Moat serves (see docs/e2b.md)"))
            .AllowAnonymous().ExcludeFromDescription();
    }

    private static async Task<IResult> CreateAsync(HttpContext context, SandboxManager manager, E2bAccessTokens tokens, CodeContextManager code, IOptions<E2bOptions> options)
    {
        var caller = context.Writer();
        var body = await Json.ReadAsync(context, E2bJson.Default.NewSandbox, new NewSandbox()).ConfigureAwait(false);
        var o = options.Value;
        if (body.Mcp is { ValueKind: not System.Text.Json.JsonValueKind.Null })
            throw MoatException.Invalid("unsupported", "MCP gateways are not supported by Moat");
        if (body.VolumeMounts is { ValueKind: System.Text.Json.JsonValueKind.Array } mounts && mounts.GetArrayLength() > 0)
            throw MoatException.Invalid("unsupported", "volume mounts are not supported by Moat's E2B API yet");
        long timeout = body.Timeout ?? o.DefaultTimeoutSeconds;
        if (timeout <= 0)
            throw MoatException.Invalid("invalid_timeout", "Timeout must be greater than 0");
        var template = o.TemplateFor(body.TemplateId);
        var request = new CreateSandboxRequest
        {
            Template = template,
            Isolation = string.IsNullOrEmpty(o.Isolation) ? null : o.Isolation,
            TimeoutSeconds = timeout,
            Env = body.EnvVars,
            Metadata = body.Metadata,
            Network = NetworkOf(body),
            // autoPause: the lifetime's end pauses the sandbox instead of killing it (connect resumes it).
            OnTimeout = body.AutoPause == true ? "pause" : null,
        };
        var spec = await ApiMapping.ToSpecAsync(request, manager, context.RequestAborted).ConfigureAwait(false);
        var record = await manager.CreateAsync(spec, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        var token = tokens.Issue(record.Id);
        try
        {
            record = await manager.SetAccessTokenHashAsync(record.Id, caller.TenantId, SandboxManager.HashAccessToken(token), context.RequestAborted).ConfigureAwait(false);
        }
        catch
        {
            await manager.DeleteAsync(record.Id, caller.TenantId, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
        // E2B's code interpreter template starts with a Python context ready.
        if (template == "code-interpreter-v1")
            _ = code.WarmAsync(record.Id, caller.TenantId, CodeLanguage.Python, CancellationToken.None);
        return Results.Json(Created(record, token, o, body.TemplateId), E2bJson.Default.SandboxCreated, statusCode: StatusCodes.Status201Created);
    }

    /// <summary>E2B's network options as a Moat policy (which the node may not be able to enforce yet: it says so).</summary>
    private static NetworkDto? NetworkOf(NewSandbox body)
    {
        var allow = body.Network?.AllowOut ?? [];
        var deny = body.Network?.DenyOut ?? [];
        // An allow list denies everything else (and E2B lets allowOut win over denyOut), so denyOut
        // beside it changes nothing. Alone, only "deny everything" can be honoured: Moat has no
        // block list, and a rule it cannot enforce is refused, never dropped.
        if (allow.Count > 0)
            return new NetworkDto { Mode = "allow", Allow = allow };
        if (deny.Count > 0)
        {
            if (deny.All(d => d.Trim() is "0.0.0.0/0" or "::/0"))
                return new NetworkDto { Mode = "none" };
            throw MoatException.Invalid("unsupported", $"network.denyOut without allowOut can only be [\"0.0.0.0/0\"] on Moat (it has no block list; everything not allowed is denied): list what the sandbox may reach in network.allowOut instead of {string.Join(", ", deny)}");
        }
        if (body.AllowInternetAccess == true)
            return new NetworkDto { Mode = "open" };
        return null;
    }

    private static SandboxCreated Created(SandboxRecord record, string token, E2bOptions options, string? e2bTemplate = null) => new()
    {
        SandboxId = record.Id,
        TemplateId = e2bTemplate ?? record.Spec.Template,
        Alias = record.Spec.Template,
        EnvdVersion = options.EnvdVersion,
        EnvdAccessToken = token,
        // The code interpreter's requests carry only this one; it is the same token.
        TrafficAccessToken = token,
        Domain = options.Domain,
    };

    private static SandboxListed Listed(SandboxRecord r, E2bOptions options, DateTimeOffset now) => new()
    {
        SandboxId = r.Id,
        TemplateId = r.Spec.Template,
        Alias = r.Spec.Template,
        StartedAt = r.StartedAt ?? r.CreatedAt,
        EndAt = r.State == SandboxState.Paused && r.RemainingWhenPaused is { } left ? now + left : r.ExpiresAt,
        CpuCount = Math.Max(1, (int)Math.Ceiling(r.Spec.Resources.Cpus)),
        MemoryMb = r.Spec.Resources.MemoryMiB,
        DiskSizeMb = r.Spec.Resources.DiskMiB,
        Metadata = r.Spec.Metadata,
        State = r.State == SandboxState.Paused ? "paused" : "running",
        EnvdVersion = options.EnvdVersion,
    };

    /// <summary>A sandbox E2B would still show: running (or starting) or paused. Ended ones are 404, as at E2B.</summary>
    private static async Task<SandboxRecord> VisibleAsync(SandboxManager manager, string id, string tenantId, CancellationToken cancellationToken)
    {
        var record = await manager.GetAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        if (record.State is SandboxState.Running or SandboxState.Paused or SandboxState.Creating)
            return record;
        throw new MoatException(ErrorKind.NotFound, "sandbox_not_found", $"sandbox {id} is {record.State.Name()}" + (record.StateReason is { } why ? $" ({why})" : ""));
    }

    private static async Task<IResult> ListRunningAsync(HttpContext context, SandboxManager manager, IOptions<E2bOptions> options, string? metadata)
    {
        var caller = context.Caller();
        var list = await manager.ListAsync(new SandboxQuery { TenantId = caller.TenantId, States = [SandboxState.Running], Metadata = ParseMetadata(metadata), Limit = 10_000 }, context.RequestAborted).ConfigureAwait(false);
        var now = DateTimeOffset.UtcNow;
        return Results.Json(list.Select(r => Listed(r, options.Value, now)).ToList(), E2bJson.Default.ListSandboxListed);
    }

    private static async Task<IResult> ListAsync(HttpContext context, SandboxManager manager, IOptions<E2bOptions> options, string? metadata, string? state, int? limit, string? nextToken, string? order)
    {
        var caller = context.Caller();
        var states = new List<SandboxState>();
        foreach (var name in (state ?? "running,paused").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            states.Add(name switch
            {
                "running" => SandboxState.Running,
                "paused" => SandboxState.Paused,
                _ => throw MoatException.Invalid("invalid_state", $"state must be running or paused, got '{name}'"),
            });
        }
        int pageSize = limit ?? MaxPage;
        if (pageSize is < 1 or > MaxPage)
            throw MoatException.Invalid("invalid_limit", $"limit must be 1-{MaxPage}");
        var list = await manager.ListAsync(new SandboxQuery { TenantId = caller.TenantId, States = states, Metadata = ParseMetadata(metadata), Limit = 100_000 }, context.RequestAborted).ConfigureAwait(false);
        IEnumerable<SandboxRecord> ordered = string.Equals(order, "asc", StringComparison.OrdinalIgnoreCase)
            ? list.OrderBy(r => r.StartedAt ?? r.CreatedAt).ThenBy(r => r.Id, StringComparer.Ordinal)
            : list.OrderByDescending(r => r.StartedAt ?? r.CreatedAt).ThenBy(r => r.Id, StringComparer.Ordinal);
        var all = ordered.ToList();
        int start = 0;
        if (!string.IsNullOrEmpty(nextToken))
        {
            // The token names the last sandbox of the previous page.
            string after;
            try
            {
                after = Encoding.UTF8.GetString(WebEncoders.Base64UrlDecode(nextToken));
            }
            catch (FormatException)
            {
                throw MoatException.Invalid("invalid_next_token", "nextToken is not a token this server handed out");
            }
            int at = all.FindIndex(r => r.Id == after);
            start = at < 0 ? all.Count : at + 1;
        }
        var page = all.Skip(start).Take(pageSize).ToList();
        if (start + page.Count < all.Count && page.Count > 0)
            context.Response.Headers["X-Next-Token"] = WebEncoders.Base64UrlEncode(Encoding.UTF8.GetBytes(page[^1].Id));
        context.Response.Headers["X-Total-Running"] = all.Count(r => r.State == SandboxState.Running).ToString();
        var now = DateTimeOffset.UtcNow;
        return Results.Json(page.Select(r => Listed(r, options.Value, now)).ToList(), E2bJson.Default.ListSandboxListed);
    }

    /// <summary>E2B's metadata filter: one query value holding URL-encoded <c>k=v&amp;k2=v2</c>.</summary>
    private static Dictionary<string, string> ParseMetadata(string? metadata)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        if (string.IsNullOrEmpty(metadata))
            return result;
        foreach (var (key, value) in QueryHelpers.ParseQuery(metadata.StartsWith('?') ? metadata : "?" + metadata))
        {
            if (key.Length > 0)
                result[Uri.UnescapeDataString(key)] = Uri.UnescapeDataString(value.ToString());
        }
        return result;
    }

    private static async Task<IResult> GetAsync(HttpContext context, SandboxManager manager, E2bAccessTokens tokens, IOptions<E2bOptions> options, string id)
    {
        var caller = context.Caller();
        var record = await VisibleAsync(manager, id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        var detail = Listed(record, options.Value, DateTimeOffset.UtcNow);
        detail.EnvdAccessToken = record.AccessTokenHash is null ? null : tokens.Issue(record.Id);
        detail.AllowInternetAccess = record.Spec.Network.Mode == NetworkMode.Open ? true : record.Spec.Network.Mode == NetworkMode.None ? false : null;
        detail.Domain = options.Value.Domain;
        return Results.Json(detail, E2bJson.Default.SandboxListed);
    }

    private static async Task<IResult> KillAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        await VisibleAsync(manager, id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        await manager.DeleteAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        E2bMetrics.Forget(id);
        return Results.NoContent();
    }

    private static async Task<IResult> SetTimeoutAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        var body = await Json.ReadAsync(context, E2bJson.Default.TimeoutBody, new TimeoutBody()).ConfigureAwait(false);
        if (body.Timeout is not { } seconds || seconds < 0)
            throw MoatException.Invalid("invalid_timeout", "timeout (seconds from now) is required and may not be negative");
        await VisibleAsync(manager, id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        // 0 ends the sandbox at once, as E2B's does.
        var timeout = seconds == 0 ? TimeSpan.FromMilliseconds(1) : TimeSpan.FromSeconds(seconds);
        await manager.SetTimeoutAsync(id, caller.TenantId, timeout, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> PauseAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        // Moat's pause always keeps memory, which also covers E2B's filesystem-only pause (memory: false).
        await Json.ReadAsync(context, E2bJson.Default.PauseBody, new PauseBody()).ConfigureAwait(false);
        await VisibleAsync(manager, id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        await manager.PauseAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> ResumeAsync(HttpContext context, SandboxManager manager, E2bAccessTokens tokens, IOptions<E2bOptions> options, string id)
    {
        var caller = context.Writer();
        var body = await Json.ReadAsync(context, E2bJson.Default.TimeoutBody, new TimeoutBody()).ConfigureAwait(false);
        await VisibleAsync(manager, id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        var record = await manager.ResumeAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        record = await ExtendAsync(manager, record, caller.TenantId, body.Timeout, context.RequestAborted).ConfigureAwait(false);
        var token = await EnsureTokenAsync(manager, tokens, record, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(Created(record, token, options.Value), E2bJson.Default.SandboxCreated, statusCode: StatusCodes.Status201Created);
    }

    /// <summary>Returns a running sandbox (200), resuming a paused one first (201). The timeout only ever extends its life.</summary>
    private static async Task<IResult> ConnectAsync(HttpContext context, SandboxManager manager, E2bAccessTokens tokens, IOptions<E2bOptions> options, string id)
    {
        var caller = context.Writer();
        var body = await Json.ReadAsync(context, E2bJson.Default.TimeoutBody, new TimeoutBody()).ConfigureAwait(false);
        if (body.Timeout is < 0)
            throw MoatException.Invalid("invalid_timeout", "timeout may not be negative");
        var record = await VisibleAsync(manager, id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        int status = StatusCodes.Status200OK;
        if (record.State == SandboxState.Paused)
        {
            record = await manager.ResumeAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
            status = StatusCodes.Status201Created;
        }
        record = await ExtendAsync(manager, record, caller.TenantId, body.Timeout, context.RequestAborted).ConfigureAwait(false);
        var token = await EnsureTokenAsync(manager, tokens, record, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(Created(record, token, options.Value), E2bJson.Default.SandboxCreated, statusCode: status);
    }

    private static async Task<SandboxRecord> ExtendAsync(SandboxManager manager, SandboxRecord record, string tenantId, long? seconds, CancellationToken cancellationToken)
    {
        if (seconds is not > 0 || record.State != SandboxState.Running)
            return record;
        var timeout = TimeSpan.FromSeconds(seconds.Value);
        if (DateTimeOffset.UtcNow + timeout <= record.ExpiresAt)
            return record;
        return await manager.SetTimeoutAsync(record.Id, tenantId, timeout, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The sandbox's token; a sandbox made through the native API gets one when an E2B client first connects.</summary>
    private static async Task<string> EnsureTokenAsync(SandboxManager manager, E2bAccessTokens tokens, SandboxRecord record, string tenantId, CancellationToken cancellationToken)
    {
        var token = tokens.Issue(record.Id);
        var hash = SandboxManager.HashAccessToken(token);
        if (record.AccessTokenHash != hash)
            await manager.SetAccessTokenHashAsync(record.Id, tenantId, hash, cancellationToken).ConfigureAwait(false);
        return token;
    }

    /// <summary>Mints a key of the caller's tenant in E2B's form (<c>e2b_</c> + 52 hex digits); admin keys only.</summary>
    private static async Task<IResult> CreateKeyAsync(HttpContext context, ApiKeyService keys)
    {
        var caller = context.Caller();
        if (caller.Role is not (Roles.Admin or Roles.Operator))
            throw new MoatException(ErrorKind.PermissionDenied, "admin_required", "minting keys needs an admin key");
        var body = await Json.ReadAsync(context, E2bJson.Default.NewApiKey, new NewApiKey()).ConfigureAwait(false);
        var role = body.Role ?? Roles.Member;
        if (role == Roles.Operator)
            throw new MoatException(ErrorKind.PermissionDenied, "operator_required", "operator keys are minted through /v1/keys");
        if (body.Name is { Length: > 200 })
            throw MoatException.Invalid("invalid_name", "key names are at most 200 characters");
        var (record, key) = await keys.CreateAsync(caller.TenantId, role, body.Name ?? "e2b", prefix: "e2b", context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new CreatedApiKey { Id = record.Id, Key = key, Name = record.Name, CreatedAt = record.CreatedAt }, E2bJson.Default.CreatedApiKey, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> MetricsAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Caller();
        var record = await VisibleAsync(manager, id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        if (await E2bMetrics.ReadAsync(manager, record, context.RequestAborted).ConfigureAwait(false) is not { } now)
            return Results.Json(new List<SandboxMetric>(), E2bJson.Default.ListSandboxMetric);
        var metric = new SandboxMetric
        {
            Timestamp = now.At,
            TimestampUnix = now.At.ToUnixTimeSeconds(),
            CpuCount = now.CpuCount,
            CpuUsedPct = now.CpuUsedPct,
            MemUsed = now.MemUsed,
            MemTotal = now.MemTotal,
            DiskUsed = now.DiskUsed,
            DiskTotal = now.DiskTotal,
        };
        return Results.Json(new List<SandboxMetric> { metric }, E2bJson.Default.ListSandboxMetric);
    }
}
