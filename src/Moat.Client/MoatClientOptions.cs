namespace Moat.Client;

/// <summary>How a <see cref="MoatClient"/> reaches its server.</summary>
public sealed class MoatClientOptions
{
    /// <summary>The server a client talks to when none is configured.</summary>
    public static readonly Uri DefaultBaseUrl = new("http://127.0.0.1:8080/");

    /// <summary>The environment variable naming the server's URL.</summary>
    public const string UrlVariable = "MOAT_URL";

    /// <summary>The environment variable holding the API key.</summary>
    public const string ApiKeyVariable = "MOAT_API_KEY";

    /// <summary>The server's base URL, e.g. <c>http://127.0.0.1:8080</c> (a path prefix is kept).</summary>
    public Uri BaseUrl { get; set; } = DefaultBaseUrl;

    /// <summary>The API key, sent as <c>Authorization: Bearer</c>. Only <c>/healthz</c> works without one.</summary>
    public string? ApiKey { get; set; }

    /// <summary>
    /// The handler the client's own <see cref="HttpClient"/> sends through (for proxies, custom TLS or
    /// tests). It is not disposed with the client unless <see cref="DisposeHandler"/> is set. Ignored
    /// when the client is given an <see cref="HttpClient"/>.
    /// </summary>
    public HttpMessageHandler? HttpMessageHandler { get; set; }

    /// <summary>Whether disposing the client also disposes <see cref="HttpMessageHandler"/>.</summary>
    public bool DisposeHandler { get; set; }

    /// <summary>
    /// Time limit of a control request (create, list, get, kill, stat...). Commands, one-shot runs and
    /// file transfers are not bound by it: they last as long as their own timeouts and the caller's
    /// cancellation token allow. <see cref="Timeout.InfiniteTimeSpan"/> disables it.
    /// </summary>
    public TimeSpan RequestTimeout { get; set; } = TimeSpan.FromSeconds(100);

    /// <summary>Options from <c>MOAT_URL</c> (default <c>http://127.0.0.1:8080</c>) and <c>MOAT_API_KEY</c>.</summary>
    /// <exception cref="ArgumentException"><c>MOAT_URL</c> is not an absolute http(s) URL.</exception>
    public static MoatClientOptions FromEnvironment()
    {
        var options = new MoatClientOptions();
        var url = Environment.GetEnvironmentVariable(UrlVariable);
        if (!string.IsNullOrWhiteSpace(url))
            options.BaseUrl = ParseUrl(url, UrlVariable);
        var key = Environment.GetEnvironmentVariable(ApiKeyVariable);
        if (!string.IsNullOrWhiteSpace(key))
            options.ApiKey = key.Trim();
        return options;
    }

    /// <summary>Parses a server URL, accepting only absolute http and https URLs.</summary>
    /// <param name="url">The URL text.</param>
    /// <param name="source">Where it came from, for the error message.</param>
    /// <exception cref="ArgumentException">The URL is not an absolute http(s) URL.</exception>
    public static Uri ParseUrl(string url, string source = "url")
    {
        ArgumentNullException.ThrowIfNull(url);
        if (!Uri.TryCreate(url.Trim(), UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"{source} must be an absolute http:// or https:// URL, got '{url}'", nameof(url));
        return uri;
    }
}
