using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Moat.Core.Sandboxes;
using Moat.Networking;

namespace Moat.Tests.Network;

/// <summary>
/// A Moat node whose uplink is a test world: the proxy and resolver dial from the world
/// namespace, whose only DNS server is the test's. Shared by the tests of a class.
/// </summary>
public sealed class NetworkFixture : IAsyncLifetime
{
    private NodeFixture? _node;

    public TestWorld World { get; private set; } = null!;

    public NodeFixture Node => _node!;

    /// <summary>More configuration (limits...) for the node of this fixture.</summary>
    public IReadOnlyDictionary<string, string?> ExtraConfig { get; init; } = new Dictionary<string, string?>();

    public NetworkController Controller => Node.Services.GetRequiredService<NetworkController>();

    public async Task InitializeAsync()
    {
        World = await TestWorld.CreateAsync();
        var config = new Dictionary<string, string?>(ExtraConfig)
        {
            ["Moat:Network:UplinkNamespace"] = World.WorldNamespace,
            ["Moat:Network:Resolvers:0"] = TestWorld.Dns.ToString(),
            ["Moat:Network:GatewayNamespace"] = World.Prefix + "-gw",
        };
        _node = new NodeFixture { ExtraConfig = config };
        await _node.InitializeAsync();
    }

    public async Task DisposeAsync()
    {
        try
        {
            if (_node is not null)
                await _node.DisposeAsync();
        }
        finally
        {
            if (World is not null)
                await World.DisposeAsync();
        }
    }
}

/// <summary>Helpers of the network tests: sandboxes with a policy, Python probes, the connection log.</summary>
public abstract class NetworkTestBase(NetworkFixture fixture) : SandboxTestBase(fixture.Node)
{
    private readonly List<string> _mine = [];

    protected NetworkFixture Fixture { get; } = fixture;

    protected TestWorld World => Fixture.World;

    /// <summary>Skips tiers whose networking is not wired here, saying why.</summary>
    protected async Task RequireNetworkAsync(IsolationTier tier)
    {
        await RequireAsync(tier);
        Skip.If(tier == IsolationTier.Microvm && Environment.GetEnvironmentVariable("MOAT_TEST_MICROVM_NETWORK") != "1",
            "the microvm tier does not take its network yet (its QEMU runtime must open INetworkController.CreateTapAsync's tap); set MOAT_TEST_MICROVM_NETWORK=1 once it does");
    }

    /// <summary>Creates a sandbox with a network policy; deleted after the test.</summary>
    protected async Task<SandboxRecord> CreateAsync(IsolationTier tier, NetworkPolicy policy, int memoryMiB = 256)
    {
        await RequireNetworkAsync(tier);
        var spec = NodeFixture.Spec(tier, memoryMiB: memoryMiB) with { Network = policy };
        var record = await Manager.CreateAsync(spec, Tenant, CancellationToken.None);
        lock (_mine)
            _mine.Add(record.Id);
        return record;
    }

    protected static NetworkPolicy Allow(params string[] rules) => new(NetworkMode.Allow, rules);

    protected static readonly NetworkPolicy Open = new(NetworkMode.Open, []);

    /// <summary>Runs a Python script in the sandbox (as <paramref name="user"/>), with the test CA at /tmp/ca.pem.</summary>
    protected async Task<Ran> PythonAsync(string id, string script, string? user = null, int timeoutSeconds = 60)
    {
        await Manager.WriteFileAsync(id, Tenant, "/tmp/ca.pem", new MemoryStream(Encoding.UTF8.GetBytes(World.CaPem)), null, 0, CancellationToken.None);
        await Manager.WriteFileAsync(id, Tenant, "/tmp/probe.py", new MemoryStream(Encoding.UTF8.GetBytes(Probes.Library + "\n" + script)), null, 0, CancellationToken.None);
        return await RunAsync(id, new CommandSpec { Argv = ["python3", "/tmp/probe.py"], User = user, Timeout = TimeSpan.FromSeconds(timeoutSeconds) });
    }

    /// <summary>The sandbox's connection log, waiting until at least <paramref name="atLeast"/> events are there.</summary>
    protected async Task<IReadOnlyList<Moat.Core.Networking.EgressEvent>> LogAsync(string id, int atLeast = 0, Func<IReadOnlyList<Moat.Core.Networking.EgressEvent>, bool>? until = null)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (true)
        {
            var page = await Fixture.Controller.ReadLogAsync(id, 0, 10_000, CancellationToken.None);
            if ((page.Events.Count >= atLeast && (until is null || until(page.Events))) || DateTime.UtcNow > deadline)
                return page.Events;
            await Task.Delay(100);
        }
    }

    /// <summary>Asserts that no forbidden server of the world was reached.</summary>
    protected void AssertNothingReached(params string[] allowedToo)
    {
        foreach (var server in World.Forbidden(allowedToo))
            Assert.True(server.ConnectionCount == 0, $"{server.Name} was reached: {string.Join("; ", server.Connections.Select(c => $"{c.Remote} in={c.BytesIn} {string.Join(",", c.Requests)}"))}");
    }

    public new async Task DisposeAsync()
    {
        List<string> ids;
        lock (_mine)
            ids = [.. _mine];
        foreach (var id in ids)
            await Manager.DeleteAsync(id, Tenant, CancellationToken.None);
        await base.DisposeAsync();
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
    public static Dictionary<string, string> Results(Ran ran)
    {
        var results = new Dictionary<string, string>();
        foreach (var line in ran.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
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
