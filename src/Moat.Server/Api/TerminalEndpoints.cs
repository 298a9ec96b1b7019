using System.Net.WebSockets;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>
/// Interactive terminals: <c>GET /v1/sandboxes/{id}/terminal</c> upgraded to a WebSocket runs a
/// program (a login shell unless <c>cmd</c> is given, repeatable for argv) on a pseudo-terminal.
/// Binary messages carry the terminal's bytes both ways; text messages carry control as JSON
/// (<see cref="TerminalMessage"/>: resize and signals in, the exit out). Closing the socket hangs
/// the terminal up (SIGHUP), then kills what is left.
/// </summary>
internal static class TerminalEndpoints
{
    private const int MaxControlMessage = 4096;

    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapGet("/v1/sandboxes/{id}/terminal", TerminalAsync).WithName("OpenTerminal").WithTags("terminal");
    }

    private static async Task TerminalAsync(HttpContext context, SandboxManager manager, string id, int? cols, int? rows, string? user, string? cwd, string? term)
    {
        var caller = context.Writer();
        if (!context.WebSockets.IsWebSocketRequest)
            throw MoatException.Invalid("websocket_required", "open the terminal with a WebSocket (Upgrade: websocket)");
        var argv = context.Request.Query["cmd"].Where(a => a is not null).Select(a => a!).ToList();
        var spec = new CommandSpec
        {
            Argv = argv.Count > 0 ? argv : ["/bin/bash", "-i", "-l"],
            Pty = (Math.Clamp(cols ?? 80, 1, 1000), Math.Clamp(rows ?? 24, 1, 1000)),
            Stdin = true,
            User = string.IsNullOrEmpty(user) ? null : user,
            Cwd = string.IsNullOrEmpty(cwd) ? null : cwd,
            Env = new Dictionary<string, string> { ["TERM"] = string.IsNullOrEmpty(term) ? "xterm-256color" : term, ["LANG"] = "C.UTF-8" },
        };
        SandboxCommand command;
        try
        {
            command = await manager.StartCommandAsync(id, caller.TenantId, spec, context.RequestAborted).ConfigureAwait(false);
        }
        catch (MoatException ex) when (ex.Code == SandboxManager.CommandNotFound && argv.Count == 0)
        {
            // A template without bash still has a shell.
            command = await manager.StartCommandAsync(id, caller.TenantId, spec with { Argv = ["/bin/sh", "-i"] }, context.RequestAborted).ConfigureAwait(false);
        }
        await using (command.ConfigureAwait(false))
        {
            using var socket = await context.WebSockets.AcceptWebSocketAsync().ConfigureAwait(false);
            using var done = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
            var output = PumpOutputAsync(socket, command, done.Token);
            try
            {
                await PumpInputAsync(socket, command, done.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is WebSocketException or OperationCanceledException)
            {
            }
            if (!output.IsCompleted)
            {
                // The client hung up: so does the terminal, and what ignores the hangup is killed.
                await SignalQuietlyAsync(command, 1).ConfigureAwait(false);
                if (await Task.WhenAny(output, Task.Delay(TimeSpan.FromSeconds(2))).ConfigureAwait(false) != output)
                    await command.KillAsync().ConfigureAwait(false);
                await done.CancelAsync().ConfigureAwait(false);
            }
            await output.ConfigureAwait(false);
        }
    }

    private static async Task PumpOutputAsync(WebSocket socket, SandboxCommand command, CancellationToken cancellationToken)
    {
        try
        {
            await foreach (var chunk in command.ReadOutputAsync(cancellationToken).ConfigureAwait(false))
                await socket.SendAsync(chunk.Data, WebSocketMessageType.Binary, endOfMessage: true, cancellationToken).ConfigureAwait(false);
            var exit = await command.WaitExitAsync(cancellationToken).ConfigureAwait(false);
            await SendAsync(socket, new TerminalMessage { Exit = ExecEndpoints.ExitOf(exit) }, cancellationToken).ConfigureAwait(false);
            await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "exited", cancellationToken).ConfigureAwait(false);
        }
        catch (MoatException ex)
        {
            await SendAsync(socket, new TerminalMessage { Error = new ErrorBody(ex.Code, ex.Message) }, CancellationToken.None).ConfigureAwait(false);
            await CloseQuietlyAsync(socket, WebSocketCloseStatus.InternalServerError, ex.Code).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
        }
    }

    private static async Task PumpInputAsync(WebSocket socket, SandboxCommand command, CancellationToken cancellationToken)
    {
        var buffer = new byte[16384];
        using var control = new MemoryStream();
        while (socket.State == WebSocketState.Open)
        {
            var received = await socket.ReceiveAsync(buffer, cancellationToken).ConfigureAwait(false);
            switch (received.MessageType)
            {
                case WebSocketMessageType.Close:
                    return;
                case WebSocketMessageType.Binary:
                    if (received.Count > 0)
                        await command.WriteStdinAsync(buffer.AsMemory(0, received.Count), cancellationToken).ConfigureAwait(false);
                    break;
                case WebSocketMessageType.Text:
                    control.Write(buffer, 0, received.Count);
                    if (control.Length > MaxControlMessage)
                    {
                        await CloseQuietlyAsync(socket, WebSocketCloseStatus.MessageTooBig, "control messages are at most 4096 bytes").ConfigureAwait(false);
                        return;
                    }
                    if (!received.EndOfMessage)
                        break;
                    await ApplyAsync(socket, command, control.ToArray(), cancellationToken).ConfigureAwait(false);
                    control.SetLength(0);
                    break;
            }
        }
    }

    private static async Task ApplyAsync(WebSocket socket, SandboxCommand command, byte[] json, CancellationToken cancellationToken)
    {
        TerminalMessage? message;
        try
        {
            message = JsonSerializer.Deserialize(json, MoatJson.Default.TerminalMessage);
        }
        catch (JsonException)
        {
            await SendAsync(socket, new TerminalMessage { Error = new ErrorBody("invalid_message", "text messages must be JSON: {\"resize\":{\"cols\":N,\"rows\":N}} or {\"signal\":N}") }, cancellationToken).ConfigureAwait(false);
            return;
        }
        if (message?.Resize is { } size)
            await command.ResizeAsync(Math.Clamp(size.Cols, 1, 1000), Math.Clamp(size.Rows, 1, 1000), cancellationToken).ConfigureAwait(false);
        if (message?.Signal is { } signal and >= 1 and <= 64)
            await command.SignalAsync(signal, cancellationToken).ConfigureAwait(false);
    }

    private static async Task SendAsync(WebSocket socket, TerminalMessage message, CancellationToken cancellationToken)
    {
        if (socket.State != WebSocketState.Open && socket.State != WebSocketState.CloseReceived)
            return;
        try
        {
            await socket.SendAsync(JsonSerializer.SerializeToUtf8Bytes(message, MoatJson.Default.TerminalMessage), WebSocketMessageType.Text, endOfMessage: true, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
        }
    }

    private static async Task CloseQuietlyAsync(WebSocket socket, WebSocketCloseStatus status, string reason)
    {
        try
        {
            await socket.CloseOutputAsync(status, reason, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is WebSocketException or IOException)
        {
        }
    }

    private static async Task SignalQuietlyAsync(SandboxCommand command, int signal)
    {
        try
        {
            await command.SignalAsync(signal).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is MoatException or InvalidOperationException)
        {
        }
    }
}
