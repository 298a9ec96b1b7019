using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Moat.Core.Networking;
using Moat.Networking.Dns;
using Moat.Networking.Plumbing;
using Moat.Networking.Policy;

namespace Moat.Networking.Egress;

/// <summary>
/// The egress proxy for TCP. Every connection a sandbox opens is diverted by its firewall chain to
/// this transparent listener in the gateway namespace; the listener's accepted socket carries the
/// address the sandbox dialled. The proxy then asks the sandbox's policy what to do:
/// <list type="bullet">
/// <item>an address rule (or mode open): dial that address, if it is not always denied;</item>
/// <item>a domain rule: read the TLS server name or HTTP Host, check it against the rules, resolve it
/// with Moat's resolver, and dial one of <em>its</em> addresses — never the one the sandbox chose
/// unless it is one of them — after the always-denied check on every candidate (no /etc/hosts
/// spoofing, no SNI-vs-IP mismatch, no DNS rebinding). A protocol without a name (a database
/// port named by a rule) goes to the address only if Moat resolved it for the sandbox;</item>
/// <item>anything else: refused with a reset.</item>
/// </list>
/// Every attempt ends in the sandbox's connection log with its bytes and duration.
/// </summary>
internal sealed partial class EgressProxy : IAsyncDisposable
{
    private readonly NetworkOptions _options;
    private readonly AddressGuard _guard;
    private readonly UpstreamResolver _resolver;
    private readonly EgressLog _log;
    private readonly Uplink _uplink;
    private readonly Func<IPAddress, AttachedSandbox?> _lookup;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly Func<bool> _tryOpenGlobal;
    private readonly Action _closedGlobal;
    private Socket? _listener;
    private Task _accepting = Task.CompletedTask;

    public EgressProxy(NetworkOptions options, AddressGuard guard, UpstreamResolver resolver, EgressLog log, Uplink uplink, Func<IPAddress, AttachedSandbox?> lookup, Func<bool> tryOpenGlobal, Action closedGlobal, ILogger logger)
    {
        _options = options;
        _guard = guard;
        _resolver = resolver;
        _log = log;
        _uplink = uplink;
        _lookup = lookup;
        _tryOpenGlobal = tryOpenGlobal;
        _closedGlobal = closedGlobal;
        _logger = logger;
    }

