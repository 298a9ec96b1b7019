using System.Net;
using System.Net.Http.Headers;
using System.Net.WebSockets;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// Tenant B's admin key against every <c>/v1</c> route of the running server — the list is read
/// from the app's route table, not written here, so a new endpoint is covered (or fails this test
/// until it is classified) the moment it is mapped. Every route naming one of tenant A's
/// sandboxes, keys or templates must answer 404, over plain HTTP, NDJSON streaming and WebSocket
/// upgrade alike; collection routes must not show A's ids; and A's things must be intact after.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class TenancyCrossTenantTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private readonly ITestOutputHelper _output = output;

    /// <summary>POSTs that only make something new in the caller's own tenant and name nothing of another's.</summary>
    private static readonly HashSet<string> CreatesInOwnTenant =
    [
        "POST /v1/keys", "POST /v1/templates/import", "POST /v1/templates/pull", "POST /v1/templates/build", "POST /v1/registry-logins",
    ];

    /// <summary>Routes without an id in the path that name tenant A's template in their body (create from it, run on it, tag it).</summary>
    private static readonly HashSet<string> NamesTemplateInBody = ["POST /v1/sandboxes", "POST /v1/run", "POST /v1/templates/tag"];

    /// <summary>Operator-only routes: any tenant's key gets 403 whatever the id.</summary>
    private static bool OperatorOnly(string pattern) => pattern.StartsWith("/v1/tenants", StringComparison.Ordinal) || pattern == "/v1/audit/verify";

    /// <summary>Plain-HTTP answers allowed instead of 404 because they come before any lookup (checked to be the same for an id that never existed).</summary>
    private static readonly HashSet<string> AnswerBeforeLookup = ["GET /v1/sandboxes/{id}/terminal 400 websocket_required"];

    [SkippableFact]
    public async Task Every_v1_route_answers_404_for_another_tenants_sandbox_key_and_template()
    {
        var (a, aKey) = await TenancyKit.NewTenantAsync(Server, "xa", cancellationToken: Timeout);
        var (b, bKey) = await TenancyKit.NewTenantAsync(Server, "xb", cancellationToken: Timeout);
        using var aClient = Server.Client(aKey);
        await using var aSandbox = await TenancyKit.SandboxAsync(aClient, Timeout);
        await aSandbox.Files.WriteAsync("/home/user/secret.txt", "tenant A's secret", Timeout);
        var aOtherKey = await aClient.CreateKeyAsync("a-worker", "member", Timeout);
        var aTemplate = "a-private-" + a.Id;
        using (var http = TenancyKit.Http(Server, aKey))
        {
            var tag = await http.PostAsync("v1/templates/tag", Json($$"""{"source":"base","name":"{{aTemplate}}"}"""), Timeout);
            Assert.True(tag.IsSuccessStatusCode, $"tagging A's template: {(int)tag.StatusCode} {await tag.Content.ReadAsStringAsync(Timeout)}");
            var login = await http.PostAsync("v1/registry-logins", Json("""{"registry":"registry.a.example","username":"a","password":"a-secret"}"""), Timeout);
            Assert.True(login.IsSuccessStatusCode, $"saving A's registry login: {(int)login.StatusCode}");
        }
        var aSnapshot = "a-snap-" + a.Id;
        await aClient.SnapshotSandboxAsync(aSandbox.Id, aSnapshot, Timeout);
        const string neverSandbox = "sb000000000000000000";

        var routes = Server.Services.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>()
            .Where(e => e.RoutePattern.RawText is { } raw && raw.StartsWith("/v1/", StringComparison.Ordinal))
            .SelectMany(e => (e.Metadata.GetMetadata<IHttpMethodMetadata>()?.HttpMethods ?? ["GET"]).Select(m => (Method: m, Pattern: e.RoutePattern.RawText!.TrimEnd('/'))))
            .Distinct().OrderBy(r => r.Pattern, StringComparer.Ordinal).ThenBy(r => r.Method, StringComparer.Ordinal).ToList();
        Assert.True(routes.Count >= 30, $"the route table has only {routes.Count} /v1 routes; is the server's data source the right one?");

        using var bHttp = TenancyKit.Http(Server, bKey);
        var failures = new List<string>();
        int checkedRoutes = 0, webSockets = 0;
        foreach (var (method, pattern) in routes)
        {
            var route = $"{method} {pattern}";
            if (CreatesInOwnTenant.Contains(route))
            {
                _output.WriteLine($"{route}: creates in the caller's own tenant (not called)");
                continue;
            }
            string? path;
            string? neverPath;
            try
            {
                path = Fill(pattern, aSandbox.Id, aOtherKey.Id, aTemplate, aSnapshot, "registry.a.example", a.Id);
                neverPath = Fill(pattern, neverSandbox, "000000000000", "never-" + aTemplate, "never-" + aSnapshot, "registry.never.example", "never-" + a.Id);
            }
            catch (InvalidOperationException ex)
            {
                failures.Add($"{route}: {ex.Message}");
                continue;
            }
            bool names = path != pattern || NamesTemplateInBody.Contains(route);
            // File routes take their path in the query; collections get none, so that they answer 200 and can be checked for leaks.
            var query = !names ? "" : "?path=/home/user/secret.txt&from=/home/user/secret.txt&to=/home/user/moved.txt";
            var (status, code, body) = await SendAsync(bHttp, method, path + query, aTemplate, aSandbox.Id);
            checkedRoutes++;
            if (OperatorOnly(pattern))
            {
                if (status != 403)
                    failures.Add($"{route}: operator-only route answered {status} {code} to a tenant admin key");
                continue;
            }
            if (!names)
            {
                // A collection: it may answer, but never with A's things in it.
                foreach (var leak in new[] { aSandbox.Id, aOtherKey.Id, aTemplate, aSnapshot, a.Id, "tenant A's secret" })
                {
                    if (body.Contains(leak, StringComparison.Ordinal))
                        failures.Add($"{route}: answer {status} shows tenant A's '{leak}'");
                }
                if (method == "GET" && status != 200)
                    failures.Add($"{route}: collection answered {status} {code}; expected 200 (so its contents can be checked)");
                _output.WriteLine($"{route}: collection, answered {status} without A's ids");
                continue;
            }
            if (status != 404)
            {
                var (neverStatus, neverCode, _) = await SendAsync(bHttp, method, neverPath + query, "never-" + aTemplate, neverSandbox);
                bool sameAsNever = neverStatus == status && neverCode == code;
                if (!(sameAsNever && AnswerBeforeLookup.Contains($"{route} {status} {code}")))
                    failures.Add($"{route}: answered {status} {code} (an id that never existed: {neverStatus} {neverCode}); expected 404");
            }
            // The streaming form of the same request.
            if (method is "GET" or "POST")
            {
                var (streamStatus, streamCode, _) = await SendAsync(bHttp, method, path + query, aTemplate, aSandbox.Id, ndjson: true);
                if (streamStatus != 404 && !AnswerBeforeLookup.Contains($"{route} {streamStatus} {streamCode}"))
                    failures.Add($"{route} (Accept: application/x-ndjson): answered {streamStatus} {streamCode}; expected 404");
            }
            // And as a WebSocket upgrade, for every GET (terminals, attach, anything added later).
            if (method == "GET")
            {
                webSockets++;
                var wsStatus = await WebSocketStatusAsync(path + query, bKey);
                if (wsStatus != 404)
                    failures.Add($"{route} (WebSocket): handshake answered {wsStatus}; expected 404");
            }
            _output.WriteLine($"{route}: {status} {code}");
        }

        // The inbound proxy's host form is a channel outside the route table: {port}-{id}.{domain}.
        var host = $"8000-{aSandbox.Id}.{ServerFixture.InboundDomain}";
        using (var request = new HttpRequestMessage(HttpMethod.Get, "/anything"))
        {
            request.Headers.Host = host;
            using var response = await bHttp.SendAsync(request, Timeout);
            if ((int)response.StatusCode != 404)
                failures.Add($"host {host}: answered {(int)response.StatusCode} to tenant B's key; expected 404");
        }
        var hostWs = await WebSocketStatusAsync("/ws", bKey, host);
        if (hostWs != 404)
            failures.Add($"host {host} (WebSocket): handshake answered {hostWs}; expected 404");

        // A's things are all still there and unchanged.
        var info = await aSandbox.GetInfoAsync(Timeout);
        Assert.Equal("running", info.State);
        Assert.Equal("tenant A's secret", await aSandbox.Files.ReadTextAsync("/home/user/secret.txt", Timeout));
        using (var aWorker = Server.Client(aOtherKey.Key))
            await aWorker.ListSandboxesAsync(cancellationToken: Timeout);
        Assert.Contains(await aClient.ListTemplatesAsync(Timeout), t => t.Name == aTemplate);
        Assert.Contains(await aClient.ListSnapshotsAsync(Timeout), s => s.Name == aSnapshot);
        using (var http = TenancyKit.Http(Server, aKey))
            Assert.Contains("registry.a.example", await http.GetStringAsync("v1/registry-logins", Timeout));
        _output.WriteLine($"{checkedRoutes} routes called with tenant {b.Id}'s key, {webSockets} WebSocket handshakes");
        Assert.True(failures.Count == 0, "cross-tenant failures:\n" + string.Join('\n', failures));
    }

    /// <summary>Fills a route's parameters with tenant A's ids; a parameter this test does not know fails it.</summary>
    private static string Fill(string pattern, string sandbox, string key, string template, string snapshot, string registry, string tenant)
    {
        var sb = new StringBuilder();
        int i = 0;
        while (i < pattern.Length)
        {
            int open = pattern.IndexOf('{', i);
            if (open < 0)
            {
                sb.Append(pattern, i, pattern.Length - i);
                break;
            }
            sb.Append(pattern, i, open - i);
            int close = pattern.IndexOf('}', open);
            var name = pattern[(open + 1)..close].TrimStart('*').Split(':')[0].TrimEnd('?');
            var prefix = pattern[..open];
            sb.Append((name, prefix) switch
            {
                ("id", _) when prefix.StartsWith("/v1/sandboxes/", StringComparison.Ordinal) => sandbox,
                ("id", "/v1/keys/") => key,
                ("name", "/v1/templates/") => template,
                ("name", "/v1/snapshots/") => snapshot,
                ("registry", "/v1/registry-logins/") => registry,
                ("tenantId", _) => tenant,
                ("keyId", _) => key,
                ("pid", _) => "4242",
                ("port", _) => "8000",
                ("rest", _) => "index.html",
                ("contextId", _) => "ctx0000000000",
                _ => throw new InvalidOperationException($"parameter '{name}' is unknown to the cross-tenant test: say which tenant-owned id it takes"),
            });
            i = close + 1;
        }
        return sb.ToString();
    }

    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    /// <summary>One request with a body that fits every route (unknown fields are ignored), naming A's template and sandbox.</summary>
    private async Task<(int Status, string? Code, string Body)> SendAsync(HttpClient http, string method, string pathAndQuery, string template, string sandbox, bool ndjson = false)
    {
        using var request = new HttpRequestMessage(new HttpMethod(method), pathAndQuery.TrimStart('/'));
        if (method is "POST" or "PUT" or "PATCH")
        {
            // One-shot runs take cmd or code, not both; everything else ignores what it does not know.
            var codeField = pathAndQuery.StartsWith("/v1/run", StringComparison.Ordinal) ? "" : ",\"code\":\"print(1)\",\"language\":\"python\"";
            request.Content = pathAndQuery.Contains("/files?", StringComparison.Ordinal) && method == "PUT"
                ? new ByteArrayContent("overwritten by B"u8.ToArray()) { Headers = { ContentType = new MediaTypeHeaderValue("application/octet-stream") } }
                : Json($$"""{"template":"{{template}}","isolation":"container","source":"{{template}}","name":"b-copy","cmd":["true"],"timeoutSeconds":60,"path":"/home/user/secret.txt","from":"/home/user/secret.txt","to":"/home/user/moved.txt","signal":9{{codeField}},"sandboxId":"{{sandbox}}"}""");
        }
        if (ndjson)
            request.Headers.Accept.ParseAdd("application/x-ndjson");
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Timeout);
        using var read = CancellationTokenSource.CreateLinkedTokenSource(Timeout);
        read.CancelAfter(TimeSpan.FromSeconds(20));
        string body;
        try
        {
            body = await response.Content.ReadAsStringAsync(read.Token);
        }
        catch (OperationCanceledException) when (!Timeout.IsCancellationRequested)
        {
            body = "(body still streaming after 20 s)";
        }
        string? code = null;
        if (body.StartsWith("{\"error\"", StringComparison.Ordinal))
            code = System.Text.Json.JsonDocument.Parse(body).RootElement.GetProperty("error").GetProperty("code").GetString();
        return ((int)response.StatusCode, code, body);
    }

    /// <summary>The WebSocket handshake's status; with <paramref name="host"/>, that host name is dialled at the server's loopback address.</summary>
    private async Task<int> WebSocketStatusAsync(string pathAndQuery, string key, string? host = null)
    {
        using var ws = new ClientWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        ws.Options.SetRequestHeader("Authorization", "Bearer " + key);
        var uri = new UriBuilder(new Uri(Server.Url, pathAndQuery.TrimStart('/'))) { Scheme = "ws" };
        if (host is not null)
            uri.Host = host;
        using var invoker = new HttpMessageInvoker(LoopbackPorts.DialServer(Server.Url));
        try
        {
            await ws.ConnectAsync(uri.Uri, invoker, Timeout);
            await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", Timeout);
            return 101;
        }
        catch (WebSocketException)
        {
            return (int)ws.HttpStatusCode;
        }
    }
}
