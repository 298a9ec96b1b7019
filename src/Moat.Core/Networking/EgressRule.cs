using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Moat.Core.Errors;

namespace Moat.Core.Networking;

/// <summary>What an allow-list entry names.</summary>
public enum EgressRuleKind
{
    /// <summary>One domain name, e.g. <c>pypi.org</c>.</summary>
    Domain,
    /// <summary>Every name under a domain, e.g. <c>*.pythonhosted.org</c> (not the domain itself).</summary>
    Wildcard,
    /// <summary>An IP address or a CIDR block.</summary>
    Network,
}

/// <summary>
/// One entry of an <c>allow</c> list, parsed: <c>example.com</c>, <c>*.example.com</c>,
/// <c>example.com:8443</c>, <c>203.0.113.7</c>, <c>198.51.100.0/24:53</c>, <c>[2001:db8::1]:443</c>.
/// A domain without a port allows HTTP and HTTPS (80 and 443), recognised by the HTTP Host or the TLS
/// server name and dialled by Moat; with a port, that port only. An address or block allows TCP and
/// UDP to every port, or to the named one.
/// </summary>
public sealed record EgressRule
{
    /// <summary>Ports a domain rule without a port allows.</summary>
    public static readonly IReadOnlyList<int> WebPorts = [80, 443];

    /// <summary>Most entries an allow list may have.</summary>
    public const int MaxRules = 512;

    /// <summary>The entry as written (normalised: lower case, no trailing dot).</summary>
    public required string Text { get; init; }
    /// <summary>What it names.</summary>
    public required EgressRuleKind Kind { get; init; }
    /// <summary>For domain and wildcard rules: the domain (without <c>*.</c>).</summary>
    public string? Domain { get; init; }
    /// <summary>For network rules: the block (a single address is a /32 or /128).</summary>
    public IPNetwork? Network { get; init; }
    /// <summary>The one port allowed, or null for the default (web ports for domains, every port for networks).</summary>
    public int? Port { get; init; }

    /// <summary>Whether the rule names hosts by name.</summary>
    public bool IsName => Kind != EgressRuleKind.Network;

    /// <summary>Whether this rule allows <paramref name="port"/>.</summary>
    public bool AllowsPort(int port) => Port is { } p ? p == port : Kind == EgressRuleKind.Network || port is 80 or 443;

    /// <summary>Whether a (normalised) host name falls under this rule.</summary>
    public bool MatchesName(string name) => Kind switch
    {
        EgressRuleKind.Domain => name == Domain,
        EgressRuleKind.Wildcard => name.Length > Domain!.Length + 1 && name.EndsWith(Domain, StringComparison.Ordinal) && name[name.Length - Domain.Length - 1] == '.',
        _ => false,
    };

    /// <summary>Whether this rule allows an address (already checked against the always-denied ranges by the caller).</summary>
    public bool MatchesAddress(IPAddress address)
    {
        if (Network is not { } network)
            return false;
        if (address.IsIPv4MappedToIPv6)
            address = address.MapToIPv4();
        return network.BaseAddress.AddressFamily == address.AddressFamily && network.Contains(address);
    }

    /// <summary>Parses one entry; an error names the entry and what is wrong with it.</summary>
    public static EgressRule Parse(string entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var text = entry.Trim().ToLowerInvariant();
        if (text.Length is 0 or > 300)
            throw Bad(entry, "entries are 1-300 characters");
        string host;
        int? port = null;
        if (text.StartsWith('['))
        {
            int close = text.IndexOf(']');
            if (close < 0)
                throw Bad(entry, "an IPv6 address in brackets needs the closing ]");
            host = text[1..close];
            var rest = text[(close + 1)..];
            if (rest.Length > 0)
            {
                if (!rest.StartsWith(':'))
                    throw Bad(entry, "only :PORT may follow ]");
                port = ParsePort(entry, rest[1..]);
            }
            if (!host.Contains(':'))
                throw Bad(entry, "brackets are for IPv6 addresses");
        }
        else if (text.Count(c => c == ':') > 1)
        {
            host = text; // a bare IPv6 address or block: no port (write [ADDR]:PORT for one)
        }
        else if (text.IndexOf(':') is var colon and >= 0)
        {
            host = text[..colon];
            port = ParsePort(entry, text[(colon + 1)..]);
        }
        else
        {
            host = text;
        }

        if (host.Contains('/') || host.Contains(':') || LooksNumeric(host))
        {
            var network = ParseNetwork(entry, host);
            if (DeniedRanges.Covers(network))
                throw new MoatException(ErrorKind.InvalidArgument, "network_rule_denied", $"'{entry}' lies in a range Moat never lets sandboxes reach ({DeniedRanges.Classify(network.BaseAddress) ?? "reserved"}); private, loopback, link-local and metadata addresses are always denied");
            var canonical = network.PrefixLength == (network.BaseAddress.AddressFamily == AddressFamily.InterNetwork ? 32 : 128)
                ? network.BaseAddress.ToString()
                : network.ToString();
            if (network.BaseAddress.AddressFamily == AddressFamily.InterNetworkV6 && port is not null)
                canonical = $"[{canonical}]";
            return new EgressRule { Text = port is { } p ? $"{canonical}:{p}" : canonical, Kind = EgressRuleKind.Network, Network = network, Port = port };
        }

        if (host.EndsWith('.'))
            host = host[..^1];
        var kind = EgressRuleKind.Domain;
        if (host.StartsWith("*.", StringComparison.Ordinal))
        {
            kind = EgressRuleKind.Wildcard;
            host = host[2..];
            if (!host.Contains('.'))
                throw Bad(entry, "a wildcard must leave at least two labels (*.example.com, not *.com)");
        }
        if (NormalizeHost(host) is not { } domain)
            throw Bad(entry, host.Contains('*')
                ? "'*' is allowed only as the whole first label (*.example.com); use mode 'open' to allow everything"
                : "not a domain name, an IPv4 address (a.b.c.d), an IPv6 address or a CIDR block; internationalised names must be written in their xn-- form");
        var name = kind == EgressRuleKind.Wildcard ? "*." + domain : domain;
        return new EgressRule { Text = port is { } q ? $"{name}:{q}" : name, Kind = kind, Domain = domain, Port = port };
    }

