using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Moat.Networking.Plumbing;

namespace Moat.Networking.Dns;

/// <summary>What Moat's resolver knows about a name.</summary>
/// <param name="Addresses">IPv4 addresses first, then IPv6; empty when the name does not resolve.</param>
/// <param name="Ttl">How long the answer may be used.</param>
/// <param name="Failure">Why there is no answer (nxdomain, servfail, timeout), or null.</param>
public sealed record Resolution(IReadOnlyList<IPAddress> Addresses, TimeSpan Ttl, string? Failure);

/// <summary>
/// Moat's own stub resolver: A and AAAA questions to the configured upstream servers, asked from
/// the uplink (never through the host's /etc/hosts or nsswitch), with random ids and ports,
/// answers checked against the question, TCP when truncated, and a cache bounded in size and by
/// TTL. The egress proxy dials only what this resolver says, so a sandbox's own resolver
/// configuration, /etc/hosts or DNS tricks never choose where Moat connects.
/// </summary>
public sealed partial class UpstreamResolver
{
    private const int MaxCacheEntries = 50_000;
    private readonly Uplink _uplink;
    private readonly IReadOnlyList<IPEndPoint> _servers;
    private readonly TimeSpan _maxTtl;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<(string, ushort), (DnsAnswer? Answer, string? Failure, long Expires)> _cache = new();
    private readonly ConcurrentDictionary<(string, ushort), Task<(DnsAnswer?, string?)>> _inflight = new();

    /// <summary>Creates the resolver.</summary>
    public UpstreamResolver(NetworkOptions options, Uplink uplink, ILogger logger)
    {
        _uplink = uplink;
        _logger = logger;
        _maxTtl = TimeSpan.FromSeconds(Math.Max(1, options.MaxDnsTtlSeconds));
        var configured = options.Resolvers.Count > 0 ? options.Resolvers : ReadResolvConf();
        _servers = configured.Select(ParseServer).ToList();
    }

    /// <summary>The upstream servers asked, in order.</summary>
    public IReadOnlyList<IPEndPoint> Servers => _servers;

    /// <summary>Resolves a (normalised) name to its addresses.</summary>
    public async Task<Resolution> ResolveAsync(string name, bool ipv6, CancellationToken cancellationToken)
    {
        var v4 = LookupAsync(name, DnsMessage.TypeA, cancellationToken);
        var v6 = ipv6 ? LookupAsync(name, DnsMessage.TypeAaaa, cancellationToken) : Task.FromResult<(DnsAnswer?, string?)>((null, null));
        var (a, aFailure) = await v4.ConfigureAwait(false);
        var (aaaa, _) = await v6.ConfigureAwait(false);
        var addresses = new List<IPAddress>();
        uint ttl = uint.MaxValue;
        foreach (var answer in new[] { a, aaaa })
        {
            if (answer is { Addresses.Count: > 0 })
            {
                addresses.AddRange(answer.Addresses);
                ttl = Math.Min(ttl, answer.Ttl);
            }
        }
        if (addresses.Count == 0)
            return new Resolution([], TimeSpan.Zero, aFailure ?? (a?.Rcode == DnsMessage.NxDomain ? "nxdomain" : "no_address"));
        return new Resolution(addresses, TimeSpan.FromSeconds(Math.Min(ttl, _maxTtl.TotalSeconds)), null);
    }

    private Task<(DnsAnswer?, string?)> LookupAsync(string name, ushort type, CancellationToken cancellationToken)
    {
        var key = (name, type);
        if (_cache.TryGetValue(key, out var cached) && cached.Expires > Environment.TickCount64)
            return Task.FromResult((cached.Answer, cached.Failure));
        // One question in flight per name and type, whoever asks.
        return _inflight.GetOrAdd(key, k => Task.Run(async () =>
        {
            try
            {
                var (answer, failure) = await QueryServersAsync(k.Item1, k.Item2, CancellationToken.None).ConfigureAwait(false);
                // Failures are cached briefly; answers for their TTL, at least a second and at most the configured maximum.
                double seconds = answer is { Addresses.Count: > 0 } ? Math.Clamp(answer.Ttl, 1, _maxTtl.TotalSeconds) : Math.Min(5, _maxTtl.TotalSeconds);
                if (_cache.Count >= MaxCacheEntries)
                    Evict();
                _cache[k] = (answer, failure, Environment.TickCount64 + (long)(seconds * 1000));
                return (answer, failure);
            }
            finally
            {
                _inflight.TryRemove(k, out _);
            }
        }, CancellationToken.None)).WaitAsync(cancellationToken);
    }

    private void Evict()
    {
        long now = Environment.TickCount64;
        foreach (var (key, value) in _cache)
        {
            if (value.Expires <= now || _cache.Count >= MaxCacheEntries)
                _cache.TryRemove(key, out _);
        }
    }

