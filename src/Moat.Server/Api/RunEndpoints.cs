using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Moat.Contracts;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.Auth;

namespace Moat.Server.Api;

/// <summary>POST /v1/run: a sandbox for one command, created and destroyed within the request.</summary>
internal static class RunEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/run", RunAsync).WithName("Run").WithTags("run");
    }

    private static async Task<IResult> RunAsync(HttpContext context, SandboxManager manager)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.RunRequest, new RunRequest()).ConfigureAwait(false);
        var spec = await ToOneShotAsync(request, manager, context.RequestAborted).ConfigureAwait(false);
        int cap = manager.Options.MaxBufferedOutputBytes;
        var stdout = new MemoryStream();
        var stderr = new MemoryStream();
        bool outCut = false, errCut = false;
        var result = await manager.RunOnceAsync(spec, caller.TenantId, (chunk, _) =>
        {
            var sink = chunk.Stream == OutputStream.Stdout ? stdout : stderr;
            int room = (int)Math.Max(0, cap - sink.Length);
            if (chunk.Data.Length > room)
            {
                if (chunk.Stream == OutputStream.Stdout)
                    outCut = true;
                else
                    errCut = true;
            }
            sink.Write(chunk.Data.Span[..Math.Min(room, chunk.Data.Length)]);
            return ValueTask.CompletedTask;
        }, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new RunResponse
        {
            SandboxId = result.SandboxId,
            ExitCode = result.ExitCode,
            Stdout = Encoding.UTF8.GetString(stdout.GetBuffer(), 0, (int)stdout.Length),
            Stderr = Encoding.UTF8.GetString(stderr.GetBuffer(), 0, (int)stderr.Length) + (result.Reason is { } r ? (stderr.Length > 0 ? "\n" : "") + $"moat: {r}\n" : ""),
            StdoutTruncated = outCut,
            StderrTruncated = errCut,
            TimedOut = result.TimedOut,
            OomKilled = result.OomKilled,
            Signal = result.Exit is { Signal: > 0 } e ? e.Signal : null,
            DurationMs = (long)(result.Exit?.Duration.TotalMilliseconds ?? 0),
            TotalMs = (long)result.Total.TotalMilliseconds,
        }, MoatJson.Default.RunResponse);
    }

    internal static async Task<OneShotSpec> ToOneShotAsync(RunRequest request, SandboxManager manager, CancellationToken cancellationToken)
    {
        var sandbox = await ApiMapping.ToSpecAsync(new CreateSandboxRequest
        {
            Template = request.Template,
            Isolation = request.Isolation,
            Resources = request.Limits,
            TimeoutSeconds = request.TimeoutSeconds ?? 60,
            Network = request.Network,
            Env = request.Env,
        }, manager, cancellationToken).ConfigureAwait(false);
        var files = new List<(string, byte[])>();
        foreach (var file in request.Files ?? [])
        {
            if (file.Content is not null && file.ContentBase64 is not null)
                throw MoatException.Invalid("invalid_file", $"file {file.Path}: give content or contentBase64, not both");
            files.Add((file.Path, ApiMapping.StdinOf(file.Content ?? (file.ContentBase64 is null ? "" : null), file.ContentBase64)));
        }
        if (files.Count > 1000)
            throw MoatException.Invalid("too_many_files", "at most 1000 files per run");
        IReadOnlyList<string>? argv = request.Cmd;
        if (request.Language is { } language)
        {
            if (request.Cmd is not null || request.Shell is not null)
                throw MoatException.Invalid("invalid_command", "give language + code, or cmd/shell, not both");
            var (file, command) = RunRecipes.For(language);
            files.Add((file, Encoding.UTF8.GetBytes(request.Code ?? throw MoatException.Invalid("invalid_command", "language needs code"))));
            argv = command;
        }
        else if (request.Code is not null)
            throw MoatException.Invalid("invalid_command", "code needs a language");
        return new OneShotSpec
        {
            Sandbox = sandbox,
            Command = new CommandSpec { Argv = argv, Shell = request.Shell, User = string.IsNullOrEmpty(request.User) ? null : request.User },
            Files = files,
            Stdin = ApiMapping.StdinOf(request.Stdin, null),
        };
    }
}
