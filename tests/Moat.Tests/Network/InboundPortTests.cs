using System.Net;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Moat.Core.Sandboxes;

namespace Moat.Tests.Network;

/// <summary>Ports inside a sandbox, reached only through Moat's authenticated reverse proxy (/v1/sandboxes/{id}/ports/{port}/...).</summary>
public sealed class InboundPortTests(NetworkFixture fixture) : NetworkTestBase(fixture)
{
    internal const string Server = """
        import http.server, socketserver, sys, hashlib, base64
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with open("/tmp/requests.log", "a") as f:
                    f.write("%s %s %s\n" % (self.client_address[0], self.path, self.headers.get("Authorization") or self.headers.get("X-Moat-Access-Token") or "-"))
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
                    self.send_response(101); self.send_header("Upgrade", "websocket"); self.send_header("Connection", "Upgrade"); self.send_header("Sec-WebSocket-Accept", accept); self.end_headers()
                    self.wfile.flush()
                    while True:
                        head = self.rfile.read(2)
                        if len(head) < 2: return
                        n = head[1] & 0x7f; mask = self.rfile.read(4); data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
                        if head[0] & 0x0f == 8: return
                        reply = b"echo:" + data
                        self.wfile.write(bytes([0x81, len(reply)]) + reply); self.wfile.flush()
                body = ("secret of %s path=%s\n" % (sys.argv[1], self.path)).encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
            def log_message(self, *a): pass
        class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
        S((sys.argv[2], 8000), H).serve_forever()
        """;

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task PortIsReachableOnlyWithItsTokenAndNeverFromAnotherSandbox(IsolationTier tier)
    {
        var a = await CreateAsync(tier, "allow", "allowed.test");
        var b = await CreateAsync(tier, "open");
        // The container tier reaches the sandbox's loopback; gVisor's own stack owns its loopback, so bind every address there.
        string bind = tier == IsolationTier.Container ? "127.0.0.1" : "0.0.0.0";
        await Manager.WriteFileAsync(a, TenantId, "/tmp/server.py", new MemoryStream(Encoding.UTF8.GetBytes(Server)), null, 0, CancellationToken.None);
        await Manager.StartBackgroundAsync(a, TenantId, new CommandSpec { Argv = ["python3", "/tmp/server.py", a, bind] }, CancellationToken.None);

        var port = JsonDocument.Parse(await Api.GetStringAsync($"v1/sandboxes/{a}/network/ports/8000")).RootElement;
        var token = port.GetProperty("token").GetString()!;
        Assert.False(port.GetProperty("public").GetBoolean());
        var path = $"v1/sandboxes/{a}/ports/8000/hello?x=1";

        // With the token (header): the server inside answers. Wait for it to listen first.
        using var anonymous = Fixture.Http(withKey: false);
        HttpResponseMessage? ok = null;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, path);
            request.Headers.Add("X-Moat-Access-Token", token);
            ok = await anonymous.SendAsync(request);
            if (ok.StatusCode == HttpStatusCode.OK || DateTime.UtcNow > deadline)
                break;
            ok.Dispose();
            await Task.Delay(300);
        }
        Assert.True(ok.StatusCode == HttpStatusCode.OK, $"{(int)ok.StatusCode} {await ok.Content.ReadAsStringAsync()}");
        Assert.Equal($"secret of {a} path=/hello?x=1\n", await ok.Content.ReadAsStringAsync());
        ok.Dispose();

        // Token in the query, and the tenant's API key: admitted too; the credential is not passed in.
        Assert.Equal($"secret of {a} path=/q\n", await anonymous.GetStringAsync($"v1/sandboxes/{a}/ports/8000/q?moat_token={token}"));
        Assert.Equal($"secret of {a} path=/key\n", await Api.GetStringAsync($"v1/sandboxes/{a}/ports/8000/key"));

        // No token, a wrong one, or sandbox B's token: refused before anything enters the sandbox.
        var tokenB = JsonDocument.Parse(await Api.GetStringAsync($"v1/sandboxes/{b}/network/ports/8000")).RootElement.GetProperty("token").GetString()!;
        foreach (var wrong in new string?[] { null, "mt_wrong", tokenB, token + "x" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, $"v1/sandboxes/{a}/ports/8000/denied");
            if (wrong is not null)
                request.Headers.Add("X-Moat-Access-Token", wrong);
            using var denied = await anonymous.SendAsync(request);
            Assert.Equal(HttpStatusCode.Unauthorized, denied.StatusCode);
        }

        // WebSocket through the proxy.
        using (var ws = new ClientWebSocket())
        {
            ws.Options.SetRequestHeader("X-Moat-Access-Token", token);
            await ws.ConnectAsync(new Uri($"ws://{Fixture.Url.Authority}/v1/sandboxes/{a}/ports/8000/ws"), CancellationToken.None);
            await ws.SendAsync(Encoding.UTF8.GetBytes("hi"), WebSocketMessageType.Text, true, CancellationToken.None);
            var buffer = new byte[256];
            var got = await ws.ReceiveAsync(buffer, new CancellationTokenSource(TimeSpan.FromSeconds(20)).Token);
            Assert.Equal("echo:hi", Encoding.UTF8.GetString(buffer, 0, got.Count));
            ws.Abort();
        }

        // Sandbox B, in open mode, aims at A's address directly: nothing arrives.
        var addressA = JsonDocument.Parse(await Api.GetStringAsync($"v1/sandboxes/{a}/network")).RootElement.GetProperty("address").GetString()!;
        var r = await PythonAsync(b, $"""
            out("direct", http("x", ip="{addressA}", port=8000))
            """);
        Assert.True(r["direct"].StartsWith("error", StringComparison.Ordinal) || r["direct"] == "closed", r["direct"]);

        // The oracle inside A: exactly the admitted requests arrived, none carried Moat's credentials, none came from B.
        var requests = (await PythonAsync(a, """out("log", open("/tmp/requests.log").read())"""))["log"].Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["/hello?x=1", "/q", "/key", "/ws"], requests.Select(l => l.Split(' ')[1]));
        Assert.All(requests, l => Assert.EndsWith(" -", l));
        Assert.DoesNotContain(requests, l => l.Contains(token, StringComparison.Ordinal));

        // A public port needs no credentials.
        using (var put = await Api.PutAsync($"v1/sandboxes/{a}/network/ports/8000", new StringContent("{\"public\":true}", Encoding.UTF8, "application/json")))
            Assert.Equal(HttpStatusCode.OK, put.StatusCode);
        Assert.Equal($"secret of {a} path=/open\n", await anonymous.GetStringAsync($"v1/sandboxes/{a}/ports/8000/open"));
    }
}
