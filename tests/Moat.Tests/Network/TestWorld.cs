using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Moat.Networking.Plumbing;

namespace Moat.Tests.Network;

/// <summary>
/// A small internet made by the test, entirely inside network namespaces it creates: a "world"
/// namespace that is Moat's uplink and has no route to anything but the test's own fake hosts,
/// and namespaces for those hosts ("public", "private", "metadata") holding the addresses the
/// attacks aim at. Servers (HTTP, TLS with a test CA, raw TCP, UDP echo, DNS) run in this
/// process on sockets made inside those namespaces, and record everything that reaches them —
/// the host oracle of the network tests. Nothing here can send a packet off the machine.
/// </summary>
public sealed class TestWorld : IAsyncDisposable
{
    /// <summary>allowed.test, www.allowed.test, db.allowed.test.</summary>
    public static readonly IPAddress Allowed = IPAddress.Parse("44.1.2.3");
    /// <summary>other.test: a public host no rule allows.</summary>
    public static readonly IPAddress Other = IPAddress.Parse("44.1.2.4");
    /// <summary>evil.test: the attacker's server (an /etc/hosts spoof or SNI mismatch would land here).</summary>
    public static readonly IPAddress Evil = IPAddress.Parse("44.1.2.5");
    /// <summary>A public UDP/TCP echo host that CIDR rules name.</summary>
    public static readonly IPAddress Echo = IPAddress.Parse("44.1.3.7");
    /// <summary>The test's DNS server (the one Moat's resolver asks).</summary>
    public static readonly IPAddress Dns = IPAddress.Parse("44.1.2.53");
    /// <summary>Private hosts.</summary>
    public static readonly IPAddress[] Private = [IPAddress.Parse("10.1.2.3"), IPAddress.Parse("192.168.7.7"), IPAddress.Parse("172.16.5.5")];
    /// <summary>Cloud metadata services: AWS/GCP/Azure IMDS, Alibaba, Azure wire server.</summary>
    public static readonly IPAddress[] Metadata = [IPAddress.Parse("169.254.169.254"), IPAddress.Parse("100.100.100.200"), IPAddress.Parse("168.63.129.16")];

    private readonly List<string> _namespaces = [];
    private readonly List<IAsyncDisposable> _servers = [];

    private TestWorld(string prefix) => Prefix = prefix;

    /// <summary>Prefix of every namespace of this world.</summary>
    public string Prefix { get; }

    /// <summary>Moat's uplink.</summary>
    public string WorldNamespace => Prefix + "-world";

    /// <summary>The world's own address on the public link (an address of "the host", as sandboxes would see it).</summary>
    public static readonly IPAddress WorldAddress = IPAddress.Parse("172.31.1.1");

    /// <summary>The test CA's certificate (PEM), for clients inside sandboxes.</summary>
    public string CaPem { get; private set; } = "";

    /// <summary>Servers by name.</summary>
    public Dictionary<string, RecordingServer> Servers { get; } = [];

    /// <summary>The DNS server.</summary>
    public TestDnsServer DnsServer { get; private set; } = null!;

