using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Runtimes;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>Capabilities and the sandbox lifecycle: create, list, get, delete, timeout.</summary>
internal static class SandboxEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapGet("/v1/capabilities", CapabilitiesAsync).WithName("GetCapabilities").WithTags("capabilities");
        var sandboxes = app.MapGroup("/v1/sandboxes").WithTags("sandboxes");
        sandboxes.MapPost("", CreateAsync).WithName("CreateSandbox");
        sandboxes.MapGet("", ListAsync).WithName("ListSandboxes");
        sandboxes.MapGet("/{id}", GetAsync).WithName("GetSandbox");
        sandboxes.MapDelete("/{id}", DeleteAsync).WithName("DeleteSandbox");
        sandboxes.MapPost("/{id}/timeout", SetTimeoutAsync).WithName("SetSandboxTimeout");
    }

    private static async Task<IResult> CapabilitiesAsync(HttpContext context, SandboxManager manager)
    {
        var status = await manager.Runtimes.StatusAsync(context.RequestAborted).ConfigureAwait(false);
        string? defaultTier = null;
        try
        {
            defaultTier = (await manager.Runtimes.DefaultTierAsync(context.RequestAborted).ConfigureAwait(false)).Name();
        }
        catch (MoatException)
        {
        }
        var o = manager.Options;
        var response = new CapabilitiesResponse
        {
            Version = MoatServer.Version,
            DefaultIsolation = defaultTier,
            Tiers = status.Select(s => manager.Runtimes.Find(s.Tier) is { } runtime && s.Usable
                ? new TierInfo(s.Tier.Name(), s.Usable, s.Reason, s.Details)
                {
                    SnapshotKinds = runtime.SnapshotKinds,
                    MemorySnapshotProblem = runtime.SnapshotKinds.Contains(SnapshotKindNames.Memory) ? null : runtime.MemorySnapshotProblem,
                }
                : new TierInfo(s.Tier.Name(), s.Usable, s.Reason, s.Details)).ToList(),
            Limits = new LimitsInfo
            {
                MaxCpus = o.Limits.MaxCpus,
                MinMemoryMiB = o.Limits.MinMemoryMiB,
                MaxMemoryMiB = o.Limits.MaxMemoryMiB,
                MinDiskMiB = o.Limits.MinDiskMiB,
                MaxDiskMiB = o.Limits.MaxDiskMiB,
                MaxPids = o.Limits.MaxPids,
                MaxTimeoutSeconds = o.Limits.MaxTimeout is { } t ? (long)t.TotalSeconds : null,
                MaxFileBytes = Math.Min(o.MaxFileReadBytes, o.MaxFileWriteBytes),
                MaxBufferedOutputBytes = o.MaxBufferedOutputBytes,
            },
            Defaults = new ResourcesDto { Cpus = o.DefaultResources.Cpus, MemoryMiB = o.DefaultResources.MemoryMiB, DiskMiB = o.DefaultResources.DiskMiB, Pids = o.DefaultResources.Pids, OpenFiles = o.DefaultResources.OpenFiles },
            DefaultTimeoutSeconds = o.DefaultTimeoutSeconds,
            NetworkModes = manager.Network?.Modes.Select(m => m.ToString().ToLowerInvariant()).ToList() ?? ["none"],
        };
        return Results.Json(response, MoatJson.Default.CapabilitiesResponse);
    }

    private static async Task<IResult> CreateAsync(HttpContext context, SandboxManager manager)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.CreateSandboxRequest, new CreateSandboxRequest()).ConfigureAwait(false);
        var spec = await ApiMapping.ToSpecAsync(request, manager, context.RequestAborted).ConfigureAwait(false);
        var record = await manager.CreateAsync(spec, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(record.ToDto(), MoatJson.Default.SandboxDto, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> ListAsync(HttpContext context, SandboxManager manager, string? state, int? limit)
    {
        var caller = context.Caller();
        var states = new List<SandboxState>();
        foreach (var name in (state ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            states.Add(SandboxStates.TryParse(name) ?? throw MoatException.Invalid("invalid_state", $"unknown state '{name}'; use creating, running, paused, stopping, stopped or failed"));
        var metadata = new Dictionary<string, string>();
        foreach (var (key, value) in context.Request.Query)
        {
            if (key.StartsWith("metadata.", StringComparison.Ordinal) && key.Length > "metadata.".Length)
                metadata[key["metadata.".Length..]] = value.ToString();
        }
        if (limit is < 1 or > 10000)
            throw MoatException.Invalid("invalid_limit", "limit must be 1-10000");
        var list = await manager.ListAsync(new SandboxQuery { TenantId = caller.TenantId, States = states, Metadata = metadata, Limit = limit ?? 1000 }, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new SandboxListResponse(list.Select(r => r.ToDto()).ToList()), MoatJson.Default.SandboxListResponse);
    }

    private static async Task<IResult> GetAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Caller();
        var record = await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        var usage = record.State == SandboxState.Running ? await manager.GetUsageAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false) : null;
        return Results.Json(record.ToDto(usage), MoatJson.Default.SandboxDto);
    }

    private static async Task<IResult> DeleteAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        await manager.DeleteAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> SetTimeoutAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        // Another tenant's sandbox is 404 before the body is looked at.
        await manager.GetAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        var request = await Json.ReadAsync(context, MoatJson.Default.SetTimeoutRequest, new SetTimeoutRequest()).ConfigureAwait(false);
        if (request.TimeoutSeconds is not { } seconds)
            throw MoatException.Invalid("invalid_timeout", "timeoutSeconds is required");
        if (seconds <= 0 || seconds > 10L * 365 * 86400)
            throw MoatException.Invalid("invalid_timeout", $"timeoutSeconds must be between 1 and {10L * 365 * 86400}, got {seconds}");
        var onTimeout = ApiMapping.ToTimeoutAction(request.OnTimeout);
        var record = await manager.SetTimeoutAsync(id, caller.TenantId, TimeSpan.FromSeconds(seconds), context.RequestAborted, onTimeout).ConfigureAwait(false);
        return Results.Json(record.ToDto(), MoatJson.Default.SandboxDto);
    }
}
