using System.Collections.Concurrent;
using System.Net;
using System.Text;
using Moat.Client;

namespace Moat.Client.Tests.Infrastructure;

/// <summary>A request the stub saw, with its body read at send time.</summary>
public sealed record SeenRequest(HttpMethod Method, Uri Uri, string? Authorization, string? Accept, string? ContentType, long? ContentLength, byte[] Body, HttpContent? Content)
{
    public string BodyText => Encoding.UTF8.GetString(Body);
    public string PathAndQuery => Uri.PathAndQuery;
}

/// <summary>An HttpMessageHandler that answers from a script and records what it was sent.</summary>
public sealed class StubHandler(Func<HttpRequestMessage, CancellationToken, Task<HttpResponseMessage>> respond) : HttpMessageHandler
{
    public ConcurrentQueue<SeenRequest> Requests { get; } = new();

    public StubHandler(Func<HttpRequestMessage, HttpResponseMessage> respond)
        : this((request, _) => Task.FromResult(respond(request)))
    {
    }

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        byte[] body = request.Content is null ? [] : await request.Content.ReadAsByteArrayAsync(cancellationToken);
        Requests.Enqueue(new SeenRequest(
            request.Method,
            request.RequestUri!,
            request.Headers.Authorization?.ToString(),
            request.Headers.Accept.ToString(),
            request.Content?.Headers.ContentType?.ToString(),
            request.Content?.Headers.ContentLength,
            body,
            request.Content));
        var response = await respond(request, cancellationToken);
        response.RequestMessage ??= request;
        return response;
    }

    public SeenRequest Single() => Assert.Single(Calls);

    /// <summary>Requests other than the GET of the sandbox that WithSandbox answers.</summary>
    public IReadOnlyList<SeenRequest> Calls => Requests.Where(r => !IsConnect(r.Method, r.Uri)).ToList();

    private static bool IsConnect(HttpMethod method, Uri uri) => method == HttpMethod.Get && uri.AbsolutePath == $"/v1/sandboxes/{SandboxId}";

    /// <summary>A stub that answers GET /v1/sandboxes/{SandboxId} (so ConnectAsync works) and scripts the rest.</summary>
    public static StubHandler WithSandbox(Func<HttpRequestMessage, CancellationToken, Task<HttpResponseMessage>> rest) =>
        new((request, ct) => IsConnect(request.Method, request.RequestUri!) ? Task.FromResult(Json(HttpStatusCode.OK, SandboxJson)) : rest(request, ct));

    /// <summary>A stub that answers GET /v1/sandboxes/{SandboxId} and scripts the rest.</summary>
    public static StubHandler WithSandbox(Func<HttpRequestMessage, HttpResponseMessage> rest) =>
        WithSandbox((request, _) => Task.FromResult(rest(request)));

    public static HttpResponseMessage Json(HttpStatusCode status, string json, params (string Name, string Value)[] headers)
    {
        var response = new HttpResponseMessage(status) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        foreach (var (name, value) in headers)
            response.Headers.TryAddWithoutValidation(name, value);
        return response;
    }

    public static HttpResponseMessage Error(HttpStatusCode status, string code, string message) =>
        Json(status, $"{{\"error\":{{\"code\":\"{code}\",\"message\":\"{message}\"}}}}");

    public static HttpResponseMessage Stream(Stream body, string contentType = "application/x-ndjson")
    {
        var content = new StreamContent(body);
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue(contentType);
        return new HttpResponseMessage(HttpStatusCode.OK) { Content = content };
    }

    public const string SandboxJson = """
        {"id":"sb0123456789abcdefgh","state":"running","template":"base","isolation":"container",
         "resources":{"cpus":1,"memoryMiB":512,"diskMiB":1024},"network":{"mode":"none"},"timeoutSeconds":300,
         "createdAt":"2025-01-01T00:00:00Z","expiresAt":"2025-01-01T00:05:00Z"}
        """;

    public const string SandboxId = "sb0123456789abcdefgh";

    /// <summary>A client sending through <paramref name="handler"/>.</summary>
    public static MoatClient Client(StubHandler handler, string baseUrl = "http://moat.test:8080", TimeSpan? requestTimeout = null) => new(new MoatClientOptions
    {
        BaseUrl = new Uri(baseUrl),
        ApiKey = "moat_test",
        HttpMessageHandler = handler,
        RequestTimeout = requestTimeout ?? TimeSpan.FromSeconds(100),
    });
}

/// <summary>
/// A response body the test feeds chunk by chunk, so a test can observe what the client does
/// before the rest of the stream exists. Reading returns one chunk per call, as a socket would.
/// </summary>
public sealed class ScriptedStream : Stream
{
    private readonly System.Threading.Channels.Channel<byte[]> _chunks = System.Threading.Channels.Channel.CreateUnbounded<byte[]>();
    private byte[] _current = [];
    private int _offset;

    public TaskCompletionSource Disposed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Feed(byte[] chunk) => _chunks.Writer.TryWrite(chunk);
    public void Feed(string text) => Feed(Encoding.UTF8.GetBytes(text));
    public void End() => _chunks.Writer.TryComplete();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (_offset == _current.Length)
        {
            if (!await _chunks.Reader.WaitToReadAsync(cancellationToken))
                return 0;
            if (_chunks.Reader.TryRead(out var next))
            {
                _current = next;
                _offset = 0;
            }
        }
        int n = Math.Min(buffer.Length, _current.Length - _offset);
        _current.AsSpan(_offset, n).CopyTo(buffer.Span);
        _offset += n;
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer, offset, count, CancellationToken.None).GetAwaiter().GetResult();
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        _chunks.Writer.TryComplete();
        Disposed.TrySetResult();
        base.Dispose(disposing);
    }
}
