using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Moat.Core.CodeInterpreter;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.E2b.Connect;

namespace Moat.Server.E2b.Envd;

/// <summary>
/// envd's <c>process.Process</c> service, relayed to the sandbox's agent: Start (a command, or a
/// terminal with <c>pty</c>), Connect (re-attach by pid or tag), List, SendInput, StreamInput,
/// CloseStdin, SendSignal and Update (terminal size). Start's deadline (Connect-Timeout-Ms) is the
/// command's timeout, as in envd; a client that goes away leaves the process running.
/// </summary>
internal sealed class ProcessService(SandboxManager manager, EnvdProcesses processes)
{
    public const string Service = "process.Process";

    public Task HandleAsync(HttpContext context, SandboxTarget target, string method) => method switch
    {
        "Start" => StartAsync(context, target),
        "Connect" => ConnectAsync(context, target),
        "List" => EnvdRpc.UnaryAsync(context, E2bJson.Default.ListRequest, E2bJson.Default.ListResponse, _ => ListAsync(context, target)),
        "SendInput" => EnvdRpc.UnaryAsync(context, E2bJson.Default.SendInputRequest, E2bJson.Default.Empty, r => SendInputAsync(context, target, r)),
        "StreamInput" => StreamInputAsync(context, target),
        "CloseStdin" => EnvdRpc.UnaryAsync(context, E2bJson.Default.CloseStdinRequest, E2bJson.Default.Empty, r => CloseStdinAsync(context, target, r)),
        "SendSignal" => EnvdRpc.UnaryAsync(context, E2bJson.Default.SendSignalRequest, E2bJson.Default.Empty, r => SendSignalAsync(context, target, r)),
        "Update" => EnvdRpc.UnaryAsync(context, E2bJson.Default.UpdateRequest, E2bJson.Default.Empty, r => UpdateAsync(context, target, r)),
        _ => EnvdRpc.UnimplementedAsync(context, Service, method),
    };

    private Task StartAsync(HttpContext context, SandboxTarget target) => EnvdRpc.StreamAsync(context, E2bJson.Default.StartRequest, async (request, stream, ct) =>
    {
        var config = request.Process ?? throw new ConnectException(ConnectCode.InvalidArgument, "process (cmd, args) is required");
        if (string.IsNullOrEmpty(config.Cmd))
            throw new ConnectException(ConnectCode.InvalidArgument, "process.cmd is required");
        (int Cols, int Rows)? pty = request.Pty is { } p ? ((int)(p.Size?.Cols ?? 80), (int)(p.Size?.Rows ?? 24)) : null;
        var spec = new CommandSpec
        {
            Argv = [config.Cmd, .. config.Args ?? []],
            Cwd = string.IsNullOrEmpty(config.Cwd) ? null : config.Cwd,
            Env = config.Envs,
            User = target.User,
            Stdin = pty is not null || request.Stdin == true,
            Tag = string.IsNullOrEmpty(request.Tag) ? null : request.Tag,
            Pty = pty is { } size ? (Math.Clamp(size.Cols, 1, 1000), Math.Clamp(size.Rows, 1, 1000)) : null,
            Timeout = ConnectRpc.Timeout(context.Request),
        };
        var (process, subscription) = await processes.StartAsync(target.Sandbox, spec, config, ct).ConfigureAwait(false);
        await RelayAsync(context, stream, process, subscription, ct).ConfigureAwait(false);
    });

    private Task ConnectAsync(HttpContext context, SandboxTarget target) => EnvdRpc.StreamAsync(context, E2bJson.Default.ConnectRequest, async (request, stream, ct) =>
    {
        var selector = Selector(request.Process);
        var (process, subscription) = await processes.ConnectAsync(target.Sandbox, selector, ct).ConfigureAwait(false);
        await RelayAsync(context, stream, process, subscription, ct).ConfigureAwait(false);
    });

    /// <summary>start{pid}, then data events as they come, then end; keepalives in the silences.</summary>
    private static async Task RelayAsync(HttpContext context, ConnectRpc.ServerStream stream, EnvdProcess process, EnvdSubscription subscription, CancellationToken cancellationToken)
    {
        using (subscription)
        {
            await stream.WriteAsync(new ProcessEventResponse { Event = new ProcessEventMessage { Start = new StartEvent { Pid = (uint)process.Pid } } }, E2bJson.Default.ProcessEventResponse, cancellationToken).ConfigureAwait(false);
            await using var keepalive = EnvdRpc.Keepalive(context, stream, new ProcessEventResponse { Event = new ProcessEventMessage { Keepalive = new Empty() } }, E2bJson.Default.ProcessEventResponse, cancellationToken);
            await foreach (var item in subscription.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                switch (item)
                {
                    case DataEvent data:
                        await stream.WriteAsync(new ProcessEventResponse { Event = new ProcessEventMessage { Data = data } }, E2bJson.Default.ProcessEventResponse, cancellationToken).ConfigureAwait(false);
                        break;
                    case EndEvent end:
                        await stream.WriteAsync(new ProcessEventResponse { Event = new ProcessEventMessage { End = end } }, E2bJson.Default.ProcessEventResponse, cancellationToken).ConfigureAwait(false);
                        return;
                    case ConnectException error:
                        throw error;
                }
            }
        }
    }

    private static ProcessSelector Selector(ProcessSelector? selector) =>
        selector is { Pid: > 0 } or { Tag.Length: > 0 } ? selector : throw new ConnectException(ConnectCode.InvalidArgument, "process.pid or process.tag is required");

