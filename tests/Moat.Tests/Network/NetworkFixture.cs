using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Moat.Core.Sandboxes;
using Moat.Networking;
using Moat.Server;

namespace Moat.Tests.Network;

/// <summary>
/// A real <c>moat serve</c> (Kestrel on loopback, SQLite, the real runtimes) whose network uplink
/// is a test world: the proxy and resolver dial from the world namespace, whose only DNS server
/// is the test's. One per test run, shared by every network test class (they run one after another).
/// </summary>
public class NetworkFixture : IAsyncLifetime
{
    /// <summary>More server arguments (a derived fixture's limits).</summary>
    protected virtual IEnumerable<string> ExtraArguments => [];

    private WebApplication? _app;

    public TestWorld World { get; private set; } = null!;

    /// <summary>The admin key of the server.</summary>
    public string AdminKey { get; } = "moat_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(26));

    public string DataDirectory { get; } = Path.Combine(Path.GetTempPath(), "moat-net-" + Guid.NewGuid().ToString("N")[..8]);

    private string CgroupParent => "/" + Path.GetFileName(DataDirectory);

    /// <summary>The server's URL.</summary>
    public Uri Url { get; private set; } = null!;

    /// <summary>The domain of sandbox ports' host form, <c>{port}-{id}.{InboundDomain}</c> (dialled at <see cref="Url"/>'s address).</summary>
    public const string InboundDomain = "sandboxes.test";

    public IServiceProvider Services => _app!.Services;

    public SandboxManager Manager => Services.GetRequiredService<SandboxManager>();

    public NetworkController Controller => Services.GetRequiredService<NetworkController>();

    /// <summary>An HTTP client for the API, with the admin key (or none).</summary>
    public HttpClient Http(bool withKey = true)
    {
        var http = new HttpClient { BaseAddress = Url, Timeout = TimeSpan.FromMinutes(3) };
        if (withKey)
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", AdminKey);
        return http;
    }

    public async Task InitializeAsync()
    {
        World = await TestWorld.CreateAsync();
        using var probe = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        Url = new Uri($"http://127.0.0.1:{port}/");
        Directory.CreateDirectory(DataDirectory);
        Environment.SetEnvironmentVariable("MOAT_ADMIN_KEY", AdminKey);
        _app = MoatServer.Build(
        [
            $"--urls={Url.AbsoluteUri.TrimEnd('/')}",
            $"--Moat:DataDirectory={DataDirectory}",
            $"--Moat:AgentDirectory={Repo.AgentDirectory}",
            $"--Moat:BuiltinTemplates:Directory={Repo.TemplatesDirectory}",
            $"--Moat:Runc:Root={Path.Combine(DataDirectory, "runc-state")}",
            $"--Moat:Runc:CgroupParent={CgroupParent}",
            $"--Moat:Runsc:Root={Path.Combine(DataDirectory, "runsc-state")}",
            $"--Moat:Runsc:CgroupParent={CgroupParent}",
            $"--Moat:Qemu:CgroupParent={CgroupParent}",
            "--Moat:Server:DestroySandboxesOnShutdown=true",
            $"--Moat:Network:UplinkNamespace={World.WorldNamespace}",
            $"--Moat:Network:Resolvers:0={TestWorld.Dns}",
            $"--Moat:Network:GatewayNamespace={World.Prefix}-gw",
            $"--Moat:Network:Inbound:Domain={InboundDomain}",
            .. ExtraArguments,
        ], builder =>
        {
            builder.Logging.ClearProviders();
            builder.Logging.AddSimpleConsole(o => o.TimestampFormat = "HH:mm:ss.fff ");
            builder.Logging.SetMinimumLevel(Enum.TryParse<LogLevel>(Environment.GetEnvironmentVariable("MOAT_TEST_LOG"), out var level) ? level : LogLevel.Warning);
        });
        using var start = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await _app.StartAsync(start.Token);
    }

    public async Task DisposeAsync()
    {
        try
        {
            if (_app is not null)
            {
                using var stop = new CancellationTokenSource(TimeSpan.FromMinutes(2));
                try
                {
                    await _app.StopAsync(stop.Token);
                }
                finally
                {
                    await _app.DisposeAsync();
                }
            }
        }
        finally
        {
            if (World is not null)
                await World.DisposeAsync();
            try
            {
                Moat.Runtimes.Cgroups.CgroupHierarchy.At(CgroupParent).Remove();
                Directory.Delete(DataDirectory, recursive: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
            }
        }
    }
}

/// <summary>The network test classes share one server and one world, and run one after another.</summary>
[CollectionDefinition(Name)]
public sealed class NetworkCollection : ICollectionFixture<NetworkFixture>
{
    public const string Name = "network world";
}

/// <summary>
/// Helpers of the network tests: sandboxes created through the REST API with a policy, Python
/// probes run inside them, the connection log read through the API.
/// </summary>
[Collection(NetworkCollection.Name)]
public abstract class NetworkTestBase(NetworkFixture fixture) : IAsyncLifetime
{
    private readonly List<string> _mine = [];

