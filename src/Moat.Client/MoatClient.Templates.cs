using System.Net.Http.Headers;
using System.Text.Json;
using Moat.Client.Http;
using Moat.Contracts;

namespace Moat.Client;

public sealed partial class MoatClient
{
    private const string NdJsonType = "application/x-ndjson";

    /// <summary>One template this tenant can use (its own, else a public one).</summary>
    /// <param name="name">Template name.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The template, with its layers, size and source.</returns>
    /// <exception cref="MoatNotFoundException">No such template for this tenant.</exception>
    public Task<TemplateDto> GetTemplateAsync(string name, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Get, "v1/templates/" + NamePath(name), null, MoatJson.Default.TemplateDto, bounded: true, cancellationToken);

    /// <summary>Deletes one of the tenant's templates (an operator key may delete a public one).</summary>
    /// <param name="name">Template name.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once it is deleted.</returns>
    /// <exception cref="MoatConflictException">A live sandbox uses it (<c>template_in_use</c>).</exception>
    public Task DeleteTemplateAsync(string name, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Delete, "v1/templates/" + NamePath(name), null, bounded: true, cancellationToken);

    /// <summary>Gives a template's image another name.</summary>
    /// <param name="source">The existing template.</param>
    /// <param name="name">The new name.</param>
    /// <param name="makePublic">Share it with every tenant (operator keys only).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The new template.</returns>
    public Task<TemplateDto> TagTemplateAsync(string source, string name, bool makePublic = false, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Post, "v1/templates/tag", MoatTransport.Json(new TagTemplateRequest { Source = source, Name = name, Public = makePublic ? true : null }, MoatJson.Default.TagTemplateRequest), MoatJson.Default.TemplateDto, bounded: true, cancellationToken);

    /// <summary>
    /// Imports an image archive — a <c>docker save</c> tar or the tar of an OCI layout (gzip allowed) —
    /// as a template. <paramref name="onEvent"/> sees layer progress as the server unpacks.
    /// </summary>
    /// <param name="archive">The archive; read to its end, not disposed.</param>
    /// <param name="name">Template name.</param>
    /// <param name="makePublic">Share it with every tenant (operator keys only).</param>
    /// <param name="onEvent">Progress events, or null.</param>
    /// <param name="cancellationToken">Cancels the import.</param>
    /// <returns>The template.</returns>
    public Task<TemplateDto> ImportTemplateAsync(Stream archive, string name, bool makePublic = false, Action<TemplateEventDto>? onEvent = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(archive);
        var path = new QueryString("v1/templates/import").Add("name", name).Add("public", makePublic ? "true" : null).ToString();
        var content = new StreamContent(archive, 1 << 20);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-tar");
        return StreamTemplateAsync(path, content, onEvent, cancellationToken, upload: true);
    }

    /// <summary>Pulls an image from a registry as a template, with layer progress in <paramref name="onEvent"/>.</summary>
    /// <param name="request">Image reference, name, credentials, start command.</param>
    /// <param name="onEvent">Progress events, or null.</param>
    /// <param name="cancellationToken">Cancels the pull (what was downloaded is kept for the next one).</param>
    /// <returns>The template.</returns>
    public Task<TemplateDto> PullTemplateAsync(PullTemplateRequest request, Action<TemplateEventDto>? onEvent = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        return StreamTemplateAsync("v1/templates/pull", MoatTransport.Json(request, MoatJson.Default.PullTemplateRequest), onEvent, cancellationToken);
    }

    /// <summary>
    /// Builds a template from a Dockerfile in a build context sent as a tar stream; the build's
    /// log lines and layer progress arrive in <paramref name="onEvent"/> as they happen.
    /// </summary>
    /// <param name="context">The context as a tar (the Dockerfile inside it); read to its end, not disposed.</param>
    /// <param name="name">Template name.</param>
    /// <param name="dockerfile">The Dockerfile's path in the context.</param>
    /// <param name="isolation">Tier RUN steps execute in (gvisor or container).</param>
    /// <param name="noCache">Ignore cached steps.</param>
    /// <param name="makePublic">Share it with every tenant (operator keys only).</param>
    /// <param name="onEvent">Log and progress events, or null.</param>
    /// <param name="cancellationToken">Cancels the build.</param>
    /// <returns>The template.</returns>
    public Task<TemplateDto> BuildTemplateAsync(Stream context, string name, string dockerfile = "Dockerfile", string? isolation = null, bool noCache = false, bool makePublic = false, Action<TemplateEventDto>? onEvent = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        var path = new QueryString("v1/templates/build").Add("name", name).Add("file", dockerfile).Add("isolation", isolation)
            .Add("noCache", noCache ? "true" : null).Add("public", makePublic ? "true" : null).ToString();
        var content = new StreamContent(context, 1 << 20);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-tar");
        return StreamTemplateAsync(path, content, onEvent, cancellationToken, upload: true);
    }

