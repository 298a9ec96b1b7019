using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Errors;
using Moat.Core.Host;
using Moat.Core.Networking;
using Moat.Core.Sandboxes;
using Moat.Networking.Dns;
using Moat.Networking.Egress;
using Moat.Networking.Inbound;
using Moat.Networking.Plumbing;
using Moat.Networking.Policy;

namespace Moat.Networking;

/// <summary>
/// The node's sandbox networking. Started on first use: the gateway namespace with its firewall
/// table, the egress proxy (TCP), the UDP relay and the sandbox resolver listening in it, Moat's
/// upstream resolver and the uplink they use. Each attached sandbox then has a slot of the pool,
/// a namespace, a veth pair into the gateway, its chain of rules and its policy object.
/// </summary>
public sealed partial class NetworkController : INetworkController, IAsyncDisposable
{
    private static readonly IReadOnlyList<NetworkMode> AllModes = [NetworkMode.None, NetworkMode.Allow, NetworkMode.Open];
    private static readonly IReadOnlyList<NetworkMode> NoneOnly = [NetworkMode.None];

    private readonly NetworkOptions _options;
    private readonly string _directory;
    private readonly string _owner;
    private readonly LinkPlumbing _plumbing;
    private readonly InboundAccess _inbound;
    private readonly ILogger _logger;
    private readonly ILoggerFactory _loggers;
    private readonly ConcurrentDictionary<string, AttachedSandbox> _states = new();
    private readonly ConcurrentDictionary<IPAddress, AttachedSandbox> _byAddress = new();
    private readonly SemaphoreSlim _startLock = new(1, 1);
    private readonly Lazy<EgressLog> _log;
    private readonly Lazy<AddressPool> _pool;
    private AddressGuard? _guard;
    private Uplink? _uplink;
    private UpstreamResolver? _resolver;
    private NetworkNamespace? _gateway;
    private EgressProxy? _proxy;
    private UdpRelay? _udp;
    private SandboxDnsServer? _dns;
    private Timer? _refresh;
    private volatile bool _started;
    private int _openFlows;
    private int _disposed;

    /// <summary>Creates the controller; nothing is made until a sandbox needs it.</summary>
    public NetworkController(IOptions<NetworkOptions> options, IOptions<SandboxManagerOptions> manager, ProcessRunner runner, InboundAccess inbound, ILoggerFactory loggers)
    {
        _options = options.Value;
        _directory = Path.Combine(manager.Value.DataDirectory, "network");
        _owner = manager.Value.Owner;
        _plumbing = new LinkPlumbing(runner, new Nftables(runner));
        _inbound = inbound;
        _loggers = loggers;
        _logger = loggers.CreateLogger<NetworkController>();
        GatewayNamespace = string.IsNullOrEmpty(_options.GatewayNamespace) ? DefaultGatewayName(manager.Value.DataDirectory, _owner) : _options.GatewayNamespace;
        _log = new Lazy<EgressLog>(() => new EgressLog(Path.Combine(_directory, "logs"), _options.MaxLogBytesPerSandbox));
        _pool = new Lazy<AddressPool>(() => new AddressPool(IPNetwork.Parse(_options.Pool), Path.Combine(_directory, GatewayNamespace + ".leases.json")));
        Problem = FindProblem(_options);
    }

    /// <summary>The gateway namespace's name.</summary>
    public string GatewayNamespace { get; }

    /// <inheritdoc />
    public IReadOnlyList<NetworkMode> Modes => Problem is null ? AllModes : NoneOnly;

    /// <inheritdoc />
    public string? Problem { get; }

    /// <summary>The connection log (shared by the proxy, the relay and the resolver).</summary>
    public EgressLog Log => _log.Value;

    /// <inheritdoc />
    public event Action<string, EgressEvent>? EgressRecorded
    {
        add => Log.Recorded += value;
        remove => Log.Recorded -= value;
    }

    /// <summary>Moat's upstream resolver (after the first attach).</summary>
    internal UpstreamResolver? Resolver => _resolver;

    /// <summary>The address of an attached sandbox.</summary>
    public IPAddress? AddressOf(string sandboxId) => _states.TryGetValue(sandboxId, out var s) ? s.Lease.Address : null;

