namespace Moat.Networking;

/// <summary>Configuration of sandbox networking (section <c>Moat:Network</c>).</summary>
public sealed class NetworkOptions
{
    /// <summary>Whether modes other than none are offered at all.</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>
    /// Name of the network namespace that holds Moat's end of every sandbox link, its firewall and
    /// its proxy listeners. Empty: <c>moatgw-</c> and a hash of the data directory (plus the pid for
    /// a one-shot <c>moat run</c>). It has no route anywhere: only Moat's proxy leaves it.
    /// </summary>
    public string GatewayNamespace { get; set; } = "";

    /// <summary>
    /// Where Moat's proxy and resolver make their outbound connections: a network namespace (a name
    /// under /run/netns or a path). Empty: the namespace Moat itself runs in (the host's).
    /// </summary>
    public string UplinkNamespace { get; set; } = "";

    /// <summary>Bind outbound connections to this interface of the uplink (SO_BINDTODEVICE); empty: routing decides.</summary>
    public string UplinkInterface { get; set; } = "";

    /// <summary>IPv4 block the sandbox links are cut from, a /30 each (gateway .1, sandbox .2). Private to the gateway namespace.</summary>
    public string Pool { get; set; } = "10.200.0.0/16";

    /// <summary>Upstream DNS servers Moat's resolver asks (address or address:port). Empty: the nameservers of /etc/resolv.conf.</summary>
    public List<string> Resolvers { get; set; } = [];

    /// <summary>More addresses or blocks sandboxes never reach, on top of the built-in private, loopback, link-local, metadata and host addresses.</summary>
    public List<string> Deny { get; set; } = [];

    /// <summary>Ports never reachable in any mode (SMTP by default).</summary>
    public List<int> DeniedPorts { get; set; } = [25, 465, 587];

    /// <summary>TCP connections and UDP flows one sandbox may have open at once.</summary>
    public int MaxConnectionsPerSandbox { get; set; } = 256;

    /// <summary>TCP connections and UDP flows the proxy carries at once for the whole node.</summary>
    public int MaxConnections { get; set; } = 16384;

    /// <summary>Bytes per second one sandbox may send out, all connections together; 0: not shaped.</summary>
    public long EgressBytesPerSecond { get; set; }

    /// <summary>Bytes per second one sandbox may receive, all connections together; 0: not shaped.</summary>
    public long IngressBytesPerSecond { get; set; }

    /// <summary>How long the proxy waits to connect to a destination.</summary>
    public int ConnectTimeoutSeconds { get; set; } = 10;

    /// <summary>How long the proxy waits for a TLS ClientHello or an HTTP request head when it needs the name.</summary>
    public int SniffTimeoutSeconds { get; set; } = 10;

    /// <summary>A UDP flow with no traffic for this long is closed.</summary>
    public int UdpIdleSeconds { get; set; } = 60;

    /// <summary>Port of the transparent TCP listener inside the gateway namespace.</summary>
    public int ProxyPort { get; set; } = 15001;

    /// <summary>Port of the transparent UDP listener inside the gateway namespace.</summary>
    public int UdpPort { get; set; } = 15002;

    /// <summary>Bytes of connection log kept per sandbox; later events are counted as dropped.</summary>
    public long MaxLogBytesPerSandbox { get; set; } = 16 << 20;

    /// <summary>How long the logs of ended sandboxes are kept.</summary>
    public int LogRetentionHours { get; set; } = 24;

    /// <summary>Longest TTL Moat's resolver keeps an answer (and gives sandboxes).</summary>
    public int MaxDnsTtlSeconds { get; set; } = 300;

    /// <summary>Inbound proxy settings.</summary>
    public InboundOptions Inbound { get; set; } = new();
}

/// <summary>Configuration of the inbound proxy (section <c>Moat:Network:Inbound</c>).</summary>
public sealed class InboundOptions
{
    /// <summary>
    /// Domain of the host form: <c>{port}-{sandbox}.{Domain}</c> reaches a sandbox's port
    /// (point a wildcard DNS record at the server). Empty: only the path form
    /// <c>/v1/sandboxes/{id}/ports/{port}/</c>.
    /// </summary>
    public string Domain { get; set; } = "";

    /// <summary>How long the proxy waits for a connection into a sandbox.</summary>
    public int ConnectTimeoutSeconds { get; set; } = 5;
}
