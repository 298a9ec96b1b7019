using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Moat.Networking.Dns;

/// <summary>A question parsed from a sandbox's DNS query.</summary>
/// <param name="Id">Query id.</param>
/// <param name="RecursionDesired">The RD bit.</param>
/// <param name="Name">The name asked about, lower case, without the trailing dot ("" for the root).</param>
/// <param name="Type">QTYPE.</param>
/// <param name="Class">QCLASS.</param>
/// <param name="Question">The question section as sent (copied into the answer, keeping the asker's letter case).</param>
/// <param name="EdnsPayload">The UDP payload size the asker accepts (512 without EDNS).</param>
public sealed record DnsQuery(ushort Id, bool RecursionDesired, string Name, ushort Type, ushort Class, byte[] Question, int EdnsPayload);

/// <summary>What an upstream server answered.</summary>
/// <param name="Rcode">Response code (0 NOERROR, 3 NXDOMAIN, ...).</param>
/// <param name="Addresses">Addresses of the asked type for the name (after following CNAMEs in the answer).</param>
/// <param name="Ttl">The smallest TTL on the way, in seconds.</param>
/// <param name="Truncated">The TC bit: ask again over TCP.</param>
public sealed record DnsAnswer(int Rcode, IReadOnlyList<IPAddress> Addresses, uint Ttl, bool Truncated);

/// <summary>
/// The small part of the DNS wire format Moat speaks (RFC 1035): questions from sandboxes (parsed
/// strictly — they are hostile input), A and AAAA answers to them, and A/AAAA queries to upstream
/// servers with their answers (compression followed, loops refused).
/// </summary>
public static class DnsMessage
{
    /// <summary>QTYPE A.</summary>
    public const ushort TypeA = 1;
    /// <summary>QTYPE CNAME.</summary>
    public const ushort TypeCname = 5;
    /// <summary>QTYPE AAAA.</summary>
    public const ushort TypeAaaa = 28;
    /// <summary>QTYPE OPT (EDNS).</summary>
    public const ushort TypeOpt = 41;
    /// <summary>RCODE NOERROR.</summary>
    public const int NoError = 0;
    /// <summary>RCODE FORMERR.</summary>
    public const int FormErr = 1;
    /// <summary>RCODE SERVFAIL.</summary>
    public const int ServFail = 2;
    /// <summary>RCODE NXDOMAIN.</summary>
    public const int NxDomain = 3;
    /// <summary>RCODE NOTIMP.</summary>
    public const int NotImp = 4;
    /// <summary>RCODE REFUSED.</summary>
    public const int Refused = 5;

    /// <summary>Parses a query; false for anything that is not exactly one well-formed question.</summary>
    public static bool TryParseQuery(ReadOnlySpan<byte> packet, out DnsQuery? query)
    {
        query = null;
        if (packet.Length < 17 || packet.Length > 65535)
            return false;
        ushort id = BinaryPrimitives.ReadUInt16BigEndian(packet);
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(packet[2..]);
        if ((flags & 0x8000) != 0 || ((flags >> 11) & 0xF) != 0)
            return false; // a response, or not a standard query
        if (BinaryPrimitives.ReadUInt16BigEndian(packet[4..]) != 1 || BinaryPrimitives.ReadUInt16BigEndian(packet[6..]) != 0 || BinaryPrimitives.ReadUInt16BigEndian(packet[8..]) != 0)
            return false;
        int additional = BinaryPrimitives.ReadUInt16BigEndian(packet[10..]);
        int at = 12;
        var name = new StringBuilder();
        while (true)
        {
            if (at >= packet.Length)
                return false;
            int length = packet[at++];
            if (length == 0)
                break;
            if (length > 63 || at + length > packet.Length)
                return false; // compression pointers have no place in a question
            if (name.Length > 0)
                name.Append('.');
            foreach (byte b in packet.Slice(at, length))
            {
                if (b < 0x21 || b > 0x7E || b == '.')
                    return false;
                name.Append(char.ToLowerInvariant((char)b));
            }
            at += length;
            if (name.Length > 253)
                return false;
        }
        if (at + 4 > packet.Length)
            return false;
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(packet[at..]);
        ushort cls = BinaryPrimitives.ReadUInt16BigEndian(packet[(at + 2)..]);
        var question = packet[12..(at + 4)].ToArray();
        at += 4;
        int payload = 512;
        // One OPT record is all an additional section of a query may carry.
        if (additional == 1 && at + 11 <= packet.Length && packet[at] == 0 && BinaryPrimitives.ReadUInt16BigEndian(packet[(at + 1)..]) == TypeOpt)
            payload = Math.Clamp((int)BinaryPrimitives.ReadUInt16BigEndian(packet[(at + 3)..]), 512, 4096);
        query = new DnsQuery(id, (flags & 0x0100) != 0, name.ToString(), type, cls, question, payload);
        return true;
    }

