using Moat.Client.Http;
using Moat.Contracts;

namespace Moat.Client;

/// <summary>
/// A client of a Moat server's native REST API. Thread-safe; make one and share it.
/// <code>
/// using var client = MoatClient.FromEnvironment();              // MOAT_URL, MOAT_API_KEY
/// await using var sandbox = await client.CreateSandboxAsync(new() { Template = "base" });
/// var result = await sandbox.Commands.RunAsync(["python3", "-c", "print(1)"]);
/// </code>
/// Errors the server answers with are thrown as <see cref="MoatApiException"/> subclasses; a
/// server that cannot be reached gives <see cref="HttpRequestException"/>; a control request over
/// <see cref="MoatClientOptions.RequestTimeout"/> gives <see cref="TimeoutException"/>.
/// </summary>
public sealed partial class MoatClient : IDisposable
{
    private readonly MoatTransport _transport;

    /// <summary>A client with its own <see cref="HttpClient"/>, sending through <see cref="MoatClientOptions.HttpMessageHandler"/> when set.</summary>
    /// <param name="options">Server URL, API key, handler, request timeout.</param>
    public MoatClient(MoatClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        // Long commands and file transfers are bounded by their own timeouts, not HttpClient's.
        var http = options.HttpMessageHandler is { } handler
            ? new HttpClient(handler, options.DisposeHandler) { Timeout = Timeout.InfiniteTimeSpan }
            : new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(5) }, disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
        _transport = new MoatTransport(http, ownsHttp: true, options.BaseUrl, options.ApiKey, options.RequestTimeout);
    }

    /// <summary>
    /// A client over an <see cref="HttpClient"/> the application manages (e.g. from IHttpClientFactory);
    /// it is not disposed with the client. Its own <see cref="HttpClient.Timeout"/> still applies to every
    /// request, long commands included: set it to <see cref="Timeout.InfiniteTimeSpan"/> for those.
    /// </summary>
    /// <param name="httpClient">The client to send with.</param>
    /// <param name="options">API key and request timeout. The server is <see cref="MoatClientOptions.BaseUrl"/> when it was set,
    /// else <paramref name="httpClient"/>'s <see cref="HttpClient.BaseAddress"/>, else the default.</param>
    public MoatClient(HttpClient httpClient, MoatClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(httpClient);
        bool urlGiven = options is not null && !ReferenceEquals(options.BaseUrl, MoatClientOptions.DefaultBaseUrl);
        var baseUrl = urlGiven ? options!.BaseUrl : httpClient.BaseAddress ?? MoatClientOptions.DefaultBaseUrl;
        _transport = new MoatTransport(httpClient, ownsHttp: false, baseUrl, options?.ApiKey, options?.RequestTimeout ?? new MoatClientOptions().RequestTimeout);
    }

    /// <summary>A client configured from <c>MOAT_URL</c> (default <c>http://127.0.0.1:8080</c>) and <c>MOAT_API_KEY</c>.</summary>
    /// <returns>The client.</returns>
    /// <exception cref="ArgumentException"><c>MOAT_URL</c> is not an absolute http(s) URL.</exception>
    public static MoatClient FromEnvironment() => new(MoatClientOptions.FromEnvironment());

    /// <summary>The server's base URL.</summary>
    public Uri BaseUrl => _transport.BaseUrl;

    /// <summary>Whether the server answers its unauthenticated health check.</summary>
    /// <param name="cancellationToken">Cancels the check.</param>
    /// <returns>True when <c>GET /healthz</c> succeeds; false when it fails or the server cannot be reached.</returns>
    public async Task<bool> IsHealthyAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            await _transport.SendAsync(HttpMethod.Get, "healthz", null, bounded: true, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is HttpRequestException or MoatApiException or TimeoutException)
        {
            return false;
        }
    }

    /// <summary>Which isolation tiers this server can run (and why not), its limits and defaults.</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The server's capabilities.</returns>
    public Task<CapabilitiesResponse> GetCapabilitiesAsync(CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Get, "v1/capabilities", null, MoatJson.Default.CapabilitiesResponse, bounded: true, cancellationToken);

    /// <summary>Creates a sandbox and returns once it is running.</summary>
    /// <param name="options">Template, tier, resources, lifetime, environment, labels; null for all defaults.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The running sandbox; dispose it to kill it.</returns>
    /// <exception cref="MoatValidationException">An option is invalid or out of the server's limits.</exception>
    /// <exception cref="MoatUnavailableException">The tier cannot run on this host, or the node is full.</exception>
    public async Task<Sandbox> CreateSandboxAsync(SandboxCreateOptions? options = null, CancellationToken cancellationToken = default)
    {
        var request = (options ?? new SandboxCreateOptions()).ToRequest();
        // Creation boots the sandbox (a VM can take a while): bounded by the caller, not RequestTimeout.
        var info = await _transport.SendAsync(HttpMethod.Post, "v1/sandboxes", MoatTransport.Json(request, MoatJson.Default.CreateSandboxRequest), MoatJson.Default.SandboxDto, bounded: false, cancellationToken).ConfigureAwait(false);
        return new Sandbox(this, _transport, info);
    }

    /// <summary>A handle on an existing sandbox (checked to exist). Disposing the handle kills the sandbox unless <see cref="Sandbox.KillOnDispose"/> is cleared.</summary>
    /// <param name="sandboxId">The sandbox's id.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The sandbox.</returns>
    /// <exception cref="MoatNotFoundException">No such sandbox for this API key's tenant.</exception>
    public async Task<Sandbox> ConnectAsync(string sandboxId, CancellationToken cancellationToken = default)
    {
        var info = await GetSandboxAsync(sandboxId, cancellationToken).ConfigureAwait(false);
        return new Sandbox(this, _transport, info);
    }

    /// <summary>One sandbox's state, policy and (while running) resource use.</summary>
    /// <param name="sandboxId">The sandbox's id.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The sandbox.</returns>
    /// <exception cref="MoatNotFoundException">No such sandbox for this API key's tenant.</exception>
    public Task<SandboxDto> GetSandboxAsync(string sandboxId, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Get, $"v1/sandboxes/{QueryString.Segment(sandboxId)}", null, MoatJson.Default.SandboxDto, bounded: true, cancellationToken);

    /// <summary>The tenant's sandboxes, newest first, optionally filtered.</summary>
    /// <param name="state">States to keep, comma-separated (<c>running</c>, <c>stopped</c>, ...); null for all.</param>
    /// <param name="metadata">Labels every returned sandbox must have.</param>
    /// <param name="limit">At most this many (1-10000; the server's default is 1000).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The sandboxes.</returns>
    public async Task<IReadOnlyList<SandboxDto>> ListSandboxesAsync(string? state = null, IReadOnlyDictionary<string, string>? metadata = null, int? limit = null, CancellationToken cancellationToken = default)
    {
        var query = ListQuery(state, metadata, limit);
        var list = await _transport.SendAsync(HttpMethod.Get, query, null, MoatJson.Default.SandboxListResponse, bounded: true, cancellationToken).ConfigureAwait(false);
        return list.Sandboxes;
    }

    internal static string ListQuery(string? state, IReadOnlyDictionary<string, string>? metadata, int? limit)
    {
        var query = new QueryString("v1/sandboxes").Add("state", string.IsNullOrWhiteSpace(state) ? null : state);
        foreach (var (key, value) in metadata ?? new Dictionary<string, string>())
        {
            ArgumentException.ThrowIfNullOrEmpty(key, nameof(metadata));
            query.Add("metadata." + key, value ?? "");
        }
        return query.Add("limit", limit).ToString();
    }

    /// <summary>Ends a sandbox. Killing one that already ended is not an error.</summary>
    /// <param name="sandboxId">The sandbox's id.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once the sandbox is gone.</returns>
    /// <exception cref="MoatNotFoundException">No such sandbox for this API key's tenant.</exception>
    public Task KillSandboxAsync(string sandboxId, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Delete, $"v1/sandboxes/{QueryString.Segment(sandboxId)}", null, bounded: true, cancellationToken);

    /// <summary>Sets a sandbox to end <paramref name="timeout"/> from now.</summary>
    /// <param name="sandboxId">The sandbox's id.</param>
    /// <param name="timeout">The new lifetime from now (rounded up to whole seconds).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The sandbox with its new expiry.</returns>
    /// <exception cref="MoatConflictException">The sandbox is no longer running.</exception>
    public Task<SandboxDto> SetSandboxTimeoutAsync(string sandboxId, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        SetSandboxTimeoutAsync(sandboxId, timeout, onTimeout: null, cancellationToken);

    /// <summary>Sets a sandbox's lifetime and what happens when it ends; on a paused sandbox the lifetime counts from its resume.</summary>
    /// <param name="sandboxId">The sandbox's id.</param>
    /// <param name="timeout">The new lifetime from now (rounded up to whole seconds).</param>
    /// <param name="onTimeout">"kill" or "pause", or null to keep the current choice.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The sandbox with its new expiry.</returns>
    /// <exception cref="MoatConflictException">The sandbox is no longer running or paused.</exception>
    public Task<SandboxDto> SetSandboxTimeoutAsync(string sandboxId, TimeSpan timeout, string? onTimeout, CancellationToken cancellationToken = default)
    {
        if (timeout < TimeSpan.FromSeconds(1))
            throw new ArgumentOutOfRangeException(nameof(timeout), timeout, "the sandbox timeout must be at least one second");
        var body = MoatTransport.Json(new SetTimeoutRequest { TimeoutSeconds = (long)Math.Ceiling(timeout.TotalSeconds), OnTimeout = onTimeout }, MoatJson.Default.SetTimeoutRequest);
        return _transport.SendAsync(HttpMethod.Post, $"v1/sandboxes/{QueryString.Segment(sandboxId)}/timeout", body, MoatJson.Default.SandboxDto, bounded: true, cancellationToken);
    }

    /// <summary>
    /// Runs code or a command in a fresh sandbox that is destroyed afterwards, all in one request:
    /// <c>new RunRequest { Language = "python", Code = "print(1)" }</c>.
    /// </summary>
    /// <param name="request">What to run, with files, stdin and limits.</param>
    /// <param name="cancellationToken">Cancels the run (the sandbox is destroyed).</param>
    /// <returns>Exit code and output (124 when the run's timeout ended it, 137 for the memory limit).</returns>
    public Task<RunResponse> RunAsync(RunRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        return _transport.SendAsync(HttpMethod.Post, "v1/run", MoatTransport.Json(request, MoatJson.Default.RunRequest), MoatJson.Default.RunResponse, bounded: false, cancellationToken);
    }

    /// <summary>The templates sandboxes can be created from.</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The templates.</returns>
    public async Task<IReadOnlyList<TemplateDto>> ListTemplatesAsync(CancellationToken cancellationToken = default)
    {
        var list = await _transport.SendAsync(HttpMethod.Get, "v1/templates", null, MoatJson.Default.TemplateListResponse, bounded: true, cancellationToken).ConfigureAwait(false);
        return list.Templates;
    }

    /// <summary>Creates an API key in the caller's tenant (needs an admin key). The key itself is in <see cref="ApiKeyDto.Key"/>, this once.</summary>
    /// <param name="name">A label.</param>
    /// <param name="role"><c>admin</c>, <c>member</c> (default) or <c>read-only</c>.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The new key, with its only plaintext copy.</returns>
    /// <exception cref="MoatPermissionDeniedException">The caller's key is not an admin key.</exception>
    public Task<ApiKeyDto> CreateKeyAsync(string? name = null, string? role = null, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Post, "v1/keys", MoatTransport.Json(new CreateKeyRequest { Name = name, Role = role }, MoatJson.Default.CreateKeyRequest), MoatJson.Default.ApiKeyDto, bounded: true, cancellationToken);

    /// <summary>The API keys of the caller's tenant (needs an admin key); secrets are never shown.</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The keys, revoked ones included.</returns>
    public async Task<IReadOnlyList<ApiKeyDto>> ListKeysAsync(CancellationToken cancellationToken = default) =>
        await _transport.SendAsync(HttpMethod.Get, "v1/keys", null, MoatJson.Default.ListApiKeyDto, bounded: true, cancellationToken).ConfigureAwait(false);

    /// <summary>Revokes an API key; it stops working at once.</summary>
    /// <param name="keyId">The key's id (<see cref="ApiKeyDto.Id"/>).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once it is revoked.</returns>
    /// <exception cref="MoatNotFoundException">No such key in this tenant.</exception>
    public Task RevokeKeyAsync(string keyId, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Delete, $"v1/keys/{QueryString.Segment(keyId)}", null, bounded: true, cancellationToken);

    /// <summary>Releases the client's own <see cref="HttpClient"/> (not one that was given to it).</summary>
    public void Dispose() => _transport.Dispose();
}