    /// <summary>Stores a registry login for the tenant's pulls (the secret is sealed and never shown again).</summary>
    /// <param name="registry">Registry host, e.g. <c>ghcr.io</c> or <c>docker.io</c>.</param>
    /// <param name="username">User name.</param>
    /// <param name="password">Password or access token.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once it is stored.</returns>
    public Task SaveRegistryLoginAsync(string registry, string username, string password, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Post, "v1/registry-logins", MoatTransport.Json(new RegistryLoginRequest { Registry = registry, Username = username, Password = password }, MoatJson.Default.RegistryLoginRequest), bounded: true, cancellationToken);

    /// <summary>The tenant's registry logins (without secrets).</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The logins.</returns>
    public async Task<IReadOnlyList<RegistryLoginDto>> ListRegistryLoginsAsync(CancellationToken cancellationToken = default) =>
        (await _transport.SendAsync(HttpMethod.Get, "v1/registry-logins", null, MoatJson.Default.RegistryLoginListResponse, bounded: true, cancellationToken).ConfigureAwait(false)).Logins;

    /// <summary>Forgets the tenant's login for a registry.</summary>
    /// <param name="registry">Registry host.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once it is gone.</returns>
    public Task DeleteRegistryLoginAsync(string registry, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Delete, "v1/registry-logins/" + QueryString.Segment(registry), null, bounded: true, cancellationToken);

    /// <summary>A template name as a path: each '/'-separated part escaped on its own (the route takes the rest of the path).</summary>
    private static string NamePath(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        return string.Join('/', name.Split('/').Select(Uri.EscapeDataString));
    }

    private async Task<TemplateDto> StreamTemplateAsync(string path, HttpContent content, Action<TemplateEventDto>? onEvent, CancellationToken cancellationToken, bool upload = false)
    {
        using var message = _transport.Request(HttpMethod.Post, path, content);
        message.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue(NdJsonType));
        // A refusal (no permission, a bad name) then arrives before the archive is sent, not after a broken upload.
        if (upload)
            message.Headers.ExpectContinue = true;
        using var response = await _transport.SendCheckedAsync(message, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        await using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        var lines = new NdjsonLineReader(body);
        while (await lines.ReadLineAsync(cancellationToken).ConfigureAwait(false) is { } line)
        {
            TemplateEventDto? evt;
            try
            {
                evt = JsonSerializer.Deserialize(line.Span, MoatJson.Default.TemplateEventDto);
            }
            catch (JsonException ex)
            {
                throw new MoatStreamException("invalid_response", $"the server sent a malformed event: {ex.Message}");
            }
            if (evt is null)
                continue;
            onEvent?.Invoke(evt);
            if (evt.Error is { } error)
                throw MoatApiException.Create(StatusOf(error.Code), error.Code, error.Message);
            if (evt.Template is { } template)
                return template;
        }
        throw new MoatStreamException("stream_incomplete", $"the server's answer to {path.Split('?')[0]} ended before the template was ready");
    }

    /// <summary>The HTTP status an error reported inside a stream would have had.</summary>
    private static int StatusOf(string code) => code switch
    {
        _ when code.EndsWith("_not_found", StringComparison.Ordinal) => 404,
        _ when code.EndsWith("_unauthorized", StringComparison.Ordinal) || code is "operator_required" => 403,
        "template_in_use" => 409,
        _ when code.EndsWith("_too_large", StringComparison.Ordinal) || code.Contains("too_many", StringComparison.Ordinal) || code is "layer_too_deep" => 413,
        "registry_unreachable" or "registry_error" or "disk_full" => 503,
        "registry_rate_limited" => 429,
        "internal" => 500,
        _ => 400,
    };
}