    private async Task<(DnsAnswer?, string?)> QueryServersAsync(string name, ushort type, CancellationToken cancellationToken)
    {
        if (_servers.Count == 0)
            return (null, "no_resolver");
        string failure = "timeout";
        foreach (var server in _servers)
        {
            try
            {
                var answer = await QueryUdpAsync(server, name, type, cancellationToken).ConfigureAwait(false);
                if (answer is { Truncated: true })
                    answer = await QueryTcpAsync(server, name, type, cancellationToken).ConfigureAwait(false);
                if (answer is null)
                    continue;
                if (answer.Rcode is DnsMessage.NoError or DnsMessage.NxDomain)
                    return (answer, answer.Rcode == DnsMessage.NxDomain ? "nxdomain" : null);
                failure = answer.Rcode == DnsMessage.ServFail ? "servfail" : $"rcode_{answer.Rcode}";
            }
            catch (Exception ex) when (ex is SocketException or IOException or TimeoutException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
            {
                LogUpstreamFailed(_logger, server.ToString(), name, ex.Message);
                failure = ex is SocketException ? "unreachable" : "timeout";
            }
        }
        return (null, failure);
    }

    private async Task<DnsAnswer?> QueryUdpAsync(IPEndPoint server, string name, ushort type, CancellationToken cancellationToken)
    {
        using var socket = _uplink.CreateSocket(server.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        await socket.ConnectAsync(server, cancellationToken).ConfigureAwait(false);
        var buffer = new byte[4096];
        for (int attempt = 0; attempt < 2; attempt++)
        {
            ushort id = (ushort)RandomNumberGenerator.GetInt32(65536);
            await socket.SendAsync(DnsMessage.BuildQuery(id, name, type), SocketFlags.None, cancellationToken).ConfigureAwait(false);
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            deadline.CancelAfter(TimeSpan.FromMilliseconds(attempt == 0 ? 1500 : 2500));
            try
            {
                while (true)
                {
                    int n = await socket.ReceiveAsync(buffer, SocketFlags.None, deadline.Token).ConfigureAwait(false);
                    // Anything that is not the answer to this question is ignored (a late or forged reply).
                    if (DnsMessage.ParseResponse(buffer.AsSpan(0, n), id, name, type) is { } answer)
                        return answer;
                }
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
            }
        }
        throw new TimeoutException($"no answer from {server}");
    }

    private async Task<DnsAnswer?> QueryTcpAsync(IPEndPoint server, string name, ushort type, CancellationToken cancellationToken)
    {
        using var socket = _uplink.CreateSocket(server.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(TimeSpan.FromSeconds(4));
        await socket.ConnectAsync(server, deadline.Token).ConfigureAwait(false);
        ushort id = (ushort)RandomNumberGenerator.GetInt32(65536);
        var query = DnsMessage.BuildQuery(id, name, type);
        var framed = new byte[query.Length + 2];
        BinaryPrimitives.WriteUInt16BigEndian(framed, (ushort)query.Length);
        query.CopyTo(framed, 2);
        await socket.SendAsync(framed, SocketFlags.None, deadline.Token).ConfigureAwait(false);
        var header = new byte[2];
        await ReceiveExactlyAsync(socket, header, deadline.Token).ConfigureAwait(false);
        var body = new byte[BinaryPrimitives.ReadUInt16BigEndian(header)];
        await ReceiveExactlyAsync(socket, body, deadline.Token).ConfigureAwait(false);
        return DnsMessage.ParseResponse(body, id, name, type);
    }

    private static async Task ReceiveExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (buffer.Length > 0)
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            if (n == 0)
                throw new IOException("the DNS server closed the connection");
            buffer = buffer[n..];
        }
    }

    private static IPEndPoint ParseServer(string text)
    {
        if (IPEndPoint.TryParse(text, out var endpoint))
            return endpoint.Port == 0 ? new IPEndPoint(endpoint.Address, 53) : endpoint;
        throw new FormatException($"Moat:Network:Resolvers: '{text}' is not an address or address:port");
    }

    private static List<string> ReadResolvConf()
    {
        var servers = new List<string>();
        try
        {
            foreach (var line in File.ReadLines("/etc/resolv.conf"))
            {
                var fields = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length >= 2 && fields[0] == "nameserver" && IPAddress.TryParse(fields[1], out _))
                    servers.Add(fields[1]);
            }
        }
        catch (IOException)
        {
        }
        return servers;
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "DNS server {Server} did not answer for {Name}: {Error}")]
    private static partial void LogUpstreamFailed(ILogger logger, string server, string name, string error);
}