    /// <summary>Builds the world and starts its servers.</summary>
    public static async Task<TestWorld> CreateAsync()
    {
        var world = new TestWorld("mtw" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3)));
        try
        {
            await world.BuildAsync();
        }
        catch
        {
            await world.DisposeAsync();
            throw;
        }
        return world;
    }

    private async Task BuildAsync()
    {
        await AddNamespaceAsync(WorldNamespace);
        await IpAsync("-n", WorldNamespace, "link", "set", "lo", "up");
        int link = 1;
        async Task<string> HostAsync(string role, IEnumerable<IPAddress> addresses)
        {
            string ns = $"{Prefix}-{role}";
            await AddNamespaceAsync(ns);
            string here = $"172.31.{link}.1", there = $"172.31.{link}.2", w = $"w{role}";
            await IpAsync("-n", WorldNamespace, "link", "add", w, "type", "veth", "peer", "name", "eth0", "netns", ns);
            await IpAsync("-n", WorldNamespace, "addr", "add", $"{here}/30", "dev", w);
            await IpAsync("-n", WorldNamespace, "link", "set", w, "up");
            await IpAsync("-n", ns, "link", "set", "lo", "up");
            await IpAsync("-n", ns, "addr", "add", $"{there}/30", "dev", "eth0");
            foreach (var a in addresses)
            {
                await IpAsync("-n", ns, "addr", "add", $"{a}/32", "dev", "eth0");
                await IpAsync("-n", WorldNamespace, "route", "add", $"{a}/32", "via", there, "dev", w);
            }
            await IpAsync("-n", ns, "link", "set", "eth0", "up");
            await IpAsync("-n", ns, "route", "add", "default", "via", here, "dev", "eth0");
            link++;
            return ns;
        }
        var pub = await HostAsync("pub", [Allowed, Other, Evil, Echo, Dns]);
        var priv = await HostAsync("priv", Private);
        var meta = await HostAsync("meta", Metadata);

        var (ca, caPem) = MakeCa();
        CaPem = caPem;
        var cert = MakeLeaf(ca, ["allowed.test", "*.allowed.test", "other.test", "evil.test", "rebind.test", "meta.test", "mixed.test"]);

        using (var ns = NetworkNamespace.Open(pub))
        {
            Start("allowed-http", ns, Allowed, 80, RecordingServer.Mode.Http, null);
            Start("allowed-https", ns, Allowed, 443, RecordingServer.Mode.Http, cert);
            Start("allowed-ssh", ns, Allowed, 22, RecordingServer.Mode.Echo, null);
            Start("allowed-db", ns, Allowed, 5432, RecordingServer.Mode.Banner, null);
            Start("allowed-udp", ns, Allowed, 443, RecordingServer.Mode.UdpEcho, null);
            Start("other-http", ns, Other, 80, RecordingServer.Mode.Http, null);
            Start("other-https", ns, Other, 443, RecordingServer.Mode.Http, cert);
            Start("evil-http", ns, Evil, 80, RecordingServer.Mode.Http, null);
            Start("evil-https", ns, Evil, 443, RecordingServer.Mode.Http, cert);
            Start("evil-smtp", ns, Evil, 25, RecordingServer.Mode.Banner, null);
            Start("echo-tcp", ns, Echo, 7, RecordingServer.Mode.Echo, null);
            Start("echo-udp", ns, Echo, 7, RecordingServer.Mode.UdpEcho, null);
            Start("evil-dns", ns, Evil, 53, RecordingServer.Mode.UdpEcho, null);
            DnsServer = new TestDnsServer(ns, Dns, new Dictionary<string, IPAddress[]>
            {
                ["allowed.test"] = [Allowed],
                ["www.allowed.test"] = [Allowed],
                ["db.allowed.test"] = [Allowed],
                ["other.test"] = [Other],
                ["evil.test"] = [Evil],
                ["rebind.test"] = [Private[0]],
                ["meta.test"] = [Metadata[0]],
                ["mixed.test"] = [Private[0], Allowed],
                ["echo.test"] = [Echo],
            });
            _servers.Add(DnsServer);
        }
        using (var ns = NetworkNamespace.Open(priv))
        {
            for (int i = 0; i < Private.Length; i++)
                Start($"private-{i}", ns, Private[i], 80, RecordingServer.Mode.Http, null);
        }
        using (var ns = NetworkNamespace.Open(meta))
        {
            for (int i = 0; i < Metadata.Length; i++)
                Start($"metadata-{i}", ns, Metadata[i], 80, RecordingServer.Mode.Http, null);
        }
        // A service on the uplink's own address: "the host" as far as a sandbox can tell.
        using (var ns = NetworkNamespace.Open(WorldNamespace))
            Start("world-self", ns, IPAddress.Any, 8081, RecordingServer.Mode.Http, null);
    }

    private void Start(string name, NetworkNamespace ns, IPAddress address, int port, RecordingServer.Mode mode, X509Certificate2? certificate)
    {
        var server = RecordingServer.Start(name, ns, address, port, mode, certificate);
        Servers[name] = server;
        _servers.Add(server);
    }

    /// <summary>Servers that must never have been reached (everything but the allowed ones).</summary>
    public IEnumerable<RecordingServer> Forbidden(params string[] except) => Servers.Values.Where(s => !except.Contains(s.Name) && !s.Name.StartsWith("allowed", StringComparison.Ordinal));

    /// <summary>Forgets what servers saw so far.</summary>
    public void ResetRecords()
    {
        foreach (var s in Servers.Values)
            s.Reset();
        DnsServer.Reset();
    }

    private async Task AddNamespaceAsync(string name)
    {
        _namespaces.Add(name);
        await IpAsync("netns", "add", name);
    }

    internal static async Task IpAsync(params string[] args)
    {
        var psi = new ProcessStartInfo("ip") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"ip {string.Join(' ', args)}: {err.Trim()}");
    }

    private static (X509Certificate2 Ca, string Pem) MakeCa()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=Moat Test CA", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var ca = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        return (ca, ca.ExportCertificatePem());
    }

    private static X509Certificate2 MakeLeaf(X509Certificate2 ca, string[] names)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=" + names[0], key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        foreach (var n in names)
            san.AddDnsName(n);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        using var caKey = ca.GetECDsaPrivateKey()!;
        var generator = X509SignatureGenerator.CreateForECDsa(caKey);
        var serial = RandomNumberGenerator.GetBytes(12);
        using var leaf = request.Create(ca.SubjectName, generator, DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(29), serial);
        using var withKey = leaf.CopyWithPrivateKey(key);
        // SslStream on Linux wants a certificate whose key it can use: round-trip through PKCS#12.
        return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pfx), null);
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        foreach (var s in _servers)
            await s.DisposeAsync();
        foreach (var ns in Enumerable.Reverse(_namespaces))
        {
            try
            {
                await IpAsync("netns", "del", ns);
            }
            catch (InvalidOperationException)
            {
            }
        }
    }
}