    private async Task<ListResponse> ListAsync(HttpContext context, SandboxTarget target)
    {
        var running = await manager.ListCommandsAsync(target.Sandbox.Id, target.Sandbox.TenantId, context.RequestAborted).ConfigureAwait(false);
        var known = processes.Of(target.Sandbox.Id).ToDictionary(p => p.Pid);
        var response = new ListResponse();
        foreach (var p in running)
        {
            // Code-context interpreters are Moat's, not the user's commands.
            if (!p.Running || p.Tag.StartsWith(CodeContextManager.KernelTag, StringComparison.Ordinal))
                continue;
            var config = known.TryGetValue(p.Pid, out var k) && !string.IsNullOrEmpty(k.Config.Cmd)
                ? k.Config
                : new ProcessConfig { Cmd = p.Argv.FirstOrDefault() ?? "", Args = p.Argv.Skip(1).ToList(), Envs = [], Cwd = string.IsNullOrEmpty(p.Cwd) ? null : p.Cwd };
            config.Envs ??= [];
            config.Args ??= [];
            response.Processes.Add(new ProcessInfoMessage { Pid = (uint)p.Pid, Tag = string.IsNullOrEmpty(p.Tag) ? null : p.Tag, Config = config });
        }
        return response;
    }

    private async Task<Empty> SendInputAsync(HttpContext context, SandboxTarget target, SendInputRequest request)
    {
        var process = processes.Require(target.Sandbox.Id, Selector(request.Process));
        var input = request.Input ?? throw new ConnectException(ConnectCode.InvalidArgument, "input (stdin or pty) is required");
        await process.WriteInputAsync(input.Stdin, input.Pty, context.RequestAborted).ConfigureAwait(false);
        return new Empty();
    }

    /// <summary>Client streaming: a start naming the process, then input messages (and keepalives).</summary>
    private Task StreamInputAsync(HttpContext context, SandboxTarget target) => EnvdRpc.ClientStreamAsync(context, async ct =>
    {
        EnvdProcess? process = null;
        await foreach (var envelope in ConnectRpc.ReadEnvelopesAsync(context).ConfigureAwait(false))
        {
            var message = ConnectRpc.Parse(envelope, E2bJson.Default.StreamInputRequest);
            if (message.Start is { } start)
                process = processes.Require(target.Sandbox.Id, Selector(start.Process));
            else if (message.Data?.Input is { } input)
            {
                if (process is null)
                    throw new ConnectException(ConnectCode.FailedPrecondition, "send a start message naming the process before input");
                await process.WriteInputAsync(input.Stdin, input.Pty, ct).ConfigureAwait(false);
            }
        }
    });

    private async Task<Empty> CloseStdinAsync(HttpContext context, SandboxTarget target, CloseStdinRequest request)
    {
        var process = processes.Require(target.Sandbox.Id, Selector(request.Process));
        await process.CloseStdinAsync(context.RequestAborted).ConfigureAwait(false);
        return new Empty();
    }

    private async Task<Empty> SendSignalAsync(HttpContext context, SandboxTarget target, SendSignalRequest request)
    {
        var selector = Selector(request.Process);
        int signal = SignalOf(request.Signal);
        int pid;
        if (selector.Pid is { } p)
            pid = (int)p;
        else
        {
            pid = processes.Find(target.Sandbox.Id, selector)?.Pid
                ?? (await manager.ListCommandsAsync(target.Sandbox.Id, target.Sandbox.TenantId, context.RequestAborted).ConfigureAwait(false))
                    .LastOrDefault(x => x.Running && x.Tag == selector.Tag)?.Pid
                ?? throw EnvdProcesses.NotFound(selector);
        }
        if (processes.Find(target.Sandbox.Id, new ProcessSelector { Pid = (uint)pid }) is { Exited: true })
            throw EnvdProcesses.NotFound(selector);
        try
        {
            await manager.SignalCommandAsync(target.Sandbox.Id, target.Sandbox.TenantId, pid, signal, context.RequestAborted).ConfigureAwait(false);
        }
        catch (MoatException ex) when (ex.Kind is ErrorKind.NotFound or ErrorKind.InvalidArgument)
        {
            throw EnvdProcesses.NotFound(selector);
        }
        return new Empty();
    }

    /// <summary>envd's Signal enum: SIGTERM and SIGKILL (by name or number).</summary>
    private static int SignalOf(JsonElement? signal)
    {
        if (signal is { ValueKind: JsonValueKind.Number } n && n.TryGetInt32(out int number) && number is 9 or 15)
            return number;
        if (signal is { ValueKind: JsonValueKind.String } s)
        {
            switch (s.GetString())
            {
                case "SIGNAL_SIGKILL":
                    return 9;
                case "SIGNAL_SIGTERM":
                    return 15;
            }
        }
        throw new ConnectException(ConnectCode.Unimplemented, $"invalid signal: {signal?.ToString() ?? "SIGNAL_UNSPECIFIED"}");
    }

    private async Task<Empty> UpdateAsync(HttpContext context, SandboxTarget target, UpdateRequest request)
    {
        var process = processes.Require(target.Sandbox.Id, Selector(request.Process));
        if (request.Pty?.Size is { } size)
            await process.ResizeAsync((int)(size.Cols ?? 80), (int)(size.Rows ?? 24), context.RequestAborted).ConfigureAwait(false);
        return new Empty();
    }
}
