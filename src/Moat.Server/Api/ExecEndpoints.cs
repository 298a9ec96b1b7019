using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>Running commands: buffered JSON, or a live NDJSON stream of output events.</summary>
internal static class ExecEndpoints
{
    public const string NdJson = "application/x-ndjson";

    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/sandboxes/{id}/exec", ExecAsync).WithName("Exec").WithTags("exec");
    }

    private static async Task ExecAsync(HttpContext context, SandboxManager manager, string id)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.ExecRequestDto, new ExecRequestDto()).ConfigureAwait(false);
        bool base64 = request.Encoding?.ToLowerInvariant() switch
        {
            null or "" or "utf8" or "utf-8" => false,
            "base64" => true,
            var other => throw MoatException.Invalid("invalid_encoding", $"encoding must be utf8 or base64, got '{other}'"),
        };
        var command = request.ToCommand();
        var stdin = ApiMapping.StdinOf(request.Stdin, request.StdinBase64);
        // Background: answered at once with its pid, whichever answer format was asked for.
        if (request.Background)
        {
            if (stdin.Length > 0)
                throw MoatException.Invalid("invalid_stdin", "a background command takes no stdin");
            int pid = await manager.StartBackgroundAsync(id, caller.TenantId, command with { Tag = request.Tag }, context.RequestAborted).ConfigureAwait(false);
            await Results.Json(new ExecStartDto(pid), MoatJson.Default.ExecStartDto, statusCode: StatusCodes.Status202Accepted).ExecuteAsync(context).ConfigureAwait(false);
            return;
        }

        bool stream = context.Request.Headers.Accept.Any(a => a is not null && a.Contains(NdJson, StringComparison.OrdinalIgnoreCase));
        if (!stream)
        {
            var result = await manager.RunCommandAsync(id, caller.TenantId, command, stdin, context.RequestAborted).ConfigureAwait(false);
            await Results.Json(new ExecResultDto
            {
                ExitCode = result.Exit.ExitCode,
                Signal = result.Exit.Signal == 0 ? null : result.Exit.Signal,
                TimedOut = result.Exit.TimedOut,
                OomKilled = result.Exit.OomKilled,
                Stdout = Encode(result.Stdout, base64),
                Stderr = Encode(result.Stderr, base64),
                StdoutTruncated = result.StdoutTruncated,
                StderrTruncated = result.StderrTruncated,
                DurationMs = (long)result.Exit.Duration.TotalMilliseconds,
            }, MoatJson.Default.ExecResultDto).ExecuteAsync(context).ConfigureAwait(false);
            return;
        }

        await using var running = await manager.StartCommandAsync(id, caller.TenantId, command with { Stdin = stdin.Length > 0, Tag = request.Tag }, context.RequestAborted).ConfigureAwait(false);
        if (stdin.Length > 0)
        {
            await running.WriteStdinAsync(stdin, context.RequestAborted).ConfigureAwait(false);
            await running.CloseStdinAsync(context.RequestAborted).ConfigureAwait(false);
        }
        // The client hung up: its command does not run on unobserved.
        await StreamAsync(context, running, base64, killOnDisconnect: true).ConfigureAwait(false);
    }

    /// <summary>
    /// Streams a command's output as NDJSON events (start, stdout, stderr, exit) as they happen.
    /// When the client goes away the command is killed, or (attached background commands) left running.
    /// </summary>
    internal static async Task StreamAsync(HttpContext context, SandboxCommand running, bool base64, bool killOnDisconnect)
    {
        context.Response.ContentType = NdJson;
        context.Response.Headers.CacheControl = "no-store";
        // Let each event reach the client as it happens.
        context.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpResponseBodyFeature>()?.DisableBuffering();
        var output = context.Response.Body;
        await WriteEventAsync(output, new ExecEvent { Start = new ExecStartDto(running.Pid) }, context.RequestAborted).ConfigureAwait(false);
        var decoders = new[] { Encoding.UTF8.GetDecoder(), Encoding.UTF8.GetDecoder() };
        try
        {
            await foreach (var chunk in running.ReadOutputAsync(context.RequestAborted).ConfigureAwait(false))
            {
                string text = base64 ? Convert.ToBase64String(chunk.Data.Span) : Decode(decoders[(int)chunk.Stream], chunk.Data.Span);
                if (text.Length == 0)
                    continue;
                var evt = chunk.Stream == OutputStream.Stdout ? new ExecEvent { Stdout = text } : new ExecEvent { Stderr = text };
                await WriteEventAsync(output, evt, context.RequestAborted).ConfigureAwait(false);
            }
            var exit = await running.WaitExitAsync(context.RequestAborted).ConfigureAwait(false);
            await WriteEventAsync(output, new ExecEvent { Exit = ExitOf(exit) }, context.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            if (killOnDisconnect)
                await running.KillAsync().ConfigureAwait(false);
        }
        catch (MoatException ex)
        {
            await WriteEventAsync(output, new ExecEvent { Error = new ErrorBody(ex.Code, ex.Message) }, CancellationToken.None).ConfigureAwait(false);
        }
    }

    internal static ExecExitDto ExitOf(ProcessExit exit) => new()
    {
        ExitCode = exit.ExitCode,
        Signal = exit.Signal == 0 ? null : exit.Signal,
        TimedOut = exit.TimedOut,
        OomKilled = exit.OomKilled,
        DurationMs = (long)exit.Duration.TotalMilliseconds,
    };

    private static string Encode(byte[] bytes, bool base64) => base64 ? Convert.ToBase64String(bytes) : Encoding.UTF8.GetString(bytes);

    // A decoder per stream keeps a multi-byte character that straddles two chunks intact.
    private static string Decode(Decoder decoder, ReadOnlySpan<byte> bytes)
    {
        var chars = new char[decoder.GetCharCount(bytes, flush: false)];
        int n = decoder.GetChars(bytes, chars, flush: false);
        return new string(chars, 0, n);
    }

    private static async Task WriteEventAsync(Stream output, ExecEvent evt, CancellationToken cancellationToken)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(evt, MoatJson.Default.ExecEvent);
        await output.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
        await output.WriteAsync("\n"u8.ToArray(), cancellationToken).ConfigureAwait(false);
        await output.FlushAsync(cancellationToken).ConfigureAwait(false);
    }
}