    /// <summary>The answer to a sandbox's query: <paramref name="rcode"/> and, for NOERROR, the addresses of the asked type.</summary>
    public static byte[] BuildResponse(DnsQuery query, int rcode, IReadOnlyList<IPAddress> addresses, uint ttl, int maxSize)
    {
        var answers = addresses.Where(a => (query.Type == TypeA && a.AddressFamily == AddressFamily.InterNetwork) || (query.Type == TypeAaaa && a.AddressFamily == AddressFamily.InterNetworkV6)).ToList();
        bool truncated = false;
        int size = 12 + query.Question.Length;
        int fits = 0;
        foreach (var a in answers)
        {
            int rr = 12 + (a.AddressFamily == AddressFamily.InterNetwork ? 4 : 16);
            if (size + rr > maxSize)
            {
                truncated = true;
                break;
            }
            size += rr;
            fits++;
        }
        var packet = new byte[size];
        var span = packet.AsSpan();
        BinaryPrimitives.WriteUInt16BigEndian(span, query.Id);
        ushort flags = (ushort)(0x8000 | 0x0080 | (query.RecursionDesired ? 0x0100 : 0) | (truncated ? 0x0200 : 0) | (rcode & 0xF));
        BinaryPrimitives.WriteUInt16BigEndian(span[2..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], 1);
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)fits);
        query.Question.CopyTo(span[12..]);
        int at = 12 + query.Question.Length;
        foreach (var a in answers.Take(fits))
        {
            BinaryPrimitives.WriteUInt16BigEndian(span[at..], 0xC00C); // the name of the question
            BinaryPrimitives.WriteUInt16BigEndian(span[(at + 2)..], query.Type);
            BinaryPrimitives.WriteUInt16BigEndian(span[(at + 4)..], 1);
            BinaryPrimitives.WriteUInt32BigEndian(span[(at + 6)..], ttl);
            var bytes = a.GetAddressBytes();
            BinaryPrimitives.WriteUInt16BigEndian(span[(at + 10)..], (ushort)bytes.Length);
            bytes.CopyTo(span[(at + 12)..]);
            at += 12 + bytes.Length;
        }
        return packet;
    }

    /// <summary>A minimal error answer for a packet that could not be parsed as a query (FORMERR), when at least the id is there.</summary>
    public static byte[]? BuildFormatError(ReadOnlySpan<byte> packet)
    {
        if (packet.Length < 12 || (packet[2] & 0x80) != 0)
            return null;
        var reply = new byte[12];
        packet[..2].CopyTo(reply);
        reply[2] = 0x80;
        reply[3] = FormErr;
        return reply;
    }

    /// <summary>A recursive query for <paramref name="name"/> of <paramref name="type"/>, with EDNS (1232-byte payload).</summary>
    public static byte[] BuildQuery(ushort id, string name, ushort type)
    {
        var labels = name.Length == 0 ? [] : name.Split('.');
        int size = 12 + labels.Sum(l => l.Length + 1) + 1 + 4 + 11;
        var packet = new byte[size];
        var span = packet.AsSpan();
        BinaryPrimitives.WriteUInt16BigEndian(span, id);
        BinaryPrimitives.WriteUInt16BigEndian(span[2..], 0x0100);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], 1);
        BinaryPrimitives.WriteUInt16BigEndian(span[10..], 1);
        int at = 12;
        foreach (var label in labels)
        {
            span[at++] = (byte)label.Length;
            at += Encoding.ASCII.GetBytes(label, span[at..]);
        }
        span[at++] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(span[at..], type);
        BinaryPrimitives.WriteUInt16BigEndian(span[(at + 2)..], 1);
        at += 4;
        // OPT: root name, type 41, payload 1232, no extended flags, no options.
        span[at] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(span[(at + 1)..], TypeOpt);
        BinaryPrimitives.WriteUInt16BigEndian(span[(at + 3)..], 1232);
        return packet;
    }

    /// <summary>
    /// Parses an upstream answer to the query <paramref name="id"/> for <paramref name="name"/>/<paramref name="type"/>;
    /// null when it is not that answer (wrong id or question: a spoof or a stray).
    /// </summary>
    public static DnsAnswer? ParseResponse(ReadOnlySpan<byte> packet, ushort id, string name, ushort type)
    {
        if (packet.Length < 12 || BinaryPrimitives.ReadUInt16BigEndian(packet) != id)
            return null;
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(packet[2..]);
        if ((flags & 0x8000) == 0)
            return null;
        int rcode = flags & 0xF;
        bool truncated = (flags & 0x0200) != 0;
        int qd = BinaryPrimitives.ReadUInt16BigEndian(packet[4..]);
        int an = BinaryPrimitives.ReadUInt16BigEndian(packet[6..]);
        if (qd != 1)
            return truncated ? new DnsAnswer(rcode, [], 0, true) : null;
        int at = 12;
        if (ReadName(packet, ref at) is not { } asked || !string.Equals(asked, name, StringComparison.OrdinalIgnoreCase) || at + 4 > packet.Length)
            return null;
        if (BinaryPrimitives.ReadUInt16BigEndian(packet[at..]) != type)
            return null;
        at += 4;
        var records = new List<(string Owner, ushort Type, uint Ttl, ReadOnlyMemory<byte> Data, string? Target)>();
        var copy = packet.ToArray();
        for (int i = 0; i < an; i++)
        {
            if (ReadName(packet, ref at) is not { } owner || at + 10 > packet.Length)
                return truncated ? new DnsAnswer(rcode, [], 0, true) : null;
            ushort rtype = BinaryPrimitives.ReadUInt16BigEndian(packet[at..]);
            uint ttl = BinaryPrimitives.ReadUInt32BigEndian(packet[(at + 4)..]);
            int rdlength = BinaryPrimitives.ReadUInt16BigEndian(packet[(at + 8)..]);
            at += 10;
            if (at + rdlength > packet.Length)
                return null;
            string? target = null;
            if (rtype == TypeCname)
            {
                int t = at;
                target = ReadName(packet, ref t);
            }
            records.Add((owner, rtype, ttl, copy.AsMemory(at, rdlength), target));
            at += rdlength;
        }
        // Follow the CNAME chain from the asked name (bounded), collecting the final addresses.
        var current = name;
        uint minTtl = uint.MaxValue;
        var addresses = new List<IPAddress>();
        for (int hop = 0; hop < 10; hop++)
        {
            var cname = records.FirstOrDefault(r => r.Type == TypeCname && string.Equals(r.Owner, current, StringComparison.OrdinalIgnoreCase) && r.Target is not null);
            foreach (var r in records.Where(r => r.Type == type && string.Equals(r.Owner, current, StringComparison.OrdinalIgnoreCase)))
            {
                if ((type == TypeA && r.Data.Length == 4) || (type == TypeAaaa && r.Data.Length == 16))
                {
                    addresses.Add(new IPAddress(r.Data.Span));
                    minTtl = Math.Min(minTtl, r.Ttl);
                }
            }
            if (addresses.Count > 0 || cname.Target is null)
                break;
            minTtl = Math.Min(minTtl, cname.Ttl);
            current = cname.Target;
        }
        return new DnsAnswer(rcode, addresses, minTtl == uint.MaxValue ? 0 : minTtl, truncated);
    }

    /// <summary>Reads a (possibly compressed) name; null when malformed or looping.</summary>
    private static string? ReadName(ReadOnlySpan<byte> packet, ref int at)
    {
        var sb = new StringBuilder();
        int position = at;
        bool jumped = false;
        for (int steps = 0; steps < 128; steps++)
        {
            if (position >= packet.Length)
                return null;
            int length = packet[position];
            if (length == 0)
            {
                if (!jumped)
                    at = position + 1;
                return sb.ToString();
            }
            if ((length & 0xC0) == 0xC0)
            {
                if (position + 1 >= packet.Length)
                    return null;
                int target = ((length & 0x3F) << 8) | packet[position + 1];
                if (!jumped)
                    at = position + 2;
                jumped = true;
                if (target >= position)
                    return null; // pointers go backwards, or they loop
                position = target;
                continue;
            }
            if (length > 63 || position + 1 + length > packet.Length)
                return null;
            if (sb.Length > 0)
                sb.Append('.');
            sb.Append(Encoding.ASCII.GetString(packet.Slice(position + 1, length)));
            if (sb.Length > 255)
                return null;
            position += 1 + length;
        }
        return null;
    }
}
