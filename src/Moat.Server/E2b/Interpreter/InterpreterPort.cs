using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Moat.Core.CodeInterpreter;
using Moat.Core.Errors;
using Moat.Server.Api;
using Moat.Server.E2b.Envd;
using Moat.Server.Errors;

namespace Moat.Server.E2b.Interpreter;

/// <summary>
/// What <c>@e2b/code-interpreter</c> finds on port 49999 of a sandbox: <c>POST /execute</c>
/// (NDJSON lines: stdout, stderr, result, error, number_of_executions, end_of_execution),
/// <c>POST/GET /contexts</c>, <c>POST /contexts/{id}/restart</c>, <c>DELETE /contexts/{id}</c>
/// and <c>GET /health</c>, served by <see cref="CodeContextManager"/> (no Jupyter: each context is
/// one interpreter with Moat's kernel script). Errors are plain text with a status, as E2B's
/// server answers them.
/// </summary>
internal sealed class InterpreterPort(CodeContextManager contexts)
{
    public const int Port = 49999;

    public async Task HandleAsync(HttpContext context, SandboxTarget target, string path)
    {
        var sandbox = target.Sandbox;
        try
        {
            var segments = path.Trim('/').Split('/');
            switch (context.Request.Method, segments)
            {
                case ("GET", ["health"]):
                    await Results.Json("OK", E2bJson.Default.String).ExecuteAsync(context).ConfigureAwait(false);
                    return;
                case ("POST", ["execute"]):
                    await ExecuteAsync(context, target).ConfigureAwait(false);
                    return;
                case ("POST", ["contexts"]):
                    var body = await Json.ReadAsync(context, E2bJson.Default.CreateContextBody, new CreateContextBody()).ConfigureAwait(false);
                    var created = await contexts.CreateContextAsync(sandbox.Id, sandbox.TenantId, body.Language, body.Cwd, context.RequestAborted).ConfigureAwait(false);
                    await Results.Json(ToBody(created), E2bJson.Default.ContextBody).ExecuteAsync(context).ConfigureAwait(false);
                    return;
                case ("GET", ["contexts"]):
                    var list = await contexts.ListContextsAsync(sandbox.Id, sandbox.TenantId, context.RequestAborted).ConfigureAwait(false);
                    await Results.Json(list.Select(ToBody).ToList(), E2bJson.Default.ListContextBody).ExecuteAsync(context).ConfigureAwait(false);
                    return;
                case ("POST", ["contexts", var id, "restart"]):
                    await contexts.RestartContextAsync(sandbox.Id, sandbox.TenantId, id, context.RequestAborted).ConfigureAwait(false);
                    await Results.Json<string?>(null, E2bJson.Default.String).ExecuteAsync(context).ConfigureAwait(false);
                    return;
                case ("DELETE", ["contexts", var id]):
                    await contexts.RemoveContextAsync(sandbox.Id, sandbox.TenantId, id, context.RequestAborted).ConfigureAwait(false);
                    await Results.Json<string?>(null, E2bJson.Default.String).ExecuteAsync(context).ConfigureAwait(false);
                    return;
                default:
                    await TextErrorAsync(context, StatusCodes.Status404NotFound, $"no code interpreter route for {context.Request.Method} {path}").ConfigureAwait(false);
                    return;
            }
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
        }
        catch (MoatException ex)
        {
            int status = ex.Code is "sandbox_not_running" or "sandbox_unavailable" ? StatusCodes.Status502BadGateway : ErrorWriter.StatusOf(ex.Kind);
            await TextErrorAsync(context, status, ex.Message).ConfigureAwait(false);
        }
    }

    private static ContextBody ToBody(CodeContextInfo info) => new(info.Id, info.Language, info.Cwd);

    private static async Task TextErrorAsync(HttpContext context, int status, string message)
    {
        if (context.Response.HasStarted)
            return;
        context.Response.StatusCode = status;
        context.Response.ContentType = "text/plain; charset=utf-8";
        await context.Response.WriteAsync(message, context.RequestAborted).ConfigureAwait(false);
    }

