using System.Buffers.Binary;
using System.Text;
using Moat.Core.Networking;

namespace Moat.Networking.Egress;

/// <summary>What the first bytes of a connection say.</summary>
public enum FirstFlightKind
{
    /// <summary>Not enough bytes yet to tell.</summary>
    Incomplete,
    /// <summary>A TLS ClientHello.</summary>
    Tls,
    /// <summary>An HTTP/1.x request head.</summary>
    Http,
    /// <summary>Something else (or a malformed TLS or HTTP start).</summary>
    Other,
}

/// <summary>The verdict of <see cref="ProtocolSniffer.Classify"/>.</summary>
/// <param name="Kind">What the bytes are.</param>
/// <param name="Name">The normalised TLS server name or HTTP Host, when there is exactly one valid one.</param>
/// <param name="Problem">Why a TLS or HTTP start cannot be trusted for its name (no_sni, two_hosts, connect_method...), or null.</param>
public readonly record struct FirstFlight(FirstFlightKind Kind, string? Name, string? Problem);

/// <summary>
/// Reads the destination name out of the first bytes a sandbox sends: the server_name of a TLS
/// ClientHello (reassembled across records) or the Host of an HTTP/1.x request head. Strict: two
/// names, an IP literal, a request target that names another host, or anything ambiguous gives
/// no name, and no name means no connection to a domain rule.
/// </summary>
public static class ProtocolSniffer
{
    /// <summary>The most bytes read while looking for a name.</summary>
    public const int MaxFirstFlight = 32 * 1024;

    /// <summary>Classifies the bytes received so far.</summary>
    public static FirstFlight Classify(ReadOnlySpan<byte> data)
    {
        if (data.Length == 0)
            return new(FirstFlightKind.Incomplete, null, null);
        if (data[0] == 0x16)
            return ClassifyTls(data);
        if (char.IsAsciiLetterUpper((char)data[0]))
            return ClassifyHttp(data);
        return new(FirstFlightKind.Other, null, null);
    }

    private static FirstFlight ClassifyTls(ReadOnlySpan<byte> data)
    {
        // Handshake bytes, reassembled from consecutive handshake records.
        Span<byte> handshake = new byte[Math.Min(data.Length, MaxFirstFlight)];
        int have = 0;
        int at = 0;
        int needed = -1;
        while (true)
        {
            if (at + 5 > data.Length)
                return Incomplete(data);
            if (data[at] != 0x16 || data[at + 1] != 0x03 || data[at + 2] > 0x04)
                return new(FirstFlightKind.Other, null, "not_tls");
            int length = BinaryPrimitives.ReadUInt16BigEndian(data[(at + 3)..]);
            if (length == 0 || length > 16384 + 2048)
                return new(FirstFlightKind.Other, null, "bad_tls_record");
            if (at + 5 + length > data.Length)
            {
                // Use what is there; more may be needed.
                var part = data.Slice(at + 5, data.Length - at - 5);
                if (have + part.Length > handshake.Length)
                    return new(FirstFlightKind.Other, null, "client_hello_too_large");
                part.CopyTo(handshake[have..]);
                have += part.Length;
                return Parse(handshake[..have], complete: false);
            }
            var record = data.Slice(at + 5, length);
            if (have + record.Length > handshake.Length)
                return new(FirstFlightKind.Other, null, "client_hello_too_large");
            record.CopyTo(handshake[have..]);
            have += record.Length;
            at += 5 + length;
            if (needed < 0 && have >= 4)
            {
                if (handshake[0] != 1)
                    return new(FirstFlightKind.Other, null, "not_client_hello");
                needed = 4 + ((handshake[1] << 16) | (handshake[2] << 8) | handshake[3]);
                if (needed > MaxFirstFlight)
                    return new(FirstFlightKind.Other, null, "client_hello_too_large");
            }
            if (needed >= 0 && have >= needed)
                return Parse(handshake[..needed], complete: true);
        }
    }

