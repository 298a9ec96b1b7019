using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Moat.Tests;

/// <summary>
/// A front for a <see cref="LoopbackRegistry"/> that behaves like Docker Hub: every /v2/ request
/// needs a Bearer token from its realm (<c>/token</c>), optionally only with a login. It also lets
/// tests break things on purpose — cut a blob download short, corrupt a blob — and counts what
/// it saw (ranges asked for, blob downloads in flight at once).
/// </summary>
public sealed class RegistryProxy : IAsyncDisposable
{
    private const string Token = "moat-test-token";
    private readonly WebApplication _app;
    private readonly HttpClient _upstream = new(new SocketsHttpHandler { AllowAutoRedirect = false });
    private int _inFlight;

    private RegistryProxy(WebApplication app, int port)
    {
        _app = app;
        Port = port;
    }

    public int Port { get; }

    public string Host => $"127.0.0.1:{Port}";

    /// <summary>When set, the token endpoint wants this login.</summary>
    public (string User, string Password)? RequireLogin { get; set; }

    /// <summary>Cut the next blob download after this many bytes (once).</summary>
    public long? CutNextBlobAfter { get; set; }

    /// <summary>Flip a byte in every blob larger than 1 KiB.</summary>
    public bool CorruptBlobs { get; set; }

    /// <summary>Range headers seen on blob requests.</summary>
    public List<string> RangesSeen { get; } = [];

    /// <summary>Most blob downloads in flight at once.</summary>
    public int MaxConcurrentBlobs { get; private set; }

    /// <summary>Token requests answered.</summary>
    public int TokensIssued { get; private set; }

    public static async Task<RegistryProxy> StartAsync(LoopbackRegistry upstream)
    {
        int port;
        using (var listener = new TcpListener(IPAddress.Loopback, 0))
        {
            listener.Start();
            port = ((IPEndPoint)listener.LocalEndpoint).Port;
        }
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        var app = builder.Build();
        var proxy = new RegistryProxy(app, port);
        app.MapGet("/token", (HttpContext context) => proxy.IssueToken(context));
        app.Map("/v2/{**path}", (HttpContext context, string? path) => proxy.ForwardAsync(context, upstream, path ?? ""));
        await app.StartAsync();
        return proxy;
    }

    private IResult IssueToken(HttpContext context)
    {
        if (RequireLogin is { } login)
        {
            var expected = "Basic " + Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes($"{login.User}:{login.Password}"));
            if (context.Request.Headers.Authorization.ToString() != expected)
                return Results.Unauthorized();
        }
        TokensIssued++;
        return Results.Json(new Dictionary<string, object> { ["token"] = Token, ["expires_in"] = 300 });
    }

    private async Task ForwardAsync(HttpContext context, LoopbackRegistry upstream, string path)
    {
        if (context.Request.Headers.Authorization.ToString() != "Bearer " + Token)
        {
            context.Response.StatusCode = 401;
            context.Response.Headers.WWWAuthenticate = $"Bearer realm=\"http://{Host}/token\",service=\"moat-test\",scope=\"repository:{string.Join('/', path.Split('/').TakeWhile(p => p is not ("manifests" or "blobs")))}:pull\"";
            return;
        }
        using var request = new HttpRequestMessage(new HttpMethod(context.Request.Method), $"http://{upstream.Host}/v2/{path}");
        foreach (var accept in context.Request.Headers.Accept)
            request.Headers.TryAddWithoutValidation("Accept", accept);
        bool blob = path.Contains("/blobs/", StringComparison.Ordinal);
        if (blob && context.Request.Headers.Range.Count > 0)
        {
            lock (RangesSeen)
                RangesSeen.Add(context.Request.Headers.Range.ToString());
            request.Headers.TryAddWithoutValidation("Range", context.Request.Headers.Range.ToString());
        }
        if (upstream.User is not null)
            request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Basic", Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes($"{upstream.User}:{upstream.Password}")));
        int now = Interlocked.Increment(ref _inFlight);
        if (blob)
            MaxConcurrentBlobs = Math.Max(MaxConcurrentBlobs, now);
        try
        {
            using var response = await _upstream.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, context.RequestAborted);
            context.Response.StatusCode = (int)response.StatusCode;
            foreach (var header in response.Headers.Concat(response.Content.Headers))
            {
                if (header.Key is "Transfer-Encoding" or "Connection")
                    continue;
                context.Response.Headers[header.Key] = header.Value.ToArray();
            }
            await using var body = await response.Content.ReadAsStreamAsync(context.RequestAborted);
            var cut = blob && response.Content.Headers.ContentLength > CutNextBlobAfter ? CutNextBlobAfter : null;
            if (cut is not null)
                CutNextBlobAfter = null;
            var buffer = new byte[65536];
            long sent = 0;
            int n;
            while ((n = await body.ReadAsync(buffer, context.RequestAborted)) > 0)
            {
                if (blob && CorruptBlobs && response.Content.Headers.ContentLength > 1024 && sent == 0)
                    buffer[n / 2] ^= 0xFF;
                if (cut is { } limit && sent + n > limit)
                {
                    await context.Response.Body.WriteAsync(buffer.AsMemory(0, (int)(limit - sent)), context.RequestAborted);
                    await context.Response.Body.FlushAsync(context.RequestAborted);
                    context.Abort();
                    return;
                }
                await context.Response.Body.WriteAsync(buffer.AsMemory(0, n), context.RequestAborted);
                sent += n;
                if (blob)
                    await Task.Delay(1); // keep downloads overlapping long enough to be seen
            }
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        _upstream.Dispose();
    }
}
