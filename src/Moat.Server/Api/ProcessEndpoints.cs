using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Protocol.Messages;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>
/// Commands that outlive their request (exec with "background": true): list them, re-attach to
/// their output (the agent keeps it while nobody listens), signal them. And pause / resume.
/// </summary>
internal static class ProcessEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sandboxes/{id}").WithTags("processes");
        group.MapGet("/processes", ListAsync).WithName("ListProcesses");
        group.MapGet("/processes/{pid:int}/output", AttachAsync).WithName("AttachProcess");
        group.MapPost("/processes/{pid:int}/signal", SignalAsync).WithName("SignalProcess");
        group.MapPost("/pause", PauseAsync).WithName("PauseSandbox").WithTags("sandboxes");
        group.MapPost("/resume", ResumeAsync).WithName("ResumeSandbox").WithTags("sandboxes");
    }

    private static ProcessDto ToDto(ProcessInfo p) => new()
    {
        Pid = p.Pid,
        Cmd = p.Argv.ToList(),
        Tag = string.IsNullOrEmpty(p.Tag) ? null : p.Tag,
        Running = p.Running,
        User = string.IsNullOrEmpty(p.User) ? null : p.User,
        Cwd = string.IsNullOrEmpty(p.Cwd) ? null : p.Cwd,
        StartedAt = DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(p.StartedUnixMs, 0, 253402300799999)),
        Exit = p.Exit is { } e && !p.Running ? ExecEndpoints.ExitOf(Core.Agent.ProcessExit.From(e)) : null,
    };

    private static async Task<IResult> ListAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Caller();
        var list = await manager.ListCommandsAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new ProcessListResponse(list.Select(ToDto).ToList()), MoatJson.Default.ProcessListResponse);
    }

    private static async Task AttachAsync(HttpContext context, SandboxManager manager, string id, int pid, bool? replay, string? encoding)
    {
        var caller = context.Writer();
        await using var running = await manager.AttachCommandAsync(id, caller.TenantId, pid, null, replay ?? true, context.RequestAborted).ConfigureAwait(false);
        // Hanging up detaches again: the command keeps running, its output kept for the next attach.
        await ExecEndpoints.StreamAsync(context, running, string.Equals(encoding, "base64", StringComparison.OrdinalIgnoreCase), killOnDisconnect: false).ConfigureAwait(false);
    }

    private static async Task<IResult> SignalAsync(HttpContext context, SandboxManager manager, string id, int pid)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.SignalRequestDto, new SignalRequestDto()).ConfigureAwait(false);
        await manager.SignalCommandAsync(id, caller.TenantId, pid, request.Signal ?? 15, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> PauseAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        var record = await manager.PauseAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(record.ToDto(), MoatJson.Default.SandboxDto);
    }

    private static async Task<IResult> ResumeAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        var record = await manager.ResumeAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(record.ToDto(), MoatJson.Default.SandboxDto);
    }
}