    private static FirstFlight Incomplete(ReadOnlySpan<byte> data) =>
        data.Length >= MaxFirstFlight ? new(FirstFlightKind.Other, null, "client_hello_too_large") : new(FirstFlightKind.Incomplete, null, null);

    /// <summary>Parses a ClientHello handshake message for its server_name.</summary>
    private static FirstFlight Parse(ReadOnlySpan<byte> hs, bool complete)
    {
        if (hs.Length < 4)
            return new(FirstFlightKind.Incomplete, null, null);
        if (hs[0] != 1)
            return new(FirstFlightKind.Other, null, "not_client_hello");
        int total = 4 + ((hs[1] << 16) | (hs[2] << 8) | hs[3]);
        if (hs.Length < total)
            return complete ? new(FirstFlightKind.Other, null, "truncated_client_hello") : new(FirstFlightKind.Incomplete, null, null);
        var body = hs[4..total];
        int at = 2 + 32; // client_version, random
        if (at >= body.Length)
            return Malformed();
        at += 1 + body[at]; // session id
        if (at + 2 > body.Length)
            return Malformed();
        int suites = BinaryPrimitives.ReadUInt16BigEndian(body[at..]);
        at += 2 + suites;
        if (at >= body.Length)
            return Malformed();
        at += 1 + body[at]; // compression methods
        if (at == body.Length)
            return new(FirstFlightKind.Tls, null, "no_sni");
        if (at + 2 > body.Length)
            return Malformed();
        int extensionsEnd = at + 2 + BinaryPrimitives.ReadUInt16BigEndian(body[at..]);
        if (extensionsEnd > body.Length)
            return Malformed();
        at += 2;
        string? name = null;
        while (at + 4 <= extensionsEnd)
        {
            int type = BinaryPrimitives.ReadUInt16BigEndian(body[at..]);
            int length = BinaryPrimitives.ReadUInt16BigEndian(body[(at + 2)..]);
            at += 4;
            if (at + length > extensionsEnd)
                return Malformed();
            if (type == 0)
            {
                if (name is not null)
                    return new(FirstFlightKind.Tls, null, "two_sni");
                var ext = body.Slice(at, length);
                if (ext.Length < 2 || 2 + BinaryPrimitives.ReadUInt16BigEndian(ext) != ext.Length)
                    return Malformed();
                int p = 2;
                while (p + 3 <= ext.Length)
                {
                    int nameType = ext[p];
                    int nameLength = BinaryPrimitives.ReadUInt16BigEndian(ext[(p + 1)..]);
                    if (p + 3 + nameLength > ext.Length)
                        return Malformed();
                    if (nameType == 0)
                    {
                        if (name is not null)
                            return new(FirstFlightKind.Tls, null, "two_sni");
                        var raw = ext.Slice(p + 3, nameLength);
                        if (raw.IndexOfAnyExceptInRange((byte)0x21, (byte)0x7E) >= 0)
                            return new(FirstFlightKind.Tls, null, "bad_sni");
                        name = EgressRule.NormalizeHost(Encoding.ASCII.GetString(raw));
                        if (name is null)
                            return new(FirstFlightKind.Tls, null, "bad_sni");
                    }
                    p += 3 + nameLength;
                }
            }
            at += length;
        }
        return name is null ? new(FirstFlightKind.Tls, null, "no_sni") : new(FirstFlightKind.Tls, name, null);
    }

    private static FirstFlight Malformed() => new(FirstFlightKind.Other, null, "malformed_client_hello");

    private static FirstFlight ClassifyHttp(ReadOnlySpan<byte> data)
    {
        int end = data.IndexOf("\r\n\r\n"u8);
        if (end < 0)
        {
            // A request line must look like one early, or this is not HTTP.
            int space = data.IndexOf((byte)' ');
            if ((space < 0 && data.Length > 20) || (space >= 0 && !IsToken(data[..space])))
                return new(FirstFlightKind.Other, null, null);
            return data.Length >= MaxFirstFlight ? new(FirstFlightKind.Other, null, "http_head_too_large") : new(FirstFlightKind.Incomplete, null, null);
        }
        var head = HttpHead.Parse(data[..(end + 4)]);
        if (head.Problem is { } problem)
            return new(head.IsHttp ? FirstFlightKind.Http : FirstFlightKind.Other, null, problem);
        return new(FirstFlightKind.Http, head.Host, null);
    }