    /// <summary>Parses an allow list, checking its size; duplicates are dropped.</summary>
    public static IReadOnlyList<EgressRule> ParseAll(IReadOnlyList<string> entries)
    {
        if (entries.Count > MaxRules)
            throw MoatException.Invalid("invalid_network", $"an allow list has at most {MaxRules} entries, got {entries.Count}");
        var rules = new List<EgressRule>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in entries)
        {
            var rule = Parse(entry);
            if (seen.Add(rule.Text))
                rules.Add(rule);
        }
        return rules;
    }

    /// <summary>
    /// A host name from a TLS server name, an HTTP Host or a DNS question, in the one form rules are
    /// matched against: ASCII, lower case, no trailing dot, LDH labels (underscores allowed, as DNS
    /// has them) of 1-63 characters, at most 253 in all, not all-numeric (that would be an address
    /// in disguise). Null when it is not such a name.
    /// </summary>
    public static string? NormalizeHost(ReadOnlySpan<char> host)
    {
        if (host.EndsWith("."))
            host = host[..^1];
        if (host.Length is 0 or > 253)
            return null;
        Span<char> lower = stackalloc char[host.Length];
        int labelLength = 0;
        bool labelHasLetter = false;
        bool lastLabelHasLetter = false;
        for (int i = 0; i < host.Length; i++)
        {
            char c = host[i];
            if (c == '.')
            {
                if (labelLength == 0 || lower[i - 1] == '-')
                    return null;
                labelLength = 0;
                labelHasLetter = false;
                lower[i] = c;
                continue;
            }
            if (char.IsAsciiLetter(c))
            {
                c = char.ToLowerInvariant(c);
                labelHasLetter = true;
            }
            else if (c == '-')
            {
                if (labelLength == 0)
                    return null;
                labelHasLetter = true;
            }
            else if (c == '_')
            {
                labelHasLetter = true;
            }
            else if (!char.IsAsciiDigit(c))
            {
                return null;
            }
            if (++labelLength > 63)
                return null;
            lower[i] = c;
            lastLabelHasLetter = labelHasLetter;
        }
        if (labelLength == 0 || lower[^1] == '-')
            return null;
        // "1.2.3.4", "2852039166", "0x7f.1": what resolvers would take for an address is not a name.
        if (!lastLabelHasLetter || LooksNumeric(new string(lower)))
            return null;
        return new string(lower);
    }

    private static bool LooksNumeric(string host)
    {
        // inet_aton's forms: decimal, octal and hex parts ("0x7f.1", "017700000001").
        var last = host.Split('.')[^1];
        if (last.Length == 0)
            return false;
        if (last.All(char.IsAsciiDigit))
            return true;
        return last.StartsWith("0x", StringComparison.Ordinal) && last[2..].All(char.IsAsciiHexDigit);
    }

    private static IPNetwork ParseNetwork(string entry, string host)
    {
        string address = host;
        int? prefix = null;
        if (host.IndexOf('/') is var slash and >= 0)
        {
            address = host[..slash];
            if (!int.TryParse(host.AsSpan(slash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int p))
                throw Bad(entry, "the prefix length after / must be a number");
            prefix = p;
        }
        if (!address.Contains(':') && !IsDottedQuad(address))
            throw Bad(entry, "IPv4 addresses are written as four decimal numbers (a.b.c.d)");
        if (!IPAddress.TryParse(address, out var ip) || (ip.AddressFamily == AddressFamily.InterNetworkV6 && ip.ScopeId != 0))
            throw Bad(entry, "not a valid IP address");
        int max = ip.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        if (ip.IsIPv4MappedToIPv6)
        {
            ip = ip.MapToIPv4();
            if (prefix is { } mapped)
                prefix = mapped - 96;
            max = 32;
        }
        int length = prefix ?? max;
        if (length < 0 || length > max)
            throw Bad(entry, $"the prefix length must be 0-{max}");
        var network = new IPNetwork(Truncate(ip, length), length);
        if (!network.BaseAddress.Equals(ip))
            throw Bad(entry, $"the address has bits set beyond the /{length} prefix; the block starts at {network.BaseAddress}");
        return network;
    }

    private static IPAddress Truncate(IPAddress ip, int length)
    {
        var bytes = ip.GetAddressBytes();
        for (int i = 0; i < bytes.Length; i++)
        {
            int keep = Math.Clamp(length - i * 8, 0, 8);
            bytes[i] &= (byte)(0xFF << (8 - keep));
        }
        return new IPAddress(bytes);
    }

    private static bool IsDottedQuad(string s)
    {
        var parts = s.Split('.');
        return parts.Length == 4 && parts.All(p => p.Length is > 0 and <= 3 && p.All(char.IsAsciiDigit) && int.Parse(p, CultureInfo.InvariantCulture) <= 255 && (p.Length == 1 || p[0] != '0'));
    }

    private static int ParsePort(string entry, string text)
    {
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
            throw Bad(entry, "the port must be a number from 1 to 65535");
        return port;
    }

    private static MoatException Bad(string entry, string why) =>
        MoatException.Invalid("invalid_network_rule", $"allow entry '{(entry.Length > 80 ? entry[..80] + "…" : entry)}': {why}");
}