    private static string DefaultGatewayName(string dataDirectory, string owner)
    {
        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(Path.GetFullPath(dataDirectory))))[..8];
        var parts = owner.Split(':');
        return parts.Length == 3 && parts[0] == "run" ? $"moatgw-{hash}-{parts[1]}" : $"moatgw-{hash}";
    }

    private static string? FindProblem(NetworkOptions options)
    {
        if (!options.Enabled)
            return "disabled by the operator (Moat:Network:Enabled=false)";
        if (Environment.UserName != "root")
            return "sandbox networking needs moat to run as root";
        foreach (var program in new[] { "ip", "nft", "nsenter" })
        {
            if (!OnPath(program))
                return $"{program} is not installed (Debian: apt-get install iproute2 nftables util-linux)";
        }
        if (!string.IsNullOrEmpty(options.UplinkNamespace) && !NetworkNamespace.Exists(options.UplinkNamespace))
            return $"the uplink namespace {options.UplinkNamespace} does not exist (Moat:Network:UplinkNamespace)";
        try
        {
            var pool = IPNetwork.Parse(options.Pool);
            if (pool.BaseAddress.AddressFamily != AddressFamily.InterNetwork || pool.PrefixLength > 29)
                return $"Moat:Network:Pool must be an IPv4 block of /29 or larger, got {options.Pool}";
        }
        catch (FormatException)
        {
            return $"Moat:Network:Pool '{options.Pool}' is not a CIDR block";
        }
        return null;
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin").Split(':').Append("/usr/sbin").Append("/sbin").Any(dir => File.Exists(Path.Combine(dir, program)));

    private async Task EnsureStartedAsync(CancellationToken cancellationToken)
    {
        if (_started)
            return;
        if (Problem is { } problem)
            throw new MoatException(ErrorKind.Unavailable, "network_unavailable", $"sandbox networking is not available on this server: {problem}");
        await _startLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_started)
                return;
            var pool = _pool.Value;
            _guard = new AddressGuard(_options, pool.Block);
            _uplink = new Uplink(_options);
            Directory.CreateDirectory(Path.Combine(_directory, "gateways"));
            await File.WriteAllTextAsync(Path.Combine(_directory, "gateways", GatewayNamespace), _owner, cancellationToken).ConfigureAwait(false);
            await _plumbing.EnsureGatewayAsync(GatewayNamespace, cancellationToken).ConfigureAwait(false);
            _gateway = NetworkNamespace.Open(GatewayNamespace);
            _resolver = new UpstreamResolver(_options, _uplink, _loggers.CreateLogger<UpstreamResolver>());
            RefreshHostAddresses();
            _refresh = new Timer(_ => RefreshHostAddresses(), null, TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(30));
            _proxy = new EgressProxy(_options, _guard, _resolver, Log, _uplink, Lookup, TryOpenGlobal, ClosedGlobal, _loggers.CreateLogger<EgressProxy>());
            _proxy.Start(_gateway);
            _udp = new UdpRelay(_options, _guard, Log, _uplink, Lookup, TryOpenGlobal, ClosedGlobal, _loggers.CreateLogger<UdpRelay>());
            _udp.Start(_gateway);
            _dns = new SandboxDnsServer(_resolver, _guard, Log, Lookup, _loggers.CreateLogger<SandboxDnsServer>());
            _dns.Start(_gateway);
            _started = true;
            LogStarted(_logger, GatewayNamespace, _uplink.Description, string.Join(", ", _resolver.Servers));
        }
        catch (Exception ex) when (ex is not MoatException)
        {
            throw new MoatException(ErrorKind.Unavailable, "network_unavailable", $"could not set up sandbox networking: {ex.Message}", ex);
        }
        finally
        {
            _startLock.Release();
        }
    }

    private AttachedSandbox? Lookup(IPAddress address) => _byAddress.TryGetValue(address, out var state) ? state : null;

    private bool TryOpenGlobal()
    {
        if (Interlocked.Increment(ref _openFlows) <= _options.MaxConnections)
            return true;
        Interlocked.Decrement(ref _openFlows);
        return false;
    }

    private void ClosedGlobal() => Interlocked.Decrement(ref _openFlows);

    private void RefreshHostAddresses()
    {
        try
        {
            // This host's addresses, and the uplink's when it is another namespace: never destinations.
            var addresses = Uplink.Addresses().Concat(_uplink!.OwnAddresses()).ToList();
            _guard!.SetHostAddresses(addresses);
        }
        catch (Exception ex)
        {
            LogRefreshFailed(_logger, ex);
        }
    }

    /// <inheritdoc />
    public async Task<NetworkAttachment?> AttachAsync(string sandboxId, NetworkPolicy policy, CancellationToken cancellationToken)
    {
        var network = SandboxNetworks.For(policy);
        if (!network.NeedsInterface)
            return null;
        await EnsureStartedAsync(cancellationToken).ConfigureAwait(false);
        return await CreateLinkAsync(sandboxId, null, network, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public async Task<NetworkAttachment> AttachRunningAsync(string sandboxId, int pid, NetworkPolicy policy, CancellationToken cancellationToken)
    {
        await EnsureStartedAsync(cancellationToken).ConfigureAwait(false);
        if (_states.ContainsKey(sandboxId))
            throw new MoatException(ErrorKind.Conflict, "network_attached", $"sandbox {sandboxId} already has a network interface");
        return await CreateLinkAsync(sandboxId, pid, SandboxNetworks.For(policy), cancellationToken).ConfigureAwait(false);
    }

    private async Task<NetworkAttachment> CreateLinkAsync(string sandboxId, int? pid, ISandboxNetwork network, CancellationToken cancellationToken)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        // The slot is written down before anything exists, so a crash leaves nothing unaccounted for.
        var lease = _pool.Value.Allocate(sandboxId);
        try
        {
            await _plumbing.CreateLinkAsync(GatewayNamespace, sandboxId, pid, lease, _options.ProxyPort, _options.UdpPort, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            try
            {
                await _plumbing.DeleteLinkAsync(GatewayNamespace, sandboxId, lease, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception cleanup)
            {
                LogCleanupFailed(_logger, sandboxId, cleanup);
            }
            _pool.Value.Release(sandboxId);
            if (ex is MoatException { Kind: not ErrorKind.Internal })
                throw;
            throw new MoatException(ErrorKind.Internal, "network_attach_failed", $"could not give sandbox {sandboxId} its network: {ex.Message}", ex);
        }
        Register(new AttachedSandbox(sandboxId, lease, network, _options));
        LogAttached(_logger, sandboxId, lease.Address.ToString(), network.Policy.Mode.ToString().ToLowerInvariant(), clock.Elapsed.TotalMilliseconds);
        return AttachmentOf(sandboxId, lease);
    }

    private static NetworkAttachment AttachmentOf(string sandboxId, Lease lease) => new()
    {
        NamespacePath = NetworkNamespace.PathOf(LinkPlumbing.SandboxNamespace(sandboxId)),
        Address = lease.Address,
        Gateway = lease.Gateway,
        Dns = lease.Gateway,
    };

    private void Register(AttachedSandbox state)
    {
        _states[state.Id] = state;
        _byAddress[state.Lease.Address] = state;
    }

    /// <inheritdoc />
    public async Task<TapDevice> CreateTapAsync(string sandboxId, CancellationToken cancellationToken)
    {
        if (!_states.TryGetValue(sandboxId, out var state))
            throw new MoatException(ErrorKind.Conflict, "network_not_attached", $"sandbox {sandboxId} has no network link to put a tap device on");
        await _plumbing.CreateTapAsync(sandboxId, state.Lease, cancellationToken).ConfigureAwait(false);
        return new TapDevice
        {
            Name = "tap0",
            NamespacePath = NetworkNamespace.PathOf(LinkPlumbing.SandboxNamespace(sandboxId)),
            Mac = LinkPlumbing.GuestMac(state.Lease),
            Address = state.Lease.Address,
            Gateway = state.Lease.Gateway,
            Dns = state.Lease.Gateway,
        };
    }

    /// <inheritdoc />
    public bool IsAttached(string sandboxId) => _states.ContainsKey(sandboxId);

    /// <inheritdoc />
    public Task SetPolicyAsync(string sandboxId, NetworkPolicy policy, CancellationToken cancellationToken)
    {
        var network = SandboxNetworks.For(policy);
        if (!_states.TryGetValue(sandboxId, out var state))
        {
            if (!network.NeedsInterface)
                return Task.CompletedTask;
            throw new MoatException(ErrorKind.Conflict, "network_not_attached", $"sandbox {sandboxId} was created without a network interface; it can only use mode none");
        }
        state.Policy = network;
        int closed = 0;
        var flows = state.Flows;
        foreach (var flow in flows)
        {
            bool allowed = flow.Protocol == "udp"
                ? network.AllowsUdp(flow.Address, flow.Port) is not null
                : (flow.Name is { } name && network.AllowsName(name, flow.Port) is not null) || network.AllowsAddress(flow.Address, flow.Port) is not null;
            if (!allowed)
            {
                flow.Close("policy_change");
                closed++;
            }
        }
        LogPolicyChanged(_logger, sandboxId, policy.Mode.ToString().ToLowerInvariant(), closed, flows.Count);
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public async Task RestoreAsync(string sandboxId, NetworkPolicy policy, CancellationToken cancellationToken)
    {
        if (Problem is not null || _states.ContainsKey(sandboxId) || !File.Exists(Path.Combine(_directory, GatewayNamespace + ".leases.json")))
            return;
        if (_pool.Value.Find(sandboxId) is not { } lease)
            return;
        await EnsureStartedAsync(cancellationToken).ConfigureAwait(false);
        await _plumbing.RestoreRulesAsync(GatewayNamespace, lease, _options.ProxyPort, _options.UdpPort, cancellationToken).ConfigureAwait(false);
        Register(new AttachedSandbox(sandboxId, lease, SandboxNetworks.For(policy), _options));
        LogRestored(_logger, sandboxId, lease.Address.ToString());
    }

    /// <inheritdoc />
    public async Task DetachAsync(string sandboxId, CancellationToken cancellationToken)
    {
        if (_states.TryRemove(sandboxId, out var state))
        {
            _byAddress.TryRemove(new KeyValuePair<IPAddress, AttachedSandbox>(state.Lease.Address, state));
            await state.Lifetime.CancelAsync().ConfigureAwait(false);
            foreach (var flow in state.Flows)
                flow.Close("sandbox_detached");
            _udp?.Forget(state);
        }
        _inbound.Forget(sandboxId);
        var lease = HasLeases() ? _pool.Value.Find(sandboxId) : null;
        if (lease is null && !NetworkNamespace.Exists(LinkPlumbing.SandboxNamespace(sandboxId)))
            return;
        await _plumbing.DeleteLinkAsync(GatewayNamespace, sandboxId, lease, cancellationToken).ConfigureAwait(false);
        if (lease is not null)
            _pool.Value.Release(sandboxId);
        if (_log.IsValueCreated)
            _log.Value.Close(sandboxId);
        LogDetached(_logger, sandboxId);
    }

    private bool HasLeases() => _pool.IsValueCreated || File.Exists(Path.Combine(_directory, GatewayNamespace + ".leases.json"));

    /// <inheritdoc />
    public async Task PruneAsync(IReadOnlySet<string> alive, CancellationToken cancellationToken)
    {
        if (Problem is not null)
            return;
        if (HasLeases())
        {
            foreach (var id in _pool.Value.Leases.Keys.Where(id => !alive.Contains(id)).ToList())
            {
                LogPruned(_logger, id);
                await DetachAsync(id, cancellationToken).ConfigureAwait(false);
            }
        }
        // Gateways of one-shot runs that died, and ours if nothing uses it.
        var gateways = Path.Combine(_directory, "gateways");
        if (Directory.Exists(gateways))
        {
            foreach (var marker in Directory.EnumerateFiles(gateways))
            {
                var name = Path.GetFileName(marker);
                if (name == GatewayNamespace)
                    continue;
                string owner;
                try
                {
                    owner = (await File.ReadAllTextAsync(marker, cancellationToken).ConfigureAwait(false)).Trim();
                }
                catch (IOException)
                {
                    continue;
                }
                if (owner == "serve" || SandboxManager.OwnerAlive(owner))
                    continue;
                LogPrunedGateway(_logger, name, owner);
                await RemoveGatewayAsync(name, cancellationToken).ConfigureAwait(false);
            }
        }
        if (!_started && (!HasLeases() || _pool.Value.Leases.Count == 0))
            await RemoveGatewayAsync(GatewayNamespace, cancellationToken).ConfigureAwait(false);
        if (_log.IsValueCreated || Directory.Exists(Path.Combine(_directory, "logs")))
            Log.Expire(TimeSpan.FromHours(_options.LogRetentionHours));
    }

    private async Task RemoveGatewayAsync(string name, CancellationToken cancellationToken)
    {
        await _plumbing.DeleteNamespaceAsync(name, cancellationToken).ConfigureAwait(false);
        foreach (var file in new[] { Path.Combine(_directory, "gateways", name), Path.Combine(_directory, name + ".leases.json") })
        {
            try
            {
                File.Delete(file);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <inheritdoc />
    public Task<EgressLogPage> ReadLogAsync(string sandboxId, long after, int limit, CancellationToken cancellationToken) =>
        Log.ReadAsync(sandboxId, after, Math.Clamp(limit, 1, 10_000), cancellationToken);

    /// <inheritdoc />
    public async Task<Stream> ConnectInboundAsync(InboundTarget target, int port, CancellationToken cancellationToken)
    {
        var timeout = TimeSpan.FromSeconds(_options.Inbound.ConnectTimeoutSeconds);
        _states.TryGetValue(target.SandboxId, out var state);
        var candidates = new List<(NetworkNamespace Namespace, IPAddress Address)>();
        NetworkNamespace? opened = null;
        try
        {
            if (target.SharesHostKernel)
            {
                // The sandbox uses the host's network stack inside its namespace: its loopback is
                // reachable from a socket made there, whatever address the server bound.
                var path = NetworkNamespace.Exists(LinkPlumbing.SandboxNamespace(target.SandboxId))
                    ? NetworkNamespace.PathOf(LinkPlumbing.SandboxNamespace(target.SandboxId))
                    : target.Pid is { } pid ? $"/proc/{pid}/ns/net" : null;
                if (path is null)
                    throw new MoatException(ErrorKind.Conflict, "port_unreachable", $"sandbox {target.SandboxId} has no network namespace Moat can reach");
                opened = NetworkNamespace.Open(path);
                candidates.Add((opened, IPAddress.Loopback));
                candidates.Add((opened, IPAddress.IPv6Loopback));
            }
            else if (state is not null && _gateway is not null)
            {
                // Its own kernel (gVisor's netstack, a VM's guest) owns its loopback: reach it at its address.
                candidates.Add((_gateway, state.Lease.Address));
            }
            else
            {
                throw new MoatException(ErrorKind.Conflict, "port_unreachable", $"sandbox {target.SandboxId} has no network interface, so its ports cannot be reached on this tier; create it with network mode allow or open");
            }
            SocketError last = SocketError.ConnectionRefused;
            foreach (var (ns, address) in candidates)
            {
                Socket socket;
                try
                {
                    socket = ns.Run(() => new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
                }
                catch (SocketException ex)
                {
                    last = ex.SocketErrorCode;
                    continue;
                }
                socket.NoDelay = true;
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                deadline.CancelAfter(timeout);
                try
                {
                    await socket.ConnectAsync(new IPEndPoint(address, port), deadline.Token).ConfigureAwait(false);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch (SocketException ex)
                {
                    last = ex.SocketErrorCode;
                    socket.Dispose();
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    last = SocketError.TimedOut;
                    socket.Dispose();
                }
            }
            throw new MoatException(ErrorKind.Unavailable, "port_not_listening", last == SocketError.TimedOut
                ? $"port {port} of sandbox {target.SandboxId} did not answer within {timeout.TotalSeconds:0} s"
                : $"nothing listens on port {port} in sandbox {target.SandboxId}");
        }
        finally
        {
            opened?.Dispose();
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        // Registered under two service types, so the container may dispose it twice.
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _refresh?.Dispose();
        foreach (var state in _states.Values)
            await state.Lifetime.CancelAsync().ConfigureAwait(false);
        if (_proxy is not null)
            await _proxy.DisposeAsync().ConfigureAwait(false);
        _udp?.Dispose();
        if (_dns is not null)
            await _dns.DisposeAsync().ConfigureAwait(false);
        _gateway?.Dispose();
        _uplink?.Dispose();
        if (_log.IsValueCreated)
            _log.Value.Dispose();
        // Sandboxes left for a restarted server keep the gateway; otherwise nothing stays behind.
        if (_started && _pool.Value.Leases.Count == 0)
        {
            try
            {
                await RemoveGatewayAsync(GatewayNamespace, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                LogCleanupFailed(_logger, GatewayNamespace, ex);
            }
        }
        _startLock.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox networking started: gateway namespace {Gateway}, uplink {Uplink}, resolvers {Resolvers}")]
    private static partial void LogStarted(ILogger logger, string gateway, string uplink, string resolvers);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Sandbox {SandboxId} attached at {Address} (mode {Mode}) in {Milliseconds:0.0} ms")]
    private static partial void LogAttached(ILogger logger, string sandboxId, string address, string mode, double milliseconds);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} network restored at {Address}")]
    private static partial void LogRestored(ILogger logger, string sandboxId, string address);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Sandbox {SandboxId} detached")]
    private static partial void LogDetached(ILogger logger, string sandboxId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} network policy is now {Mode}; {Closed} of {Open} connections closed")]
    private static partial void LogPolicyChanged(ILogger logger, string sandboxId, string mode, int closed, int open);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Removing the network of sandbox {SandboxId}, which is not alive")]
    private static partial void LogPruned(ILogger logger, string sandboxId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Removing gateway namespace {Gateway} of {Owner}, which is gone")]
    private static partial void LogPrunedGateway(ILogger logger, string gateway, string owner);

    [LoggerMessage(Level = LogLevel.Error, Message = "Cleaning up the network of {SandboxId} failed")]
    private static partial void LogCleanupFailed(ILogger logger, string sandboxId, Exception exception);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not refresh the host's addresses")]
    private static partial void LogRefreshFailed(ILogger logger, Exception exception);
}