    /// <summary>Opens the transparent listener inside the gateway namespace and starts accepting.</summary>
    public void Start(NetworkNamespace gateway)
    {
        _listener = gateway.Run(() =>
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                s.SetRawSocketOption(0 /* SOL_IP */, 19 /* IP_TRANSPARENT */, BitConverter.GetBytes(1));
                s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                s.Bind(new IPEndPoint(IPAddress.Any, _options.ProxyPort));
                s.Listen(4096);
                return s;
            }
            catch
            {
                s.Dispose();
                throw;
            }
        });
        _accepting = AcceptLoopAsync(_listener);
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException ex)
            {
                LogAcceptFailed(_logger, ex.Message);
                await Task.Delay(10).ConfigureAwait(false);
                continue;
            }
            _ = HandleAsync(client);
        }
    }

    private async Task HandleAsync(Socket client)
    {
        var started = DateTimeOffset.UtcNow;
        var clock = Stopwatch.StartNew();
        IPEndPoint destination, source;
        try
        {
            destination = Canonical((IPEndPoint)client.LocalEndPoint!);
            source = Canonical((IPEndPoint)client.RemoteEndPoint!);
            client.NoDelay = true;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            client.Dispose();
            return;
        }
        var state = _lookup(source.Address);
        if (state is null)
        {
            // Not from a link Moat knows (a sandbox being detached): nothing to say to it.
            Relay.Reset(client);
            return;
        }
        var attempt = new Attempt(state, started, destination);
        if (!state.TryOpen(_options.MaxConnectionsPerSandbox))
        {
            Deny(attempt, client, "connection_limit");
            return;
        }
        if (!_tryOpenGlobal())
        {
            state.Closed();
            Deny(attempt, client, "node_connection_limit");
            return;
        }
        try
        {
            await ProxyAsync(attempt, client, clock).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            LogProxyFailed(_logger, state.Id, destination.ToString(), ex);
            Relay.Reset(client);
        }
        finally
        {
            state.Closed();
            _closedGlobal();
        }
    }

    private sealed record Attempt(AttachedSandbox State, DateTimeOffset Started, IPEndPoint Destination);

    private async Task ProxyAsync(Attempt attempt, Socket client, Stopwatch clock)
    {
        var state = attempt.State;
        var policy = state.Policy;
        var dst = attempt.Destination.Address;
        int port = attempt.Destination.Port;
        using var lifetime = CancellationTokenSource.CreateLinkedTokenSource(state.Lifetime.Token, _stop.Token);
        var token = lifetime.Token;

        string? name = null;
        string? rule;
        byte[] first = [];
        IReadOnlyList<IPAddress> targets;
        Relay.Inspector? inspect = null;

        switch (policy.PlanTcp(dst, port))
        {
            case TcpPlan.DialAddress:
            {
                rule = policy.AllowsAddress(dst, port);
                if (_guard.Check(dst, port) is { } why)
                {
                    Deny(attempt, client, why);
                    return;
                }
                targets = [dst];
                name = state.PinnedNames(dst).FirstOrDefault();
                break;
            }
            case TcpPlan.NeedName:
            {
                var pinned = state.PinnedNames(dst).FirstOrDefault(n => policy.AllowsName(n, port) is not null);
                FirstFlight flight;
                (first, flight) = await SniffAsync(client, pinned is not null, token).ConfigureAwait(false);
                if (flight.Kind is FirstFlightKind.Tls or FirstFlightKind.Http)
                {
                    if (flight.Name is null)
                    {
                        Deny(attempt, client, flight.Problem ?? "no_name");
                        return;
                    }
                    name = flight.Name;
                    rule = policy.AllowsName(name, port);
                    if (rule is null)
                    {
                        Deny(attempt, client, "not_allowed", name);
                        return;
                    }
                    var resolution = await _resolver.ResolveAsync(name, ipv6: true, token).ConfigureAwait(false);
                    if (resolution.Addresses.Count == 0)
                    {
                        Deny(attempt, client, "dns_" + (resolution.Failure ?? "no_address"), name);
                        return;
                    }
                    var usable = resolution.Addresses.Where(a => _guard.Check(a, port) is null).ToList();
                    if (usable.Count == 0)
                    {
                        // The allowed name resolves only to places no sandbox reaches (rebinding, metadata).
                        Deny(attempt, client, _guard.Check(resolution.Addresses[0], port)!, name, resolution.Addresses[0]);
                        return;
                    }
                    targets = usable.Contains(dst) ? [dst, .. usable.Where(a => !a.Equals(dst))] : usable;
                    if (flight.Kind == FirstFlightKind.Http)
                    {
                        var guard = new HttpRequestGuard(name);
                        inspect = data => guard.Inspect(data) ? null : guard.Problem;
                    }
                }
                else if (pinned is not null)
                {
                    // No name in the bytes (a protocol that is neither TLS nor HTTP, or one where the
                    // server speaks first): the address is allowed because Moat resolved it, for this
                    // sandbox, from a name a rule allows.
                    if (_guard.Check(dst, port) is { } why)
                    {
                        Deny(attempt, client, why, pinned);
                        return;
                    }
                    name = pinned;
                    rule = policy.AllowsName(pinned, port);
                    targets = [dst];
                    if (first.Length == 0)
                    {
                        // Whatever the sandbox sends first is still checked before it leaves.
                        var later = new FirstFlightGuard(state, policy, dst, port);
                        inspect = later.Inspect;
                    }
                }
                else
                {
                    Deny(attempt, client, first.Length == 0 ? "no_name" : "not_tls_or_http");
                    return;
                }
                break;
            }
            default:
                Deny(attempt, client, "not_allowed", state.PinnedNames(dst).FirstOrDefault());
                return;
        }

        var (upstream, dialled, failure) = await DialAsync(targets, port, token).ConfigureAwait(false);
        if (upstream is null)
        {
            Relay.Reset(client);
            Record(attempt, "allowed", rule, name, targets[0], 0, 0, clock, failure);
            return;
        }
        var counters = new Relay.Counters();
        var flow = new TcpFlow(name, dialled!, port, lifetime);
        state.Track(flow);
        LogRelaying(_logger, state.Id, dialled!.ToString(), port, state.OpenFlows);
        string end;
        try
        {
            if (first.Length > 0)
            {
                if (inspect?.Invoke(first) is { } problem)
                {
                    end = problem;
                }
                else
                {
                    await Relay.SendAllAsync(upstream, first, token).ConfigureAwait(false);
                    counters.Out += first.Length;
                    end = await Relay.RunAsync(client, upstream, counters, state.Egress, state.Ingress, inspect, token).ConfigureAwait(false);
                }
            }
            else
            {
                end = await Relay.RunAsync(client, upstream, counters, state.Egress, state.Ingress, inspect, token).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            end = token.IsCancellationRequested ? "cancelled" : "error";
        }
        finally
        {
            state.Untrack(flow);
        }
        if (flow.ClosedBecause is { } why2)
            end = why2;
        else if (end == "cancelled")
            end = state.Lifetime.IsCancellationRequested ? "sandbox_detached" : "proxy_stopped";
        LogRelayEnded(_logger, state.Id, end, Interlocked.Read(ref counters.Out), Interlocked.Read(ref counters.In));
        if (end == "closed")
        {
            client.Dispose();
            upstream.Dispose();
        }
        else
        {
            Relay.Reset(client);
            Relay.Reset(upstream);
        }
        Record(attempt, "allowed", rule, name, dialled!, Interlocked.Read(ref counters.Out), Interlocked.Read(ref counters.In), clock, end);
    }

    /// <summary>Reads the sandbox's first bytes until they say TLS or HTTP (and which name), or time runs out.</summary>
    private async Task<(byte[] Data, FirstFlight Flight)> SniffAsync(Socket client, bool pinned, CancellationToken cancellationToken)
    {
        var buffer = new byte[ProtocolSniffer.MaxFirstFlight];
        int have = 0;
        // With a pinned name a server-first protocol is possible: give up on the name quickly
        // when nothing comes; once bytes come, wait for the whole ClientHello or request head.
        var patience = pinned ? TimeSpan.FromMilliseconds(300) : TimeSpan.FromSeconds(_options.SniffTimeoutSeconds);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(patience);
        var flight = new FirstFlight(FirstFlightKind.Incomplete, null, null);
        try
        {
            while (have < buffer.Length)
            {
                int n = await client.ReceiveAsync(buffer.AsMemory(have), SocketFlags.None, deadline.Token).ConfigureAwait(false);
                if (n == 0)
                    break;
                if (have == 0 && pinned)
                    deadline.CancelAfter(TimeSpan.FromSeconds(_options.SniffTimeoutSeconds));
                have += n;
                flight = ProtocolSniffer.Classify(buffer.AsSpan(0, have));
                if (flight.Kind != FirstFlightKind.Incomplete)
                    break;
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
        }
        catch (SocketException)
        {
        }
        if (flight.Kind == FirstFlightKind.Incomplete && have > 0)
            flight = new FirstFlight(FirstFlightKind.Other, null, "incomplete");
        return (buffer[..have], flight);
    }

    private async Task<(Socket? Socket, IPAddress? Address, string Failure)> DialAsync(IReadOnlyList<IPAddress> targets, int port, CancellationToken cancellationToken)
    {
        string failure = "connect_failed";
        foreach (var target in targets.OrderBy(a => a.AddressFamily == AddressFamily.InterNetwork ? 0 : 1).Take(4))
        {
            Socket socket;
            try
            {
                socket = _uplink.CreateSocket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            }
            catch (SocketException)
            {
                failure = "unreachable";
                continue;
            }
            socket.NoDelay = true;
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            deadline.CancelAfter(TimeSpan.FromSeconds(_options.ConnectTimeoutSeconds));
            try
            {
                await socket.ConnectAsync(new IPEndPoint(target, port), deadline.Token).ConfigureAwait(false);
                return (socket, target, "");
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                failure = "connect_timeout";
            }
            catch (SocketException ex)
            {
                failure = ex.SocketErrorCode switch
                {
                    SocketError.ConnectionRefused => "connect_refused",
                    SocketError.NetworkUnreachable or SocketError.HostUnreachable => "unreachable",
                    SocketError.TimedOut => "connect_timeout",
                    _ => "connect_failed",
                };
            }
            socket.Dispose();
            if (cancellationToken.IsCancellationRequested)
                break;
        }
        return (null, null, failure);
    }

    private void Deny(Attempt attempt, Socket client, string reason, string? name = null, IPAddress? address = null)
    {
        Relay.Reset(client);
        var dst = attempt.Destination;
        _log.Append(attempt.State.Id, new EgressEvent
        {
            Time = attempt.Started,
            Protocol = "tcp",
            Verdict = "denied",
            Reason = reason,
            Name = name,
            Address = (address ?? dst.Address).ToString(),
            RequestedAddress = address is not null && !address.Equals(dst.Address) ? dst.Address.ToString() : null,
            Port = dst.Port,
        });
    }

    private void Record(Attempt attempt, string verdict, string? reason, string? name, IPAddress address, long bytesOut, long bytesIn, Stopwatch clock, string end)
    {
        var dst = attempt.Destination;
        _log.Append(attempt.State.Id, new EgressEvent
        {
            Time = attempt.Started,
            Protocol = "tcp",
            Verdict = verdict,
            Reason = reason,
            Name = name,
            Address = address.ToString(),
            RequestedAddress = address.Equals(dst.Address) ? null : dst.Address.ToString(),
            Port = dst.Port,
            BytesOut = bytesOut,
            BytesIn = bytesIn,
            DurationMs = Math.Round(clock.Elapsed.TotalMilliseconds, 3),
            End = end,
        });
    }

    private static IPEndPoint Canonical(IPEndPoint endpoint) =>
        endpoint.Address.IsIPv4MappedToIPv6 ? new IPEndPoint(endpoint.Address.MapToIPv4(), endpoint.Port) : endpoint;

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener?.Dispose();
        await _accepting.ConfigureAwait(false);
        _stop.Dispose();
    }

    /// <summary>A relayed TCP connection, as its sandbox's state tracks it.</summary>
    private sealed class TcpFlow(string? name, IPAddress address, int port, CancellationTokenSource lifetime) : IProxiedFlow
    {
        private string? _closedBecause;

        public string Protocol => "tcp";

        public string? Name => name;

        public IPAddress Address => address;

        public int Port => port;

        public string? ClosedBecause => Volatile.Read(ref _closedBecause);

        public void Close(string why)
        {
            Interlocked.CompareExchange(ref _closedBecause, why, null);
            try
            {
                lifetime.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    /// <summary>
    /// For a connection allowed by a pinned name before the sandbox said anything: when its first
    /// bytes do turn out to be TLS or HTTP, their name must be allowed and pinned to this address.
    /// </summary>
    private sealed class FirstFlightGuard(AttachedSandbox state, Core.Networking.ISandboxNetwork policy, IPAddress address, int port)
    {
        private byte[] _seen = [];
        private bool _done;
        private HttpRequestGuard? _http;

        public string? Inspect(ReadOnlySpan<byte> data)
        {
            if (_http is not null)
                return _http.Inspect(data) ? null : _http.Problem;
            if (_done)
                return null;
            _seen = [.. _seen, .. data];
            var flight = ProtocolSniffer.Classify(_seen);
            if (flight.Kind == FirstFlightKind.Incomplete)
                return _seen.Length >= ProtocolSniffer.MaxFirstFlight ? "incomplete" : null;
            _done = true;
            if (flight.Kind == FirstFlightKind.Other)
                return null;
            if (flight.Name is null)
                return flight.Problem ?? "no_name";
            if (policy.AllowsName(flight.Name, port) is null || !state.PinnedNames(address).Contains(flight.Name))
                return "name_mismatch";
            if (flight.Kind == FirstFlightKind.Http)
            {
                _http = new HttpRequestGuard(flight.Name);
                return _http.Inspect(_seen) ? null : _http.Problem;
            }
            return null;
        }
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "Egress proxy: {SandboxId} relaying to {Address}:{Port} ({Open} open)")]
    private static partial void LogRelaying(ILogger logger, string sandboxId, string address, int port, int open);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Egress proxy: {SandboxId} relay ended: {End} (out {Out}, in {In})")]
    private static partial void LogRelayEnded(ILogger logger, string sandboxId, string end, long @out, long @in);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Egress proxy: accept failed: {Error}")]
    private static partial void LogAcceptFailed(ILogger logger, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Egress proxy: connection of {SandboxId} to {Destination} failed")]
    private static partial void LogProxyFailed(ILogger logger, string sandboxId, string destination, Exception exception);
}
