using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Moat.Core.Host;
using Moat.Core.Networking;
using Moat.Networking.Plumbing;
using Moat.Networking.Policy;

namespace Moat.Networking.Egress;

/// <summary>
/// The egress proxy for UDP. Datagrams a sandbox sends (other than DNS to Moat's resolver) are
/// diverted to a transparent socket that learns where each was going. UDP is denied unless the
/// policy allows the address (a CIDR or address rule, or mode open) and the address is not always
/// denied. An allowed flow gets its own pair of sockets: one to the destination, made in the
/// uplink, and one in the gateway that answers the sandbox from the destination's address. A
/// flow is one connection attempt in the log, ended after it goes idle.
/// </summary>
internal sealed partial class UdpRelay : IDisposable
{
    private readonly NetworkOptions _options;
    private readonly AddressGuard _guard;
    private readonly EgressLog _log;
    private readonly Uplink _uplink;
    private readonly Func<IPAddress, AttachedSandbox?> _lookup;
    private readonly Func<bool> _tryOpenGlobal;
    private readonly Action _closedGlobal;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<(IPEndPoint From, IPEndPoint To), UdpFlow> _flows = new();
    private readonly ConcurrentDictionary<(IPEndPoint From, IPEndPoint To), long> _recentlyDenied = new();
    private readonly CancellationTokenSource _stop = new();
    private NetworkNamespace? _gateway;
    private Socket? _listener;
    private Thread? _thread;
    private Timer? _sweeper;

    public UdpRelay(NetworkOptions options, AddressGuard guard, EgressLog log, Uplink uplink, Func<IPAddress, AttachedSandbox?> lookup, Func<bool> tryOpenGlobal, Action closedGlobal, ILogger logger)
    {
        _options = options;
        _guard = guard;
        _log = log;
        _uplink = uplink;
        _lookup = lookup;
        _tryOpenGlobal = tryOpenGlobal;
        _closedGlobal = closedGlobal;
        _logger = logger;
    }

    /// <summary>Opens the transparent socket in the gateway namespace and starts relaying.</summary>
    public void Start(NetworkNamespace gateway)
    {
        _gateway = gateway;
        _listener = gateway.Run(() =>
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            s.SetRawSocketOption(0, 19 /* IP_TRANSPARENT */, BitConverter.GetBytes(1));
            s.SetRawSocketOption(0, 20 /* IP_RECVORIGDSTADDR */, BitConverter.GetBytes(1));
            s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            s.Bind(new IPEndPoint(IPAddress.Any, _options.UdpPort));
            s.ReceiveTimeout = 500;
            return s;
        });
        _thread = new Thread(ReceiveLoop) { IsBackground = true, Name = "moat-udp-relay" };
        _thread.Start();
        _sweeper = new Timer(_ => Sweep(), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
    }

    private void ReceiveLoop()
    {
        var buffer = new byte[65536];
        while (!_stop.IsCancellationRequested)
        {
            int n;
            IPEndPoint? from, to;
            try
            {
                n = Linux.ReceiveWithOriginalDestination(_listener!, buffer, out from, out to);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                if (_stop.IsCancellationRequested)
                    return;
                continue;
            }
            if (n < 0 || from is null || to is null)
                continue;
            try
            {
                Handle(from, to, buffer.AsSpan(0, n));
            }
            catch (Exception ex)
            {
                LogFlowFailed(_logger, from.ToString(), to.ToString(), ex);
            }
        }
    }

    private void Handle(IPEndPoint from, IPEndPoint to, ReadOnlySpan<byte> payload)
    {
        var key = (from, to);
        if (_flows.TryGetValue(key, out var existing))
        {
            existing.FromSandbox(payload);
            return;
        }
        if (_recentlyDenied.TryGetValue(key, out long until) && until > Environment.TickCount64)
            return; // already logged: one entry per refused flow, not per datagram
        var state = _lookup(from.Address);
        if (state is null)
            return;
        string? rule = state.Policy.AllowsUdp(to.Address, to.Port);
        string? denial = rule is null ? "not_allowed" : _guard.Check(to.Address, to.Port);
        if (denial is null && !state.TryOpen(_options.MaxConnectionsPerSandbox))
            denial = "connection_limit";
        else if (denial is null && !_tryOpenGlobal())
        {
            state.Closed();
            denial = "node_connection_limit";
        }
        if (denial is not null)
        {
            _recentlyDenied[key] = Environment.TickCount64 + _options.UdpIdleSeconds * 1000L;
            _log.Append(state.Id, new EgressEvent
            {
                Time = DateTimeOffset.UtcNow,
                Protocol = "udp",
                Verdict = "denied",
                Reason = denial,
                Name = state.PinnedNames(to.Address).FirstOrDefault(),
                Address = to.Address.ToString(),
                Port = to.Port,
            });
            return;
        }
        UdpFlow flow;
        try
        {
            flow = new UdpFlow(this, state, rule!, from, to);
        }
        catch (SocketException ex)
        {
            state.Closed();
            _closedGlobal();
            _log.Append(state.Id, new EgressEvent { Time = DateTimeOffset.UtcNow, Protocol = "udp", Verdict = "allowed", Reason = rule, Address = to.Address.ToString(), Port = to.Port, End = "socket_failed: " + ex.SocketErrorCode });
            return;
        }
        _flows[key] = flow;
        state.Track(flow);
        flow.FromSandbox(payload);
        flow.Start();
    }