    protected NetworkFixture Fixture { get; } = fixture;

    protected TestWorld World => Fixture.World;

    protected SandboxManager Manager => Fixture.Manager;

    protected HttpClient Api { get; } = fixture.Http();

    protected const string Tenant = "default";

    /// <summary>Skips tiers this host cannot run (the microvm tier's guest gets a virtio-net NIC on a tap in the sandbox's namespace).</summary>
    protected Task RequireNetworkAsync(IsolationTier tier) => RequireTierAsync(tier);

    protected async Task RequireTierAsync(IsolationTier tier)
    {
        var status = (await Manager.Runtimes.StatusAsync(CancellationToken.None)).Single(s => s.Tier == tier);
        Skip.IfNot(status.Usable, $"tier {tier.Name()} is not usable on this host: {status.Reason}");
    }

    /// <summary>Creates a sandbox through POST /v1/sandboxes with a network policy; deleted after the test.</summary>
    protected async Task<string> CreateAsync(IsolationTier tier, string mode, params string[] allow)
    {
        await RequireNetworkAsync(tier);
        var (status, body) = await CreateRawAsync(tier, mode, allow);
        Assert.True(status == HttpStatusCode.Created, $"create: {(int)status} {body}");
        var id = JsonDocument.Parse(body).RootElement.GetProperty("id").GetString()!;
        lock (_mine)
            _mine.Add(id);
        // The caller's tenant: the admin key's.
        _tenant ??= (await Manager.ListAsync(new Moat.Core.State.SandboxQuery { TenantId = null, Limit = 10000 }, CancellationToken.None)).FirstOrDefault(r => r.Id == id)?.TenantId;
        return id;
    }

    private string? _tenant;

    /// <summary>The tenant of the admin key.</summary>
    protected string TenantId => _tenant ?? throw new InvalidOperationException("no sandbox created yet");

    protected async Task<(HttpStatusCode Status, string Body)> CreateRawAsync(IsolationTier tier, string mode, params string[] allow)
    {
        var request = new Dictionary<string, object?>
        {
            ["template"] = "base",
            ["isolation"] = tier.Name(),
            ["timeoutSeconds"] = 300,
            ["resources"] = new Dictionary<string, object> { ["memoryMiB"] = 256, ["diskMiB"] = 256, ["cpus"] = 1 },
            ["network"] = new Dictionary<string, object?> { ["mode"] = mode, ["allow"] = allow.Length > 0 ? allow : null },
        };
        using var response = await Api.PostAsync("v1/sandboxes", new StringContent(JsonSerializer.Serialize(request), Encoding.UTF8, "application/json"));
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    /// <summary>PUT /v1/sandboxes/{id}/network.</summary>
    protected async Task<(HttpStatusCode Status, string Body)> SetNetworkAsync(string id, string mode, params string[] allow)
    {
        var body = JsonSerializer.Serialize(new Dictionary<string, object?> { ["mode"] = mode, ["allow"] = allow.Length > 0 ? allow : null });
        using var response = await Api.PutAsync($"v1/sandboxes/{id}/network", new StringContent(body, Encoding.UTF8, "application/json"));
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    /// <summary>Runs a Python script in the sandbox (as <paramref name="user"/>), with the test CA at /tmp/ca.pem.</summary>
    protected async Task<Dictionary<string, string>> PythonAsync(string id, string script, string? user = null, int timeoutSeconds = 90)
    {
        var ran = await RunPythonAsync(id, script, user, timeoutSeconds);
        Assert.True(ran.Exit.ExitCode == 0, $"probe failed ({ran.Exit.ExitCode}): {Encoding.UTF8.GetString(ran.Stdout)}\n{Encoding.UTF8.GetString(ran.Stderr)}");
        return Probes.Results(Encoding.UTF8.GetString(ran.Stdout));
    }

    protected async Task<BufferedResult> RunPythonAsync(string id, string script, string? user = null, int timeoutSeconds = 90)
    {
        await Manager.WriteFileAsync(id, TenantId, "/tmp/ca.pem", new MemoryStream(Encoding.UTF8.GetBytes(World.CaPem)), null, 0, CancellationToken.None);
        var file = $"/tmp/probe-{Guid.NewGuid():N}.py";
        await Manager.WriteFileAsync(id, TenantId, file, new MemoryStream(Encoding.UTF8.GetBytes(Probes.Library + "\n" + script)), null, 0, CancellationToken.None);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds + 60));
        return await Manager.RunCommandAsync(id, TenantId, new CommandSpec { Argv = ["python3", file], User = user, Timeout = TimeSpan.FromSeconds(timeoutSeconds) }, default, cts.Token);
    }

