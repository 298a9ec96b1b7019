using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Moat.Contracts;

namespace Moat.Client.Http;

/// <summary>
/// The one place requests are sent: base URL, API key, time limits and the mapping of error
/// answers to <see cref="MoatApiException"/>s. Everything above it speaks in paths and DTOs.
/// </summary>
internal sealed class MoatTransport : IDisposable
{
    private const int MaxErrorBodyBytes = 64 * 1024;
    private static readonly ProductInfoHeaderValue UserAgent = new("moat-client-dotnet", typeof(MoatTransport).Assembly.GetName().Version?.ToString(3) ?? "0");
    private static readonly MediaTypeHeaderValue JsonMediaType = new("application/json") { CharSet = "utf-8" };

    private readonly HttpClient _http;
    private readonly bool _ownsHttp;
    private readonly AuthenticationHeaderValue? _authorization;
    private readonly TimeSpan _requestTimeout;

    public MoatTransport(HttpClient http, bool ownsHttp, Uri baseUrl, string? apiKey, TimeSpan requestTimeout)
    {
        ArgumentNullException.ThrowIfNull(baseUrl);
        if (!baseUrl.IsAbsoluteUri || (baseUrl.Scheme != Uri.UriSchemeHttp && baseUrl.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"the base URL must be an absolute http:// or https:// URL, got '{baseUrl}'", nameof(baseUrl));
        if (requestTimeout != Timeout.InfiniteTimeSpan && requestTimeout <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(requestTimeout), requestTimeout, "the request timeout must be positive or infinite");
        _http = http;
        _ownsHttp = ownsHttp;
        // A trailing slash makes relative paths append to a prefix such as https://host/moat/.
        BaseUrl = baseUrl.AbsoluteUri.EndsWith('/') ? baseUrl : new Uri(baseUrl.AbsoluteUri + "/");
        _authorization = string.IsNullOrEmpty(apiKey) ? null : new AuthenticationHeaderValue("Bearer", apiKey);
        _requestTimeout = requestTimeout;
    }

    /// <summary>The server's base URL, ending in '/'.</summary>
    public Uri BaseUrl { get; }

    /// <summary>A JSON request body (serialized up front: API bodies are small, and a known length is friendlier to proxies).</summary>
    public static HttpContent Json<T>(T value, JsonTypeInfo<T> type)
    {
        var content = new ByteArrayContent(JsonSerializer.SerializeToUtf8Bytes(value, type));
        content.Headers.ContentType = JsonMediaType;
        return content;
    }

    /// <summary>A request to a path under the base URL, with the client's headers.</summary>
    public HttpRequestMessage Request(HttpMethod method, string path, HttpContent? content = null)
    {
        var request = new HttpRequestMessage(method, new Uri(BaseUrl, path)) { Content = content };
        request.Headers.Authorization = _authorization;
        request.Headers.UserAgent.Add(UserAgent);
        return request;
    }

    /// <summary>Sends a control request under the request timeout and decodes its JSON answer.</summary>
    public async Task<T> SendAsync<T>(HttpMethod method, string path, HttpContent? content, JsonTypeInfo<T> responseType, bool bounded, CancellationToken cancellationToken)
    {
        using var request = Request(method, path, content);
        using var timeout = bounded ? LinkTimeout(cancellationToken) : null;
        var token = timeout?.Token ?? cancellationToken;
        try
        {
            using var response = await SendCheckedAsync(request, HttpCompletionOption.ResponseHeadersRead, token).ConfigureAwait(false);
            return await ReadJsonAsync(response, responseType, token).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (timeout is not null && timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw TimedOut(request, ex);
        }
    }

    /// <summary>Sends a control request under the request timeout; the answer's body is ignored.</summary>
    public async Task SendAsync(HttpMethod method, string path, HttpContent? content, bool bounded, CancellationToken cancellationToken)
    {
        using var request = Request(method, path, content);
        using var timeout = bounded ? LinkTimeout(cancellationToken) : null;
        var token = timeout?.Token ?? cancellationToken;
        try
        {
            using var response = await SendCheckedAsync(request, HttpCompletionOption.ResponseHeadersRead, token).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (timeout is not null && timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw TimedOut(request, ex);
        }
    }

    /// <summary>
    /// Sends a request and returns its response once the headers are in, after turning an error
    /// status into an exception. The caller owns (and disposes) the response.
    /// </summary>
    public async Task<HttpResponseMessage> SendCheckedAsync(HttpRequestMessage request, HttpCompletionOption completion, CancellationToken cancellationToken)
    {
        var response = await _http.SendAsync(request, completion, cancellationToken).ConfigureAwait(false);
        if (response.IsSuccessStatusCode)
            return response;
        using (response)
            throw await ErrorFromAsync(response, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Decodes a JSON answer; an empty or malformed one is the server's fault, reported as such.</summary>
    public static async Task<T> ReadJsonAsync<T>(HttpResponseMessage response, JsonTypeInfo<T> type, CancellationToken cancellationToken)
    {
        try
        {
            await using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            return await JsonSerializer.DeserializeAsync(body, type, cancellationToken).ConfigureAwait(false)
                ?? throw new MoatApiException((int)response.StatusCode, "invalid_response", $"the server answered {response.RequestMessage?.RequestUri?.AbsolutePath} with JSON null");
        }
        catch (JsonException ex)
        {
            throw new MoatApiException((int)response.StatusCode, "invalid_response", $"the server's answer to {response.RequestMessage?.RequestUri?.AbsolutePath} is not the expected JSON: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// The exception for an error answer: Moat's <c>{"error":{"code","message"}}</c> when the body
    /// has it, otherwise the status and the start of whatever the body was (a proxy's HTML page...).
    /// </summary>
    public static async Task<MoatApiException> ErrorFromAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        byte[] body;
        try
        {
            body = await ReadAtMostAsync(response.Content, MaxErrorBodyBytes, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException)
        {
            body = [];
        }
        var retryAfter = RetryAfterOf(response);
        var status = (int)response.StatusCode;
        if (body.Length > 0)
        {
            try
            {
                var error = JsonSerializer.Deserialize(body, MoatJson.Default.ErrorResponse)?.Error;
                if (error is { Code.Length: > 0 })
                    return MoatApiException.Create(status, error.Code, string.IsNullOrEmpty(error.Message) ? error.Code : error.Message, retryAfter);
            }
            catch (JsonException)
            {
                // Not Moat's shape: fall through to a message built from the raw body.
            }
        }
        var text = Printable(body);
        var reason = string.IsNullOrEmpty(response.ReasonPhrase) ? response.StatusCode.ToString() : response.ReasonPhrase;
        var message = $"the server answered HTTP {status} {reason}" + (text.Length > 0 ? $": {text}" : "");
        return MoatApiException.Create(status, $"http_{status}", message, retryAfter);
    }

    private static async Task<byte[]> ReadAtMostAsync(HttpContent content, int limit, CancellationToken cancellationToken)
    {
        await using var stream = await content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        var buffer = new byte[limit];
        int total = 0, n;
        while (total < limit && (n = await stream.ReadAsync(buffer.AsMemory(total), cancellationToken).ConfigureAwait(false)) > 0)
            total += n;
        return buffer[..total];
    }

    private static string Printable(byte[] body)
    {
        var text = Encoding.UTF8.GetString(body);
        var builder = new StringBuilder(Math.Min(text.Length, 200));
        bool space = false;
        foreach (var c in text)
        {
            if (builder.Length >= 200)
            {
                builder.Append('…');
                break;
            }
            if (char.IsWhiteSpace(c) || char.IsControl(c))
            {
                space = builder.Length > 0;
                continue;
            }
            if (space)
                builder.Append(' ');
            space = false;
            builder.Append(c);
        }
        return builder.ToString();
    }

    private static TimeSpan? RetryAfterOf(HttpResponseMessage response)
    {
        var header = response.Headers.RetryAfter;
        if (header?.Delta is { } delta)
            return delta;
        if (header?.Date is { } date)
        {
            var wait = date - DateTimeOffset.UtcNow;
            return wait > TimeSpan.Zero ? wait : TimeSpan.Zero;
        }
        return null;
    }

    private CancellationTokenSource? LinkTimeout(CancellationToken cancellationToken)
    {
        if (_requestTimeout == Timeout.InfiniteTimeSpan)
            return null;
        var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(_requestTimeout);
        return cts;
    }

    private TimeoutException TimedOut(HttpRequestMessage request, Exception inner) =>
        new($"{request.Method} {request.RequestUri?.AbsolutePath} did not complete within {_requestTimeout.TotalSeconds:0.#} s (MoatClientOptions.RequestTimeout)", inner);

    public void Dispose()
    {
        if (_ownsHttp)
            _http.Dispose();
    }
}