    private void Sweep()
    {
        long now = Environment.TickCount64;
        foreach (var (key, flow) in _flows)
        {
            if (flow.IdleSince + _options.UdpIdleSeconds * 1000L <= now)
                flow.Close("idle");
        }
        foreach (var (key, until) in _recentlyDenied)
        {
            if (until <= now)
                _recentlyDenied.TryRemove(key, out _);
        }
    }

    /// <summary>Ends every flow of a sandbox being detached.</summary>
    public void Forget(AttachedSandbox state)
    {
        foreach (var (key, flow) in _flows)
        {
            if (flow.State == state)
                flow.Close("sandbox_detached");
        }
        foreach (var key in _recentlyDenied.Keys)
        {
            if (key.From.Address.Equals(state.Lease.Address))
                _recentlyDenied.TryRemove(key, out _);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _stop.Cancel();
        _sweeper?.Dispose();
        foreach (var flow in _flows.Values)
            flow.Close("proxy_stopped");
        _listener?.Dispose();
        _thread?.Join(TimeSpan.FromSeconds(2));
        _stop.Dispose();
    }

    /// <summary>One allowed UDP flow: sandbox address:port to destination address:port.</summary>
    private sealed class UdpFlow : IProxiedFlow
    {
        private readonly UdpRelay _relay;
        private readonly string _rule;
        private readonly IPEndPoint _sandbox;
        private readonly IPEndPoint _destination;
        private readonly Socket _upstream;
        private readonly Socket _answer;
        private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private long _out;
        private long _in;
        private int _closed;

        public UdpFlow(UdpRelay relay, AttachedSandbox state, string rule, IPEndPoint sandbox, IPEndPoint destination)
        {
            _relay = relay;
            State = state;
            _rule = rule;
            _sandbox = sandbox;
            _destination = destination;
            _upstream = relay._uplink.CreateSocket(destination.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
            try
            {
                _upstream.Connect(destination);
                _answer = relay._gateway!.Run(() =>
                {
                    // Speaks to the sandbox as the destination; also takes the flow's later datagrams.
                    var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                    s.SetRawSocketOption(0, 19 /* IP_TRANSPARENT */, BitConverter.GetBytes(1));
                    s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                    s.Bind(destination);
                    s.Connect(sandbox);
                    return s;
                });
            }
            catch
            {
                _upstream.Dispose();
                throw;
            }
            IdleSince = Environment.TickCount64;
        }

        public AttachedSandbox State { get; }

        public long IdleSince { get; private set; }

        public string Protocol => "udp";

        public string? Name => null;

        public IPAddress Address => _destination.Address;

        public int Port => _destination.Port;

        public void Start()
        {
            _ = PumpAsync(_answer, _upstream, toDestination: true);
            _ = PumpAsync(_upstream, _answer, toDestination: false);
        }

        public void FromSandbox(ReadOnlySpan<byte> payload)
        {
            if (State.Egress is { } bucket && !bucket.TryTake(payload.Length))
                return; // over its bandwidth: dropped, as a router would
            try
            {
                _upstream.Send(payload);
                Interlocked.Add(ref _out, payload.Length);
                IdleSince = Environment.TickCount64;
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
            }
        }

        private async Task PumpAsync(Socket from, Socket to, bool toDestination)
        {
            var buffer = new byte[65536];
            try
            {
                while (Volatile.Read(ref _closed) == 0)
                {
                    int n = await from.ReceiveAsync(buffer, SocketFlags.None, _relay._stop.Token).ConfigureAwait(false);
                    var bucket = toDestination ? State.Egress : State.Ingress;
                    if (bucket is not null && !bucket.TryTake(n))
                        continue;
                    try
                    {
                        await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _relay._stop.Token).ConfigureAwait(false);
                    }
                    catch (SocketException)
                    {
                        continue; // ICMP errors surface here; UDP carries on
                    }
                    if (toDestination)
                        Interlocked.Add(ref _out, n);
                    else
                        Interlocked.Add(ref _in, n);
                    IdleSince = Environment.TickCount64;
                }
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionRefused)
            {
                // An ICMP port unreachable from the destination: keep the flow until it idles.
                if (Volatile.Read(ref _closed) == 0)
                    _ = PumpAsync(from, to, toDestination);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException or OperationCanceledException)
            {
            }
        }

        public void Close(string why)
        {
            if (Interlocked.Exchange(ref _closed, 1) != 0)
                return;
            _relay._flows.TryRemove((_sandbox, _destination), out _);
            State.Untrack(this);
            _upstream.Dispose();
            _answer.Dispose();
            State.Closed();
            _relay._closedGlobal();
            _relay._log.Append(State.Id, new EgressEvent
            {
                Time = _started,
                Protocol = "udp",
                Verdict = "allowed",
                Reason = _rule,
                Name = State.PinnedNames(_destination.Address).FirstOrDefault(),
                Address = _destination.Address.ToString(),
                Port = _destination.Port,
                BytesOut = Interlocked.Read(ref _out),
                BytesIn = Interlocked.Read(ref _in),
                DurationMs = Math.Round(_clock.Elapsed.TotalMilliseconds, 3),
                End = why,
            });
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "UDP relay: flow {From} -> {To} failed")]
    private static partial void LogFlowFailed(ILogger logger, string from, string to, Exception exception);
}
