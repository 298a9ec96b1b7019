using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Moat.Core.Sandboxes;

namespace Moat.Tests.Network;

/// <summary>The inbound proxy's host form: <c>{port}-{id}.{domain}</c> reaches a sandbox's port with the path form's credentials.</summary>
public sealed class InboundHostTests(NetworkFixture fixture) : NetworkTestBase(fixture)
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task HostFormReachesThePortWithTheSameCredentialsAsThePathForm(IsolationTier tier)
    {
        var id = await CreateAsync(tier, "allow", "allowed.test");
        string bind = tier == IsolationTier.Container ? "127.0.0.1" : "0.0.0.0";
        await Manager.WriteFileAsync(id, TenantId, "/tmp/server.py", new MemoryStream(Encoding.UTF8.GetBytes(InboundPortTests.Server)), null, 0, CancellationToken.None);
        await Manager.StartBackgroundAsync(id, TenantId, new CommandSpec { Argv = ["python3", "/tmp/server.py", id, bind] }, CancellationToken.None);

        var port = JsonDocument.Parse(await Api.GetStringAsync($"v1/sandboxes/{id}/network/ports/8000")).RootElement;
        var token = port.GetProperty("token").GetString()!;
        string host = $"8000-{id}.{NetworkFixture.InboundDomain}";
        // The URL the API hands out names the host form, on the port the request came in on.
        Assert.Equal($"http://{host}:{Fixture.Url.Port}/", port.GetProperty("hostUrl").GetString());

        using var http = new HttpClient(DialServer()) { BaseAddress = new Uri($"http://{host}:{Fixture.Url.Port}/"), Timeout = TimeSpan.FromMinutes(2) };
        async Task<HttpResponseMessage> GetAsync(string path, string? tokenHeader = null, string? apiKey = null)
        {
            var request = new HttpRequestMessage(HttpMethod.Get, path);
            if (tokenHeader is not null)
                request.Headers.Add("X-Moat-Access-Token", tokenHeader);
            if (apiKey is not null)
                request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", apiKey);
            return await http.SendAsync(request);
        }

        // The whole path and query go through; wait for the server inside to listen.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        HttpResponseMessage ok;
        while (true)
        {
            ok = await GetAsync("/deep/path?x=1", token);
            if (ok.StatusCode == HttpStatusCode.OK || DateTime.UtcNow > deadline)
                break;
            ok.Dispose();
            await Task.Delay(300);
        }
        Assert.True(ok.StatusCode == HttpStatusCode.OK, $"{(int)ok.StatusCode} {await ok.Content.ReadAsStringAsync()}");
        Assert.Equal($"secret of {id} path=/deep/path?x=1\n", await ok.Content.ReadAsStringAsync());
        ok.Dispose();

        // The token in the query (removed before it goes in) and the tenant's API key are admitted too.
        Assert.Equal($"secret of {id} path=/q?y=2\n", await http.GetStringAsync($"/q?moat_token={token}&y=2"));
        using (var withKey = await GetAsync("/key", apiKey: Fixture.AdminKey))
            Assert.Equal($"secret of {id} path=/key\n", await withKey.Content.ReadAsStringAsync());

        // No credential, a wrong token or a wrong key: refused before anything enters the sandbox.
        foreach (var (wrongToken, wrongKey) in new (string?, string?)[] { (null, null), ("mt_wrong", null), (token + "x", null), (null, "moat_" + new string('0', 52)) })
        {
            using var denied = await GetAsync("/denied", wrongToken, wrongKey);
            Assert.Equal(HttpStatusCode.Unauthorized, denied.StatusCode);
        }

        // A sandbox that does not exist under that host: 404, with or without credentials.
        using (var other = new HttpClient(DialServer()) { BaseAddress = new Uri($"http://8000-sb000000000000000000.{NetworkFixture.InboundDomain}:{Fixture.Url.Port}/") })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, "/x");
            request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Fixture.AdminKey);
            using var missing = await other.SendAsync(request);
            Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        }

        // WebSocket through the host form.
        using (var ws = new ClientWebSocket())
        using (var invoker = new HttpMessageInvoker(DialServer()))
        {
            ws.Options.SetRequestHeader("X-Moat-Access-Token", token);
            await ws.ConnectAsync(new Uri($"ws://{host}:{Fixture.Url.Port}/ws"), invoker, CancellationToken.None);
            await ws.SendAsync(Encoding.UTF8.GetBytes("hi"), WebSocketMessageType.Text, true, CancellationToken.None);
            var buffer = new byte[256];
            var got = await ws.ReceiveAsync(buffer, new CancellationTokenSource(TimeSpan.FromSeconds(20)).Token);
            Assert.Equal("echo:hi", Encoding.UTF8.GetString(buffer, 0, got.Count));
            ws.Abort();
        }

        // The oracle inside: exactly the admitted requests arrived, none with Moat's credentials.
        var requests = (await PythonAsync(id, """out("log", open("/tmp/requests.log").read())"""))["log"].Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["/deep/path?x=1", "/q?y=2", "/key", "/ws"], requests.Select(l => l.Split(' ')[1]));
        Assert.All(requests, l => Assert.EndsWith(" -", l));

        // A public port needs no credentials on the host form either.
        using (var put = await Api.PutAsync($"v1/sandboxes/{id}/network/ports/8000", new StringContent("{\"public\":true}", Encoding.UTF8, "application/json")))
            Assert.Equal(HttpStatusCode.OK, put.StatusCode);
        Assert.Equal($"secret of {id} path=/open\n", await http.GetStringAsync("/open"));
    }

    /// <summary>Dials the server's loopback address whatever host a request names.</summary>
    private SocketsHttpHandler DialServer() => new()
    {
        ConnectCallback = async (_, cancellationToken) =>
        {
            var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await socket.ConnectAsync(IPAddress.Loopback, Fixture.Url.Port, cancellationToken);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        },
    };
}
