using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Moat.Core.Networking;
using Moat.Networking.Egress;
using Moat.Networking.Plumbing;
using Moat.Networking.Policy;

namespace Moat.Networking.Dns;

/// <summary>
/// The resolver sandboxes see (their /etc/resolv.conf names the gateway address, port 53, UDP
/// and TCP). It answers only names the sandbox's policy covers, from Moat's own resolution, with
/// every always-denied address removed; anything else gets NXDOMAIN and is never asked
/// upstream — so a domain rule is no tunnel, and an allowed name that resolves to a private or
/// metadata address gives nothing. Every question is logged; every answer pins its addresses to
/// the name for that sandbox, which is how ports without a name in their bytes are allowed.
/// </summary>
internal sealed partial class SandboxDnsServer : IAsyncDisposable
{
    private readonly UpstreamResolver _resolver;
    private readonly AddressGuard _guard;
    private readonly EgressLog _log;
    private readonly Func<IPAddress, AttachedSandbox?> _lookup;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private Socket? _udp;
    private Socket? _tcp;
    private readonly List<Task> _loops = [];

    public SandboxDnsServer(UpstreamResolver resolver, AddressGuard guard, EgressLog log, Func<IPAddress, AttachedSandbox?> lookup, ILogger logger)
    {
        _resolver = resolver;
        _guard = guard;
        _log = log;
        _lookup = lookup;
        _logger = logger;
    }

    /// <summary>Listens on port 53 of every gateway address.</summary>
    public void Start(NetworkNamespace gateway)
    {
        (_udp, _tcp) = gateway.Run(() =>
        {
            var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            udp.Bind(new IPEndPoint(IPAddress.Any, 53));
            var tcp = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            tcp.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            tcp.Bind(new IPEndPoint(IPAddress.Any, 53));
            tcp.Listen(256);
            return (udp, tcp);
        });
        _loops.Add(UdpLoopAsync(_udp));
        _loops.Add(TcpLoopAsync(_tcp));
    }