    private async Task ExecuteAsync(HttpContext context, SandboxTarget target)
    {
        var body = await Json.ReadAsync(context, E2bJson.Default.ExecuteBody, new ExecuteBody()).ConfigureAwait(false);
        if (body.Code is null)
            throw MoatException.Invalid("invalid_code", "code is required");
        var request = new CodeRequest { Code = body.Code, ContextId = body.ContextId, Language = body.Language, Env = body.EnvVars };
        await using var events = contexts.ExecuteAsync(target.Sandbox.Id, target.Sandbox.TenantId, request, context.RequestAborted).GetAsyncEnumerator(context.RequestAborted);
        // A bad request (unknown context, missing interpreter) fails before the first event: give
        // it a moment, so it can still be a status; a quiet cell gets its headers anyway.
        var first = events.MoveNextAsync().AsTask();
        await Task.WhenAny(first, Task.Delay(TimeSpan.FromSeconds(2), context.RequestAborted)).ConfigureAwait(false);
        if (first.IsFaulted)
            await first.ConfigureAwait(false);
        context.Response.StatusCode = StatusCodes.Status200OK;
        context.Response.ContentType = "application/x-ndjson";
        context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        await context.Response.StartAsync(context.RequestAborted).ConfigureAwait(false);
        var output = context.Response.Body;
        try
        {
            bool any = await first.ConfigureAwait(false);
            while (any)
            {
                await WriteLineAsync(output, events.Current, context.RequestAborted).ConfigureAwait(false);
                any = await events.MoveNextAsync().ConfigureAwait(false);
            }
        }
        catch (MoatException ex)
        {
            await WriteLineAsync(output, new CodeError("SandboxError", ex.Message, ""), context.RequestAborted).ConfigureAwait(false);
            await WriteLineAsync(output, new CodeExecutionEnd(0, TimeSpan.Zero), context.RequestAborted).ConfigureAwait(false);
        }
    }

    /// <summary>One event as E2B's code interpreter streams it.</summary>
    private static async Task WriteLineAsync(Stream output, CodeEvent evt, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            switch (evt)
            {
                case CodeOutput o:
                    json.WriteString("type", o.Stderr ? "stderr" : "stdout");
                    json.WriteString("text", o.Text);
                    json.WriteString("timestamp", DateTimeOffset.UtcNow);
                    break;
                case CodeResult r:
                    json.WriteString("type", "result");
                    foreach (var (key, value) in r.Formats)
                    {
                        json.WritePropertyName(key);
                        value.WriteTo(json);
                    }
                    json.WriteBoolean("is_main_result", r.IsMainResult);
                    break;
                case CodeError e:
                    json.WriteString("type", "error");
                    json.WriteString("name", e.Name);
                    json.WriteString("value", e.Value);
                    json.WriteString("traceback", e.Traceback);
                    break;
                case CodeExecutionEnd end:
                    // The count first, then the end, as E2B's server sends them.
                    json.WriteString("type", "number_of_executions");
                    json.WriteNumber("execution_count", end.ExecutionCount);
                    json.WriteEndObject();
                    json.Flush();
                    buffer.Write("\n{\"type\":\"end_of_execution\"}"u8);
                    await FlushLineAsync(output, buffer, cancellationToken).ConfigureAwait(false);
                    return;
            }
            json.WriteEndObject();
        }
        await FlushLineAsync(output, buffer, cancellationToken).ConfigureAwait(false);
    }

    private static async Task FlushLineAsync(Stream output, MemoryStream buffer, CancellationToken cancellationToken)
    {
        buffer.WriteByte((byte)'\n');
        await output.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), cancellationToken).ConfigureAwait(false);
        await output.FlushAsync(cancellationToken).ConfigureAwait(false);
    }
}