    /// <summary>The sandbox's connection log through GET /v1/sandboxes/{id}/network/log, waiting until <paramref name="until"/> holds (or 20 s).</summary>
    protected async Task<List<JsonElement>> LogAsync(string id, Func<List<JsonElement>, bool>? until = null)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            var body = await Api.GetStringAsync($"v1/sandboxes/{id}/network/log?limit=10000");
            var events = JsonDocument.Parse(body).RootElement.GetProperty("events").EnumerateArray().Select(e => e.Clone()).ToList();
            if (until is null || until(events) || DateTime.UtcNow > deadline)
                return events;
            await Task.Delay(200);
        }
    }

    protected static string Describe(IEnumerable<JsonElement> events) => string.Join("\n", events.Select(e => e.GetRawText()));

    /// <summary>Asserts that no forbidden server of the world was reached.</summary>
    protected void AssertNothingReached(params string[] allowedToo)
    {
        foreach (var server in World.Forbidden(allowedToo))
            Assert.True(server.ConnectionCount == 0, $"{server.Name} was reached: {string.Join("; ", server.Connections.Select(c => $"{c.Remote} in={c.BytesIn} {string.Join(",", c.Requests)}"))}");
    }

    public Task InitializeAsync()
    {
        World.ResetRecords();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        List<string> ids;
        lock (_mine)
            ids = [.. _mine];
        foreach (var id in ids)
        {
            using var _ = await Api.DeleteAsync($"v1/sandboxes/{id}");
        }
        Api.Dispose();
    }
}

/// <summary>Python helpers every probe script starts with.</summary>
public static class Probes
{
    public const string Library = """
        import socket, ssl, sys, json, time, http.client
        def tcp(host, port, send=b"", timeout=5):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET); s.settimeout(timeout)
            try:
                s.connect((host, port))
                if send: s.sendall(send)
                data = s.recv(65536)
                s.close()
                return "data:" + data.decode("latin1") if data else "closed"
            except OSError as e:
                return "error:%s" % (e.errno or type(e).__name__)
        def https(host, path="/", sni=None, ip=None, timeout=5):
            ctx = ssl.create_default_context(cafile="/tmp/ca.pem")
            try:
                raw = socket.create_connection((ip or host, 443), timeout)
                s = ctx.wrap_socket(raw, server_hostname=sni or host)
                s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk: break
                    data += chunk
                return "ok:" + data.decode("latin1").split("\r\n\r\n", 1)[-1]
            except (OSError, ssl.SSLError) as e:
                return "error:%s" % (getattr(e, "errno", None) or type(e).__name__)
        def http(host, path="/", ip=None, port=80, timeout=5, headers=""):
            try:
                s = socket.create_connection((ip or host, port), timeout)
                s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (path, host, headers)).encode())
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk: break
                    data += chunk
                return "ok:" + data.decode("latin1").split("\r\n\r\n", 1)[-1] if data else "closed"
            except OSError as e:
                return "error:%s" % (e.errno or type(e).__name__)
        def resolve(name):
            try:
                return sorted(set(a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)))
            except OSError as e:
                return "error:%s" % e.errno
        def udp(host, port, data=b"ping", timeout=2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
            try:
                s.sendto(data, (host, port))
                return "data:" + s.recv(65536).decode("latin1")
            except OSError as e:
                return "error:%s" % (e.errno or type(e).__name__)
        def out(key, value):
            print(json.dumps([key, value]), flush=True)
        """;

    /// <summary>The key → value pairs a probe printed with out().</summary>
    public static Dictionary<string, string> Results(string stdout)
    {
        var results = new Dictionary<string, string>();
        foreach (var line in stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            try
            {
                var pair = System.Text.Json.JsonDocument.Parse(line).RootElement;
                results[pair[0].GetString()!] = pair[1].ValueKind == System.Text.Json.JsonValueKind.String ? pair[1].GetString()! : pair[1].GetRawText();
            }
            catch (System.Text.Json.JsonException)
            {
            }
        }
        return results;
    }
}
