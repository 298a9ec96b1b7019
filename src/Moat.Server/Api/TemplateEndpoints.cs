using System.Text.Json;
using System.Threading.Channels;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Options;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Templates;
using Moat.Node;
using Moat.Server.Auth;
using Moat.Storage.Oci;
using Moat.Storage.Templates;

namespace Moat.Server.Api;

/// <summary>
/// Templates of the caller's tenant (and the public ones): list, inspect, import an archive, pull
/// from a registry, build from a Dockerfile, tag, delete; and the tenant's registry logins.
/// Import, pull and build stream NDJSON events (progress, log lines, then the template or an
/// error) when asked with <c>Accept: application/x-ndjson</c>.
/// </summary>
internal static class TemplateEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        var templates = app.MapGroup("/v1/templates").WithTags("templates");
        templates.MapGet("", ListAsync).WithName("ListTemplates");
        templates.MapPost("/import", ImportAsync).WithName("ImportTemplate");
        templates.MapPost("/pull", PullAsync).WithName("PullTemplate");
        templates.MapPost("/build", BuildAsync).WithName("BuildTemplate");
        templates.MapPost("/tag", TagAsync).WithName("TagTemplate");
        templates.MapGet("/{**name}", GetAsync).WithName("GetTemplate");
        templates.MapDelete("/{**name}", DeleteAsync).WithName("DeleteTemplate");
        var logins = app.MapGroup("/v1/registry-logins").WithTags("templates");
        logins.MapGet("", ListLoginsAsync).WithName("ListRegistryLogins");
        logins.MapPost("", SaveLoginAsync).WithName("SaveRegistryLogin");
        logins.MapDelete("/{registry}", DeleteLoginAsync).WithName("DeleteRegistryLogin");
    }

    private static bool IsOperator(Caller caller) => caller.Role == Roles.Operator;

    private static async Task<IResult> ListAsync(HttpContext context, TemplateStore templates)
    {
        var caller = context.Caller();
        var list = await templates.ListRecordsAsync(caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new TemplateListResponse(list.Select(TemplateApiMapping.ToDto).ToList()), MoatJson.Default.TemplateListResponse);
    }

    private static async Task<IResult> GetAsync(HttpContext context, TemplateCatalog catalog, string name)
    {
        var caller = context.Caller();
        var record = await catalog.GetAsync(name, caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(TemplateApiMapping.ToDto(record), MoatJson.Default.TemplateDto);
    }

    private static async Task<IResult> DeleteAsync(HttpContext context, TemplateCatalog catalog, string name)
    {
        var caller = context.Writer();
        await catalog.DeleteAsync(name, caller.TenantId, IsOperator(caller), context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> TagAsync(HttpContext context, TemplateCatalog catalog)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.TagTemplateRequest, new TagTemplateRequest()).ConfigureAwait(false);
        var record = await catalog.TagAsync(request.Source, request.Name, caller.TenantId, request.Public == true, IsOperator(caller), context.RequestAborted).ConfigureAwait(false);
        return Results.Json(TemplateApiMapping.ToDto(record), MoatJson.Default.TemplateDto, statusCode: StatusCodes.Status201Created);
    }

    private static async Task ImportAsync(HttpContext context, TemplateImporter importer, IOptions<TemplateOptions> options, string? name, bool? @public)
    {
        var caller = context.Writer();
        var owner = TemplateCatalog.Owner(caller.TenantId, @public == true, IsOperator(caller));
        TemplateStore.ValidName(name);
        // An image archive is far larger than a JSON body: lift Kestrel's limit to what the store accepts.
        long limit = options.Value.Layers.MaxBytes * 4;
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } feature)
            feature.MaxRequestBodySize = limit;
        if (context.Request.ContentLength is { } length && length > limit)
            throw new MoatException(ErrorKind.TooLarge, "archive_too_large", $"the archive is {length} bytes; the limit is {limit}");
        await RunAsync(context, (progress, _, ct) => importer.ImportArchiveAsync(context.Request.Body, "upload", name!, owner, null, progress, ct)).ConfigureAwait(false);
    }

    private static async Task PullAsync(HttpContext context, TemplatePuller puller, IOptions<TemplateOptions> options)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.PullTemplateRequest, new PullTemplateRequest()).ConfigureAwait(false);
        var image = ImageReference.Parse(request.Image);
        var name = string.IsNullOrEmpty(request.Name) ? TemplateApiMapping.DefaultName(image) : request.Name;
        TemplateStore.ValidName(name);
        var owner = TemplateCatalog.Owner(caller.TenantId, request.Public == true, IsOperator(caller));
        var pull = options.Value.PullOptions();
        if (!string.IsNullOrEmpty(request.Username))
            pull = pull with { Credential = new RegistryCredential(request.Username, request.Password ?? "") };
        var start = TemplateApiMapping.ToStart(request.Start);
        await RunAsync(context, (progress, _, ct) => puller.PullAsync(request.Image, name, owner, start, pull, progress, ct)).ConfigureAwait(false);
    }

    private static async Task BuildAsync(HttpContext context, TemplateBuilder builder, IOptions<TemplateOptions> options, string? name, string? file, string? isolation, bool? @public, bool? noCache)
    {
        var caller = context.Writer();
        var owner = TemplateCatalog.Owner(caller.TenantId, @public == true, IsOperator(caller));
        TemplateStore.ValidName(name);
        long limit = options.Value.Layers.MaxBytes;
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } feature)
            feature.MaxRequestBodySize = limit;
        var request = new BuildRequest
        {
            Name = name!,
            Owner = owner,
            Tenant = caller.TenantId,
            Dockerfile = string.IsNullOrEmpty(file) ? "Dockerfile" : file,
            Isolation = isolation,
            NoCache = noCache == true,
            Pull = options.Value.PullOptions(),
        };
        await RunAsync(context, (progress, log, ct) => builder.BuildFromArchiveAsync(context.Request.Body, request, progress, log, ct)).ConfigureAwait(false);
    }

    /// <summary>
    /// Runs an import, pull or build: buffered (the template, 201) or, with Accept: application/x-ndjson,
    /// as a stream of events ending in the template or the error.
    /// </summary>
    private static async Task RunAsync(HttpContext context, Func<IProgress<LayerProgress>, Action<string>, CancellationToken, Task<TemplateRecord>> work)
    {
        bool stream = context.Request.Headers.Accept.Any(a => a is not null && a.Contains(ExecEndpoints.NdJson, StringComparison.OrdinalIgnoreCase));
        if (!stream)
        {
            var record = await work(new Progress<LayerProgress>(_ => { }), _ => { }, context.RequestAborted).ConfigureAwait(false);
            await Results.Json(TemplateApiMapping.ToDto(record), MoatJson.Default.TemplateDto, statusCode: StatusCodes.Status201Created).ExecuteAsync(context).ConfigureAwait(false);
            return;
        }
        // Events are queued by the work and written by this request alone; a slow client slows nothing but its queue.
        var events = Channel.CreateBounded<TemplateEventDto>(new BoundedChannelOptions(1024) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true });
        var progress = new SyncProgress(p => events.Writer.TryWrite(new TemplateEventDto { Progress = new LayerProgressDto("sha256:" + p.DiffId, p.Status, p.Bytes, p.Total) }));
        var running = Task.Run(async () =>
        {
            try
            {
                var record = await work(progress, line => events.Writer.TryWrite(new TemplateEventDto { Log = line }), context.RequestAborted).ConfigureAwait(false);
                events.Writer.TryWrite(new TemplateEventDto { Template = TemplateApiMapping.ToDto(record) });
            }
            catch (MoatException ex)
            {
                events.Writer.TryWrite(new TemplateEventDto { Error = new ErrorBody(ex.Code, ex.Message) });
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                events.Writer.TryWrite(new TemplateEventDto { Error = new ErrorBody("internal", ex.Message) });
            }
            finally
            {
                events.Writer.TryComplete();
            }
        });
        context.Response.StatusCode = StatusCodes.Status200OK;
        context.Response.ContentType = ExecEndpoints.NdJson;
        context.Response.Headers.CacheControl = "no-store";
        context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        await foreach (var evt in events.Reader.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            var bytes = JsonSerializer.SerializeToUtf8Bytes(evt, MoatJson.Default.TemplateEventDto);
            await context.Response.Body.WriteAsync(bytes, context.RequestAborted).ConfigureAwait(false);
            await context.Response.Body.WriteAsync("\n"u8.ToArray(), context.RequestAborted).ConfigureAwait(false);
            await context.Response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
        }
        await running.ConfigureAwait(false);
    }

    private static async Task<IResult> ListLoginsAsync(HttpContext context, RegistryCredentialStore logins)
    {
        var caller = context.Caller();
        var list = await logins.ListAsync(caller.TenantId, context.RequestAborted).ConfigureAwait(false);
        return Results.Json(new RegistryLoginListResponse(list.Select(l => new RegistryLoginDto(l.Registry, l.Username, l.CreatedAt)).ToList()), MoatJson.Default.RegistryLoginListResponse);
    }

    private static async Task<IResult> SaveLoginAsync(HttpContext context, RegistryCredentialStore logins)
    {
        var caller = context.Writer();
        var request = await Json.ReadAsync(context, MoatJson.Default.RegistryLoginRequest, new RegistryLoginRequest()).ConfigureAwait(false);
        await logins.SaveAsync(caller.TenantId, request.Registry, request.Username, request.Password, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    private static async Task<IResult> DeleteLoginAsync(HttpContext context, RegistryCredentialStore logins, string registry)
    {
        var caller = context.Writer();
        if (!await logins.DeleteAsync(caller.TenantId, registry, context.RequestAborted).ConfigureAwait(false))
            throw new MoatException(ErrorKind.NotFound, "login_not_found", $"no login for registry '{registry}'");
        return Results.NoContent();
    }

    private sealed class SyncProgress(Action<LayerProgress> report) : IProgress<LayerProgress>
    {
        public void Report(LayerProgress value) => report(value);
    }
}

/// <summary>Between the template store's records and the API's shapes (shared with the embedded CLI).</summary>
public static class TemplateApiMapping
{
    /// <summary>A template for the API.</summary>
    public static TemplateDto ToDto(TemplateRecord t) => new(t.ImageId, t.Name, t.Config.Env, t.Config.WorkingDir, t.Config.User, [.. t.Config.Entrypoint, .. t.Config.Cmd])
    {
        Public = t.IsPublic,
        SizeBytes = t.SizeBytes,
        Layers = t.Layers.Select(l => "sha256:" + l).ToList(),
        Source = t.Source,
        CreatedAt = t.CreatedAt,
        Entrypoint = t.Config.Entrypoint,
        Start = t.Start is { } s ? new TemplateStartDto { Command = s.Command, ReadyCheck = s.ReadyCheck, ReadyTimeoutSeconds = s.ReadyTimeoutSeconds } : null,
    };

    /// <summary>A start command from the API; an empty command means the image's Entrypoint + Cmd.</summary>
    public static TemplateStart? ToStart(TemplateStartDto? dto)
    {
        if (dto is null || (dto.Command is not { Count: > 0 } && dto.ReadyCheck is null))
            return null;
        if (dto.ReadyTimeoutSeconds is < 1 or > 3600)
            throw MoatException.Invalid("invalid_ready_timeout", "readyTimeoutSeconds must be 1-3600");
        if (dto.ReadyCheck is { Length: > 4096 } || dto.Command?.Sum(a => a.Length) > 64 * 1024)
            throw MoatException.Invalid("invalid_start", "the start command or ready check is too long");
        return new TemplateStart { Command = dto.Command ?? [], ReadyCheck = dto.ReadyCheck, ReadyTimeoutSeconds = dto.ReadyTimeoutSeconds ?? 30 };
    }

    /// <summary>The template name a pull gets when none is given: the repository's last part and the tag.</summary>
    public static string DefaultName(ImageReference image) =>
        image.Repository.Split('/')[^1] + (image.Tag is { } tag ? ":" + tag : "");

}
