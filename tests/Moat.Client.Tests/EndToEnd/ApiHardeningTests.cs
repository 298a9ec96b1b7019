using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// The native API against hostile or careless clients, over real HTTP through Kestrel: every
/// malformed, oversized or unauthenticated request gets a clear 4xx in the one error shape, and
/// the server keeps serving.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class ApiHardeningTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private HttpClient Http(string? key = "admin")
    {
        var http = new HttpClient { BaseAddress = Server.Url, Timeout = TimeSpan.FromMinutes(2) };
        if (key is not null)
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key == "admin" ? Server.AdminKey : key);
        return http;
    }

    private static async Task<(HttpStatusCode Status, string Code, string Message)> ErrorOf(HttpResponseMessage response)
    {
        var body = await response.Content.ReadAsStringAsync();
        Assert.StartsWith("application/json", response.Content.Headers.ContentType?.MediaType ?? "", StringComparison.Ordinal);
        using var json = JsonDocument.Parse(body);
        var error = json.RootElement.GetProperty("error");
        return (response.StatusCode, error.GetProperty("code").GetString()!, error.GetProperty("message").GetString()!);
    }

    private static StringContent JsonBody(string json) => new(json, Encoding.UTF8, "application/json");

    [SkippableFact]
    public async Task A_registry_login_with_missing_fields_is_a_400_naming_them()
    {
        using var http = Http();
        foreach (var (body, code) in new[]
        {
            ("{}", "invalid_registry"),
            ("""{"registry":"  "}""", "invalid_registry"),
            ("""{"registry":"ghcr.io"}""", "invalid_credentials"),
            ("""{"registry":"ghcr.io","username":"me"}""", "invalid_credentials"),
        })
        {
            var (status, got, _) = await ErrorOf(await http.PostAsync("v1/registry-logins", JsonBody(body)));
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Equal(code, got);
        }
    }

    [SkippableFact]
    public async Task Only_health_and_the_openapi_document_work_without_a_key()
    {
        using var anonymous = Http(key: null);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/healthz")).StatusCode);
        var openapi = await anonymous.GetAsync("/openapi/v1.json");
        Assert.Equal(HttpStatusCode.OK, openapi.StatusCode);
        using var doc = JsonDocument.Parse(await openapi.Content.ReadAsStringAsync());
        Assert.True(doc.RootElement.GetProperty("paths").TryGetProperty("/v1/sandboxes/{id}/exec", out _));
        foreach (var (method, path) in new[] { ("GET", "/v1/capabilities"), ("GET", "/v1/sandboxes"), ("POST", "/v1/sandboxes"), ("POST", "/v1/run"), ("GET", "/v1/keys"), ("GET", "/v1/templates") })
        {
            var response = await anonymous.SendAsync(new HttpRequestMessage(new HttpMethod(method), path));
            var (status, code, _) = await ErrorOf(response);
            Assert.Equal(HttpStatusCode.Unauthorized, status);
            Assert.Equal("unauthenticated", code);
        }
        using var wrong = Http("moat_" + new string('0', 52));
        var (badStatus, badCode, badMessage) = await ErrorOf(await wrong.GetAsync("/v1/sandboxes"));
        Assert.Equal(HttpStatusCode.Unauthorized, badStatus);
        Assert.Contains("unknown or revoked", badMessage);
        Assert.Equal("unauthenticated", badCode);
    }

    [SkippableFact]
    public async Task Malformed_json_gets_400_with_the_place_it_went_wrong()
    {
        using var http = Http();
        foreach (var body in new[] { "{", "{\"template\": 5}", "[1,2,3]", "{\"resources\": {\"memoryMiB\": \"lots\"}}", "null", "\u0000\u0001" })
        {
            var (status, code, message) = await ErrorOf(await http.PostAsync("/v1/sandboxes", JsonBody(body)));
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Equal("invalid_json", code);
            Assert.False(string.IsNullOrWhiteSpace(message));
        }
        var (wrongTypeStatus, wrongTypeCode, _) = await ErrorOf(await http.PostAsync("/v1/sandboxes", new StringContent("template=base", Encoding.UTF8, "application/x-www-form-urlencoded")));
        Assert.Equal(HttpStatusCode.BadRequest, wrongTypeStatus);
        Assert.Equal("unsupported_media_type", wrongTypeCode);
    }

    [SkippableFact]
    public async Task Deeply_nested_and_giant_json_is_refused_without_harm()
    {
        using var http = Http();
        var deep = new string('[', 5000) + new string(']', 5000);
        var (deepStatus, deepCode, _) = await ErrorOf(await http.PostAsync("/v1/sandboxes", JsonBody("{\"metadata\":" + deep + "}")));
        Assert.Equal(HttpStatusCode.BadRequest, deepStatus);
        Assert.Equal("invalid_json", deepCode);

        // A 20 MB body announced up front is refused before it is read: send only the headers
        // and the first bytes, then read the answer.
        using (var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await socket.ConnectAsync(Server.Url.Host, Server.Url.Port);
            var head = $"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {Server.AdminKey}\r\nContent-Type: application/json\r\nContent-Length: {20 << 20}\r\n\r\n{{\"metadata\":{{\"k\":\"xxxx";
            await socket.SendAsync(Encoding.ASCII.GetBytes(head));
            var answer = new byte[4096];
            int got = await socket.ReceiveAsync(answer);
            var text = Encoding.ASCII.GetString(answer, 0, got);
            Assert.StartsWith("HTTP/1.1 413", text);
            Assert.Contains("\"body_too_large\"", text);
        }
        // Streamed without a length, it is cut off at the limit.
        var giant = new StringContent("{\"metadata\":{\"k\":\"" + new string('x', 20 << 20) + "\"}}", Encoding.UTF8, "application/json");
        giant.Headers.ContentLength = null;
        var chunked = new HttpRequestMessage(HttpMethod.Post, "/v1/sandboxes") { Content = new StreamContent(await giant.ReadAsStreamAsync()) };
        chunked.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        chunked.Headers.TransferEncodingChunked = true;
        try
        {
            var (giantStatus, giantCode, _) = await ErrorOf(await http.SendAsync(chunked));
            Assert.Equal(HttpStatusCode.RequestEntityTooLarge, giantStatus);
            Assert.Equal("body_too_large", giantCode);
        }
        catch (HttpRequestException)
        {
            // The server answered and closed while the client was still sending: also a refusal.
        }
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/healthz")).StatusCode);
    }

    [SkippableFact]
    public async Task Absurd_resource_requests_are_refused_naming_the_limit_never_clamped()
    {
        using var http = Http();
        var cases = new (string Body, string Code)[]
        {
            ("{\"resources\":{\"memoryMiB\":100000000}}", "invalid_memory"),
            ("{\"resources\":{\"memoryMiB\":1}}", "invalid_memory"),
            ("{\"resources\":{\"cpus\":-1}}", "invalid_cpus"),
            ("{\"resources\":{\"cpus\":1000}}", "invalid_cpus"),
            ("{\"resources\":{\"diskMiB\":99999999}}", "invalid_disk"),
            ("{\"resources\":{\"pids\":0}}", "invalid_pids"),
            ("{\"timeoutSeconds\":0}", "invalid_timeout"),
            ("{\"timeoutSeconds\":-5}", "invalid_timeout"),
            ("{\"isolation\":\"hypervisor-of-doom\"}", "invalid_isolation"),
            ("{\"network\":{\"mode\":\"everything\"}}", "invalid_network"),
            ("{\"env\":{\"1BAD\":\"x\"}}", "invalid_env"),
        };
        foreach (var (body, expected) in cases)
        {
            var (status, code, message) = await ErrorOf(await http.PostAsync("/v1/sandboxes", JsonBody(body)));
            Assert.True(status == HttpStatusCode.BadRequest, $"{body}: {status} {code} {message}");
            Assert.Equal(expected, code);
        }
        var (missingStatus, missingCode, _) = await ErrorOf(await http.PostAsync("/v1/sandboxes", JsonBody("{\"template\":\"no-such-template\",\"isolation\":\"container\"}")));
        Assert.Equal(HttpStatusCode.NotFound, missingStatus);
        Assert.Equal("template_not_found", missingCode);
        // Nothing was created by any of these.
        Assert.DoesNotContain((await Client.ListSandboxesAsync(state: "creating,running", cancellationToken: Timeout)), s => s.Template == "no-such-template");
    }

    [SkippableFact]
    public async Task Unknown_routes_and_ids_answer_404_in_the_error_shape()
    {
        using var http = Http();
        var (routeStatus, routeCode, _) = await ErrorOf(await http.GetAsync("/v1/nothing-here"));
        Assert.Equal(HttpStatusCode.NotFound, routeStatus);
        Assert.Equal("not_found", routeCode);
        foreach (var id in new[] { "sb00000000000000000a", "../../etc/passwd", "x", new string('a', 3000) })
        {
            var (status, code, _) = await ErrorOf(await http.GetAsync($"/v1/sandboxes/{Uri.EscapeDataString(id)}"));
            Assert.Equal(HttpStatusCode.NotFound, status);
            Assert.Equal("sandbox_not_found", code);
        }
    }

    [SkippableFact]
    public async Task Too_many_headers_and_a_huge_request_line_are_refused()
    {
        using var http = Http();
        var many = new HttpRequestMessage(HttpMethod.Get, "/healthz");
        for (int i = 0; i < 500; i++)
            many.Headers.TryAddWithoutValidation($"X-Junk-{i}", "value");
        Assert.Equal(HttpStatusCode.RequestHeaderFieldsTooLarge, (await http.SendAsync(many)).StatusCode);
        var longLine = await http.GetAsync("/healthz?q=" + new string('a', 64 * 1024));
        Assert.True(longLine.StatusCode is HttpStatusCode.RequestUriTooLong or HttpStatusCode.BadRequest, longLine.StatusCode.ToString());
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/healthz")).StatusCode);
    }

    [SkippableFact]
    public async Task A_slow_client_that_never_finishes_its_headers_is_dropped()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(Server.Url.Host, Server.Url.Port);
        await socket.SendAsync("GET /healthz HTTP/1.1\r\nHost: x\r\n"u8.ToArray());
        // Kestrel's header timeout (15 s) closes the connection; a read returns 0 or an error.
        var buffer = new byte[1024];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        int n;
        try
        {
            n = await socket.ReceiveAsync(buffer, cts.Token);
        }
        catch (SocketException)
        {
            n = 0;
        }
        var text = Encoding.ASCII.GetString(buffer, 0, n);
        Assert.True(n == 0 || text.StartsWith("HTTP/1.1 408", StringComparison.Ordinal), text);
        using var http = Http();
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/healthz")).StatusCode);
    }

    [SkippableFact]
    public async Task A_body_trickled_below_the_minimum_rate_is_dropped()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(Server.Url.Host, Server.Url.Port);
        await socket.SendAsync(Encoding.ASCII.GetBytes($"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {Server.AdminKey}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"));
        // One byte every second: far under 1 KiB/s. Kestrel ends the request after its grace period.
        var dropped = false;
        var buffer = new byte[4096];
        for (int i = 0; i < 60 && !dropped; i++)
        {
            try
            {
                await socket.SendAsync(" "u8.ToArray());
                if (socket.Poll(1_000_000, SelectMode.SelectRead))
                    dropped = true; // an answer (408/400) or the close
            }
            catch (SocketException)
            {
                dropped = true;
            }
        }
        Assert.True(dropped, "a client sending 1 byte/s held its request open for 60 s");
        using var http = Http();
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/healthz")).StatusCode);
    }

    [SkippableFact]
    public async Task Lifecycle_races_answer_consistently_and_leave_nothing_running()
    {
        using var http = Http();
        var created = await http.PostAsync("/v1/sandboxes", JsonBody("{\"template\":\"base\",\"isolation\":\"container\",\"timeoutSeconds\":120}"));
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        var id = JsonDocument.Parse(await created.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetString()!;
        const string exec = "{\"cmd\":[\"echo\",\"hi\"]}";
        // Exec on a paused sandbox: a 409, not a hang or a 500.
        Assert.Equal(HttpStatusCode.OK, (await http.PostAsync($"/v1/sandboxes/{id}/pause", JsonBody("{}"))).StatusCode);
        var (pausedStatus, pausedCode, _) = await ErrorOf(await http.PostAsync($"/v1/sandboxes/{id}/exec", JsonBody(exec)));
        Assert.True(pausedStatus == HttpStatusCode.Conflict, $"exec on a paused sandbox: {pausedStatus} {pausedCode}");
        // Delete during an exec, three deletes at once: every delete answers 204 (idempotent), the exec ends.
        Assert.Equal(HttpStatusCode.OK, (await http.PostAsync($"/v1/sandboxes/{id}/resume", JsonBody("{}"))).StatusCode);
        var running = http.PostAsync($"/v1/sandboxes/{id}/exec", JsonBody("{\"cmd\":[\"sleep\",\"30\"]}"));
        await Task.Delay(500);
        var deletes = await Task.WhenAll(Enumerable.Range(0, 3).Select(_ => http.DeleteAsync($"/v1/sandboxes/{id}")));
        Assert.All(deletes, d => Assert.True(d.StatusCode is HttpStatusCode.NoContent or HttpStatusCode.NotFound, d.StatusCode.ToString()));
        var ended = await running;
        Assert.True((int)ended.StatusCode < 500 || ended.StatusCode == HttpStatusCode.ServiceUnavailable, $"exec cut by delete answered {ended.StatusCode}");
        // Exec on the dead sandbox: 404 or 409 in the error shape.
        var (deadStatus, _, _) = await ErrorOf(await http.PostAsync($"/v1/sandboxes/{id}/exec", JsonBody(exec)));
        Assert.True(deadStatus is HttpStatusCode.NotFound or HttpStatusCode.Conflict, deadStatus.ToString());
        var listed = await Client.ListSandboxesAsync(state: "creating,running,paused", cancellationToken: Timeout);
        Assert.DoesNotContain(listed, s => s.Id == id);
    }

    [SkippableFact]
    public async Task A_thousand_parallel_creates_never_pass_the_quota()
    {
        var (_, key) = await TenancyKit.NewTenantAsync(Server, "burst", new Moat.Contracts.QuotasDto { MaxSandboxes = 3 }, new Moat.Contracts.RateLimitsDto { CreatesPerMinute = 100000, RequestsPerMinute = 100000 }, Timeout);
        using var http = Http(key);
        var body = "{\"template\":\"base\",\"isolation\":\"container\",\"memoryMiB\":64,\"diskMiB\":64,\"timeoutSeconds\":120}";
        var answers = await Task.WhenAll(Enumerable.Range(0, 1000).Select(async _ =>
        {
            using var r = await http.PostAsync("/v1/sandboxes", JsonBody(body));
            return (r.StatusCode, await r.Content.ReadAsStringAsync());
        }));
        var byStatus = answers.GroupBy(a => a.StatusCode).ToDictionary(g => g.Key, g => g.Count());
        var summary = string.Join(", ", byStatus.Select(kv => $"{(int)kv.Key}: {kv.Value}"));
        Assert.True(!answers.Any(a => (int)a.StatusCode >= 500), summary);
        Assert.True(byStatus.GetValueOrDefault(HttpStatusCode.Created) <= 3, $"creates passed a quota of 3: {summary}");
        Assert.All(answers.Where(a => a.StatusCode != HttpStatusCode.Created), a => Assert.True(a.StatusCode is HttpStatusCode.UnprocessableEntity or HttpStatusCode.TooManyRequests, a.Item2));
        // Accounting: the tenant holds exactly the sandboxes that were answered 201.
        using var list = await http.GetAsync("/v1/sandboxes?state=creating,running");
        var ids = JsonDocument.Parse(await list.Content.ReadAsStringAsync()).RootElement;
        var live = (ids.ValueKind == JsonValueKind.Array ? ids : ids.GetProperty("sandboxes")).EnumerateArray().Select(e => e.GetProperty("id").GetString()!).ToList();
        Assert.Equal(byStatus.GetValueOrDefault(HttpStatusCode.Created), live.Count);
        foreach (var id in live)
            await http.DeleteAsync($"/v1/sandboxes/{id}");
    }

    [SkippableFact]
    public async Task Exec_streams_ndjson_events_as_they_happen()
    {
        var sandbox = await CreateAsync();
        using var http = Http();
        var request = new HttpRequestMessage(HttpMethod.Post, $"/v1/sandboxes/{sandbox.Id}/exec")
        {
            Content = JsonBody("{\"shell\":\"echo one; sleep 1; echo two >&2; exit 7\"}"),
        };
        request.Headers.Accept.ParseAdd("application/x-ndjson");
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("application/x-ndjson", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var events = new List<(DateTime At, JsonElement Event)>();
        while (await reader.ReadLineAsync() is { } line)
            events.Add((DateTime.UtcNow, JsonDocument.Parse(line).RootElement.Clone()));
        Assert.True(events[0].Event.TryGetProperty("start", out var start) && start.GetProperty("pid").GetInt32() > 1);
        var one = events.Single(e => e.Event.TryGetProperty("stdout", out var s) && s.GetString() == "one\n");
        var two = events.Single(e => e.Event.TryGetProperty("stderr", out var s) && s.GetString() == "two\n");
        // "one" reached us a good while before "two": streamed, not buffered to the end.
        Assert.True(two.At - one.At > TimeSpan.FromMilliseconds(500));
        Assert.Equal(7, events[^1].Event.GetProperty("exit").GetProperty("exitCode").GetInt32());
    }

    [SkippableFact]
    public async Task Another_tenants_key_sees_404_on_every_verb()
    {
        var sandbox = await CreateAsync();
        // A key of another tenant, minted directly in the server's key service.
        var keys = Server.Services.GetService(typeof(Moat.Server.Auth.ApiKeyService)) as Moat.Server.Auth.ApiKeyService;
        var (_, otherKey) = await keys!.CreateAsync("tenant-other", "admin", "other tenant", cancellationToken: Timeout);
        using var other = Http(otherKey);
        var id = sandbox.Id;
        foreach (var (method, path, body) in new (string, string, string?)[]
        {
            ("GET", $"/v1/sandboxes/{id}", null),
            ("DELETE", $"/v1/sandboxes/{id}", null),
            ("POST", $"/v1/sandboxes/{id}/timeout", "{\"timeoutSeconds\":10}"),
            ("POST", $"/v1/sandboxes/{id}/exec", "{\"cmd\":[\"true\"]}"),
            ("GET", $"/v1/sandboxes/{id}/files?path=/etc/passwd", null),
            ("PUT", $"/v1/sandboxes/{id}/files?path=/tmp/x", "data"),
            ("DELETE", $"/v1/sandboxes/{id}/files?path=/tmp", null),
            ("GET", $"/v1/sandboxes/{id}/files/list?path=/", null),
            ("GET", $"/v1/sandboxes/{id}/files/stat?path=/", null),
            ("POST", $"/v1/sandboxes/{id}/files/mkdir?path=/tmp/d", null),
            ("POST", $"/v1/sandboxes/{id}/files/rename?from=/tmp&to=/x", null),
        })
        {
            var message = new HttpRequestMessage(new HttpMethod(method), path);
            if (body is not null)
                message.Content = body.StartsWith('{') ? JsonBody(body) : new StringContent(body);
            var (status, code, _) = await ErrorOf(await other.SendAsync(message));
            Assert.True(status == HttpStatusCode.NotFound, $"{method} {path}: {status}");
            Assert.Equal("sandbox_not_found", code);
        }
        var list = await other.GetStringAsync("/v1/sandboxes");
        Assert.DoesNotContain(id, list);
        // And the owner's sandbox is untouched.
        Assert.Equal("running", (await sandbox.GetInfoAsync(Timeout)).State);
    }
}