    internal static bool IsToken(ReadOnlySpan<byte> s)
    {
        if (s.Length == 0)
            return false;
        foreach (byte b in s)
        {
            if (b <= 0x20 || b >= 0x7F || "\"(),/:;<=>?@[\\]{}"u8.Contains(b))
                return false;
        }
        return true;
    }
}

/// <summary>A parsed HTTP/1.x request head: its Host and how its body is framed.</summary>
internal readonly record struct HttpHead(bool IsHttp, string? Host, long ContentLength, bool Chunked, bool Upgrade, string? Problem)
{
    public static HttpHead Parse(ReadOnlySpan<byte> head)
    {
        var text = Encoding.Latin1.GetString(head);
        var lines = text.Split("\r\n");
        var request = lines[0].Split(' ');
        if (request.Length != 3 || !ProtocolSniffer.IsToken(Encoding.Latin1.GetBytes(request[0])) || !request[2].StartsWith("HTTP/1.", StringComparison.Ordinal) || request[2].Length != 8)
            return new(false, null, 0, false, false, "not_http");
        if (request[0] == "CONNECT")
            return new(true, null, 0, false, false, "http_connect");
        string? host = null;
        int hosts = 0;
        long? length = null;
        bool chunked = false, upgrade = false, transferEncoding = false;
        for (int i = 1; i < lines.Length; i++)
        {
            var line = lines[i];
            if (line.Length == 0)
                continue;
            if (line[0] is ' ' or '\t')
                return new(true, null, 0, false, false, "http_obsolete_folding");
            int colon = line.IndexOf(':');
            if (colon <= 0 || !ProtocolSniffer.IsToken(Encoding.Latin1.GetBytes(line[..colon])))
                return new(true, null, 0, false, false, "http_bad_header");
            var name = line[..colon];
            var value = line[(colon + 1)..].Trim(' ', '\t');
            if (name.Equals("Host", StringComparison.OrdinalIgnoreCase))
            {
                hosts++;
                host = value;
            }
            else if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
            {
                if (length is not null || !long.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long n))
                    return new(true, null, 0, false, false, "http_bad_content_length");
                length = n;
            }
            else if (name.Equals("Transfer-Encoding", StringComparison.OrdinalIgnoreCase))
            {
                if (transferEncoding || !value.Equals("chunked", StringComparison.OrdinalIgnoreCase))
                    return new(true, null, 0, false, false, "http_bad_transfer_encoding");
                transferEncoding = chunked = true;
            }
            else if (name.Equals("Upgrade", StringComparison.OrdinalIgnoreCase))
            {
                upgrade = true;
            }
        }
        if (chunked && length is not null)
            return new(true, null, 0, false, false, "http_ambiguous_framing");
        if (hosts != 1)
            return new(true, null, 0, false, false, hosts == 0 ? "http_no_host" : "http_two_hosts");
        var normalized = NormalizeAuthority(host!);
        if (normalized is null)
            return new(true, null, 0, false, false, "http_bad_host");
        // An absolute request target must name the same host as the Host header.
        var target = request[1];
        if (!target.StartsWith('/') && target != "*")
        {
            if (!Uri.TryCreate(target, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || NormalizeAuthority(uri.Authority) != normalized)
                return new(true, null, 0, false, false, "http_target_mismatch");
        }
        return new(true, normalized, length ?? 0, chunked, upgrade, null);
    }

    private static string? NormalizeAuthority(string authority)
    {
        if (authority.Contains('@') || authority.StartsWith('['))
            return null;
        int colon = authority.LastIndexOf(':');
        var host = colon >= 0 ? authority[..colon] : authority;
        if (colon >= 0 && !int.TryParse(authority.AsSpan(colon + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out _))
            return null;
        return EgressRule.NormalizeHost(host);
    }
}

/// <summary>
/// Watches every request on a plain-HTTP connection that was allowed for one host: each request
/// head must name that host too, and bodies are skipped by their framing. A request for another
/// host, or framing it cannot follow, ends the connection — one allowed Host does not open a
/// connection for every virtual host on that server.
/// </summary>
internal sealed class HttpRequestGuard(string host)
{
    private enum State { Head, Body, ChunkSize, ChunkData, ChunkEnd, Trailers, Passthrough }

    private readonly List<byte> _line = [];
    private State _state = State.Head;
    private long _remaining;

    /// <summary>Why the connection must end, after <see cref="Inspect"/> returned false.</summary>
    public string? Problem { get; private set; }

    /// <summary>Feeds client bytes in order; false when they break the rule (and must not be forwarded).</summary>
    public bool Inspect(ReadOnlySpan<byte> data)
    {
        int i = 0;
        while (i < data.Length)
        {
            switch (_state)
            {
                case State.Passthrough:
                    return true;
                case State.Body:
                case State.ChunkData:
                {
                    int take = (int)Math.Min(_remaining, data.Length - i);
                    i += take;
                    _remaining -= take;
                    if (_remaining == 0)
                        _state = _state == State.Body ? State.Head : State.ChunkEnd;
                    break;
                }
                default:
                {
                    byte b = data[i++];
                    _line.Add(b);
                    if (_line.Count > ProtocolSniffer.MaxFirstFlight)
                        return Fail("http_head_too_large");
                    if (!Step())
                        return false;
                    break;
                }
            }
        }
        return true;
    }

    private bool Step()
    {
        int n = _line.Count;
        switch (_state)
        {
            case State.Head:
                if (n == 2 && _line[0] == '\r' && _line[1] == '\n')
                {
                    _line.Clear(); // tolerated empty line between requests
                    return true;
                }
                if (n >= 4 && _line[n - 4] == '\r' && _line[n - 3] == '\n' && _line[n - 2] == '\r' && _line[n - 1] == '\n')
                {
                    var head = HttpHead.Parse(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_line));
                    _line.Clear();
                    if (head.Problem is { } problem)
                        return Fail(problem);
                    if (head.Host != host)
                        return Fail("http_host_changed");
                    if (head.Upgrade)
                        _state = State.Passthrough;
                    else if (head.Chunked)
                        _state = State.ChunkSize;
                    else if (head.ContentLength > 0)
                    {
                        _remaining = head.ContentLength;
                        _state = State.Body;
                    }
                }
                return true;
            case State.ChunkSize:
                if (n >= 2 && _line[n - 2] == '\r' && _line[n - 1] == '\n')
                {
                    var text = Encoding.ASCII.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_line)[..(n - 2)]);
                    _line.Clear();
                    int semicolon = text.IndexOf(';');
                    if (semicolon >= 0)
                        text = text[..semicolon];
                    if (text.Length is 0 or > 15 || !long.TryParse(text, System.Globalization.NumberStyles.AllowHexSpecifier, System.Globalization.CultureInfo.InvariantCulture, out long size))
                        return Fail("http_bad_chunk");
                    if (size == 0)
                        _state = State.Trailers;
                    else
                    {
                        _remaining = size;
                        _state = State.ChunkData;
                    }
                }
                return true;
            case State.ChunkEnd:
                if (n == 2)
                {
                    bool ok = _line[0] == '\r' && _line[1] == '\n';
                    _line.Clear();
                    if (!ok)
                        return Fail("http_bad_chunk");
                    _state = State.ChunkSize;
                }
                return true;
            case State.Trailers:
                if (n >= 2 && _line[n - 2] == '\r' && _line[n - 1] == '\n')
                {
                    bool empty = n == 2;
                    _line.Clear();
                    if (empty)
                        _state = State.Head;
                }
                return true;
            default:
                return true;
        }
    }

    private bool Fail(string problem)
    {
        Problem = problem;
        return false;
    }
}