    private async Task UdpLoopAsync(Socket socket)
    {
        var buffer = new byte[4096];
        while (!_stop.IsCancellationRequested)
        {
            SocketReceiveFromResult received;
            try
            {
                received = await socket.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), _stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }
            var from = (IPEndPoint)received.RemoteEndPoint;
            var packet = buffer.AsSpan(0, received.ReceivedBytes).ToArray();
            _ = Task.Run(async () =>
            {
                byte[]? reply;
                try
                {
                    reply = await AnswerAsync(from.Address, packet, 512).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogAnswerFailed(_logger, from.ToString(), ex);
                    return;
                }
                if (reply is not null)
                {
                    try
                    {
                        await socket.SendToAsync(reply, SocketFlags.None, from).ConfigureAwait(false);
                    }
                    catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                    {
                    }
                }
            });
        }
    }

    private async Task TcpLoopAsync(Socket listener)
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
            catch (SocketException)
            {
                continue;
            }
            _ = ServeTcpAsync(client);
        }
    }

    private async Task ServeTcpAsync(Socket client)
    {
        using var _ = client;
        var from = ((IPEndPoint)client.RemoteEndPoint!).Address;
        if (_lookup(from) is null)
            return;
        var header = new byte[2];
        try
        {
            // A few questions per connection, each within ten seconds.
            for (int i = 0; i < 16; i++)
            {
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
                deadline.CancelAfter(TimeSpan.FromSeconds(10));
                if (!await ReadExactlyAsync(client, header, deadline.Token).ConfigureAwait(false))
                    return;
                int length = BinaryPrimitives.ReadUInt16BigEndian(header);
                if (length < 12)
                    return;
                var packet = new byte[length];
                if (!await ReadExactlyAsync(client, packet, deadline.Token).ConfigureAwait(false))
                    return;
                var reply = await AnswerAsync(from, packet, 65535).ConfigureAwait(false);
                if (reply is null)
                    return;
                var framed = new byte[reply.Length + 2];
                BinaryPrimitives.WriteUInt16BigEndian(framed, (ushort)reply.Length);
                reply.CopyTo(framed, 2);
                await Relay.SendAllAsync(client, framed, deadline.Token).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    private static async Task<bool> ReadExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (buffer.Length > 0)
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            if (n == 0)
                return false;
            buffer = buffer[n..];
        }
        return true;
    }

    /// <summary>The answer to one query from <paramref name="from"/>, or null to stay silent.</summary>
    internal async Task<byte[]?> AnswerAsync(IPAddress from, byte[] packet, int maxSize)
    {
        var state = _lookup(from);
        if (state is null)
            return null;
        if (!DnsMessage.TryParseQuery(packet, out var query))
            return DnsMessage.BuildFormatError(packet);
        var started = DateTimeOffset.UtcNow;
        maxSize = Math.Min(maxSize, Math.Max(512, query!.EdnsPayload));
        var name = EgressRule.NormalizeHost(query.Name);
        var policy = state.Policy;
        if (query.Class != 1 || name is null || !policy.Resolves(name))
        {
            Log(state, started, query.Name, "denied", name is null ? "invalid_name" : "not_allowed", null);
            return DnsMessage.BuildResponse(query, query.Class != 1 ? DnsMessage.Refused : DnsMessage.NxDomain, [], 0, maxSize);
        }
        if (query.Type is not (DnsMessage.TypeA or DnsMessage.TypeAaaa))
        {
            // Only addresses are answered: TXT, MX, SRV... of an allowed name get an empty answer.
            Log(state, started, name, "allowed", "no_data", null);
            return DnsMessage.BuildResponse(query, DnsMessage.NoError, [], 0, maxSize);
        }
        Resolution resolution;
        try
        {
            resolution = await _resolver.ResolveAsync(name, ipv6: false, _stop.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            LogResolveFailed(_logger, name, ex);
            return DnsMessage.BuildResponse(query, DnsMessage.ServFail, [], 0, maxSize);
        }
        if (resolution.Addresses.Count == 0)
        {
            Log(state, started, name, "denied", "dns_" + (resolution.Failure ?? "no_address"), null);
            return DnsMessage.BuildResponse(query, resolution.Failure == "nxdomain" ? DnsMessage.NxDomain : DnsMessage.ServFail, [], 0, maxSize);
        }
        var usable = resolution.Addresses.Where(a => _guard.Check(a) is null).ToList();
        if (usable.Count == 0)
        {
            Log(state, started, name, "denied", _guard.Check(resolution.Addresses[0]), resolution.Addresses);
            return DnsMessage.BuildResponse(query, DnsMessage.NxDomain, [], 0, maxSize);
        }
        // The sandbox has no IPv6: AAAA questions get an empty answer, not an address it cannot use.
        var answer = query.Type == DnsMessage.TypeA ? usable.Where(a => a.AddressFamily == AddressFamily.InterNetwork).ToList() : [];
        state.Pin(name, answer, resolution.Ttl);
        Log(state, started, name, "allowed", answer.Count == 0 ? "no_data" : "resolved", answer);
        return DnsMessage.BuildResponse(query, DnsMessage.NoError, answer, (uint)Math.Max(0, resolution.Ttl.TotalSeconds), maxSize);
    }

    private void Log(AttachedSandbox state, DateTimeOffset started, string name, string verdict, string? reason, IReadOnlyList<IPAddress>? addresses) =>
        _log.Append(state.Id, new EgressEvent
        {
            Time = started,
            Protocol = "dns",
            Verdict = verdict,
            Reason = reason,
            Name = name.Length > 255 ? name[..255] : name,
            Address = addresses is { Count: > 0 } ? string.Join(",", addresses) : null,
            Port = 53,
            DurationMs = Math.Round((DateTimeOffset.UtcNow - started).TotalMilliseconds, 3),
        });

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _udp?.Dispose();
        _tcp?.Dispose();
        await Task.WhenAll(_loops).ConfigureAwait(false);
        _stop.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Sandbox resolver: answering {From} failed")]
    private static partial void LogAnswerFailed(ILogger logger, string from, Exception exception);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Sandbox resolver: resolving {Name} failed")]
    private static partial void LogResolveFailed(ILogger logger, string name, Exception exception);
}
