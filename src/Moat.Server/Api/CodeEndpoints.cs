using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.CodeInterpreter;
using Moat.Core.Errors;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>
/// The code interpreter: stateful code contexts per sandbox (python, javascript, bash). Run code
/// buffered or as an NDJSON stream of stdout / stderr / result / error events ending with end.
/// </summary>
internal static class CodeEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        var code = app.MapGroup("/v1/sandboxes/{id}/code").WithTags("code");
        code.MapPost("", RunAsync).WithName("RunCode");
        code.MapPost("/contexts", CreateContextAsync).WithName("CreateCodeContext");
        code.MapGet("/contexts", ListContextsAsync).WithName("ListCodeContexts");
        code.MapPost("/contexts/{contextId}/restart", RestartContextAsync).WithName("RestartCodeContext");
        code.MapDelete("/contexts/{contextId}", RemoveContextAsync).WithName("RemoveCodeContext");
    }

    private static CodeContextDto ToDto(CodeContextInfo info) => new(info.Id, info.Language, info.Cwd);

    private static async Task RunAsync(HttpContext context, CodeContextManager contexts, string id)
    {
        var caller = context.Writer();
        var body = await Json.ReadAsync(context, MoatJson.Default.CodeRequestDto, new CodeRequestDto()).ConfigureAwait(false);
        if (body.Code is null)
            throw MoatException.Invalid("invalid_code", "code is required");
        if (body.TimeoutSeconds is { } t && !(t > 0 && t < 365 * 86400))
            throw MoatException.Invalid("invalid_timeout", $"timeoutSeconds must be positive and under a year, got {t}");
        var request = new CodeRequest
        {
            Code = body.Code,
            Language = body.Language,
            ContextId = body.ContextId,
            Env = body.Env,
            Timeout = body.TimeoutSeconds is { } s ? TimeSpan.FromSeconds(s) : null,
        };
        var events = contexts.ExecuteAsync(id, caller.TenantId, request, context.RequestAborted);
        bool stream = context.Request.Headers.Accept.Any(a => a is not null && a.Contains(ExecEndpoints.NdJson, StringComparison.OrdinalIgnoreCase));
        if (stream)
            await StreamAsync(context, events).ConfigureAwait(false);
        else
            await BufferAsync(context, events).ConfigureAwait(false);
    }

    private static async Task BufferAsync(HttpContext context, IAsyncEnumerable<CodeEvent> events)
    {
        var results = new List<CodeResultItemDto>();
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        CodeErrorDto? error = null;
        CodeExecutionEnd? end = null;
        await foreach (var evt in events.ConfigureAwait(false))
        {
            switch (evt)
            {
                case CodeOutput { Stderr: false } o:
                    stdout.Append(o.Text);
                    break;
                case CodeOutput o:
                    stderr.Append(o.Text);
                    break;
                case CodeResult r:
                    results.Add(ToDto(r));
                    break;
                case CodeError e:
                    error = new CodeErrorDto(e.Name, e.Value, e.Traceback);
                    break;
                case CodeExecutionEnd x:
                    end = x;
                    break;
            }
        }
        await Results.Json(new CodeResultDto
        {
            Results = results,
            Stdout = stdout.ToString(),
            Stderr = stderr.ToString(),
            Error = error,
            ExecutionCount = end?.ExecutionCount ?? 0,
            DurationMs = (long)(end?.Duration.TotalMilliseconds ?? 0),
            TimedOut = end?.TimedOut ?? false,
        }, MoatJson.Default.CodeResultDto).ExecuteAsync(context).ConfigureAwait(false);
    }

    private static CodeResultItemDto ToDto(CodeResult r) => new() { IsMainResult = r.IsMainResult, Formats = new Dictionary<string, JsonElement>(r.Formats) };

    private static async Task StreamAsync(HttpContext context, IAsyncEnumerable<CodeEvent> events)
    {
        await using var e = events.GetAsyncEnumerator(context.RequestAborted);
        // A bad request (unknown context, no interpreter) fails before the first event: it is
        // still a status then. A quiet cell gets its headers after a moment anyway.
        var first = e.MoveNextAsync().AsTask();
        await Task.WhenAny(first, Task.Delay(TimeSpan.FromSeconds(2), context.RequestAborted)).ConfigureAwait(false);
        if (first.IsFaulted)
            await first.ConfigureAwait(false);
        context.Response.ContentType = ExecEndpoints.NdJson;
        context.Response.Headers.CacheControl = "no-store";
        context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        await context.Response.StartAsync(context.RequestAborted).ConfigureAwait(false);
        var output = context.Response.Body;
        try
        {
            bool any = await first.ConfigureAwait(false);
            while (any)
            {
                var line = e.Current switch
                {
                    CodeOutput { Stderr: false } o => new CodeEventDto { Stdout = o.Text },
                    CodeOutput o => new CodeEventDto { Stderr = o.Text },
                    CodeResult r => new CodeEventDto { Result = ToDto(r) },
                    CodeError x => new CodeEventDto { Error = new CodeErrorDto(x.Name, x.Value, x.Traceback) },
                    CodeExecutionEnd end => new CodeEventDto { End = new CodeEndDto { ExecutionCount = end.ExecutionCount, DurationMs = (long)end.Duration.TotalMilliseconds, TimedOut = end.TimedOut } },
                    _ => null,
                };
                if (line is not null)
                    await WriteLineAsync(output, line, context.RequestAborted).ConfigureAwait(false);
                any = await e.MoveNextAsync().ConfigureAwait(false);
            }
        }
        catch (MoatException ex)
        {
            await WriteLineAsync(output, new CodeEventDto { Error = new CodeErrorDto(ex.Code, ex.Message, "") }, CancellationToken.None).ConfigureAwait(false);
        }
    }

    private static async Task WriteLineAsync(Stream output, CodeEventDto line, CancellationToken cancellationToken)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(line, MoatJson.Default.CodeEventDto);
        await output.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
        await output.WriteAsync("\n"u8.ToArray(), cancellationToken).ConfigureAwait(false);
        await output.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    private static async Task<IResult> CreateContextAsync(HttpContext context, CodeContextManager contexts, string id)
    {
        var caller = context.Writer();
        var body = await Json.ReadAsync(context, MoatJson.Default.CreateCodeContextRequest, new CreateCodeContextRequest()).ConfigureAwait(false);
        var created = await contexts.CreateContextAsync(id, caller.TenantId, body.Language, body.Cwd, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(ToDto(created), MoatJson.Default.CodeContextDto, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> ListContextsAsync(HttpContext context, CodeContextManager contexts, string id)
    {
        var caller = context.Caller();
        var list = await contexts.ListContextsAsync(id, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new CodeContextListResponse(list.Select(ToDto).ToList()), MoatJson.Default.CodeContextListResponse);
    }

    private static async Task<IResult> RestartContextAsync(HttpContext context, CodeContextManager contexts, string id, string contextId)
    {
        var caller = context.Writer();
        await contexts.RestartContextAsync(id, caller.TenantId, contextId, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> RemoveContextAsync(HttpContext context, CodeContextManager contexts, string id, string contextId)
    {
        var caller = context.Writer();
        await contexts.RemoveContextAsync(id, caller.TenantId, contextId, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }
}
