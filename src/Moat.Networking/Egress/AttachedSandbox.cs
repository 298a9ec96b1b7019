using System.Collections.Concurrent;
using System.Net;
using Moat.Core.Networking;
using Moat.Networking.Plumbing;

namespace Moat.Networking.Egress;

/// <summary>A connection or UDP flow the proxy carries for a sandbox, re-judged when the policy changes.</summary>
internal interface IProxiedFlow
{
    /// <summary>tcp or udp.</summary>
    string Protocol { get; }
    /// <summary>The name the connection was allowed for, if any.</summary>
    string? Name { get; }
    /// <summary>The address dialled.</summary>
    IPAddress Address { get; }
    /// <summary>The port.</summary>
    int Port { get; }
    /// <summary>Ends the flow (its log entry says <paramref name="why"/>).</summary>
    void Close(string why);
}

/// <summary>What the network holds for one attached sandbox: its link, policy, flows, budgets and pins.</summary>
internal sealed class AttachedSandbox
{
    private const int MaxPins = 4096;
    private readonly ConcurrentDictionary<IProxiedFlow, byte> _flows = new();
    private readonly ConcurrentDictionary<IPAddress, (string Name, long Expires)[]> _pins = new();
    private volatile ISandboxNetwork _policy;
    private int _open;

    public AttachedSandbox(string id, Lease lease, ISandboxNetwork policy, NetworkOptions options)
    {
        Id = id;
        Lease = lease;
        _policy = policy;
        if (options.EgressBytesPerSecond > 0)
            Egress = new TokenBucket(options.EgressBytesPerSecond);
        if (options.IngressBytesPerSecond > 0)
            Ingress = new TokenBucket(options.IngressBytesPerSecond);
    }

    public string Id { get; }

    public Lease Lease { get; }

    /// <summary>The policy in force; replaced atomically on a change.</summary>
    public ISandboxNetwork Policy
    {
        get => _policy;
        set => _policy = value;
    }

    public TokenBucket? Egress { get; }

    public TokenBucket? Ingress { get; }

    /// <summary>Cancelled when the sandbox is detached: every flow ends.</summary>
    public CancellationTokenSource Lifetime { get; } = new();

    /// <summary>Open flows now.</summary>
    public int OpenFlows => Volatile.Read(ref _open);

    /// <summary>Counts a new flow against the limit; false when the sandbox is at its limit.</summary>
    public bool TryOpen(int limit)
    {
        while (true)
        {
            int open = Volatile.Read(ref _open);
            if (open >= limit)
                return false;
            if (Interlocked.CompareExchange(ref _open, open + 1, open) == open)
                return true;
        }
    }

    /// <summary>Gives back a slot taken by <see cref="TryOpen"/>.</summary>
    public void Closed() => Interlocked.Decrement(ref _open);

    public void Track(IProxiedFlow flow) => _flows.TryAdd(flow, 0);

    public void Untrack(IProxiedFlow flow) => _flows.TryRemove(flow, out _);

    public IReadOnlyList<IProxiedFlow> Flows => [.. _flows.Keys];

    /// <summary>Remembers that Moat's resolver told this sandbox <paramref name="name"/> is at <paramref name="addresses"/>.</summary>
    public void Pin(string name, IEnumerable<IPAddress> addresses, TimeSpan ttl)
    {
        // Kept a little past the TTL: programs connect after they resolve, sometimes late.
        long expires = Environment.TickCount64 + (long)(ttl + TimeSpan.FromSeconds(60)).TotalMilliseconds;
        long now = Environment.TickCount64;
        if (_pins.Count >= MaxPins)
        {
            foreach (var (address, entries) in _pins)
            {
                if (entries.All(e => e.Expires <= now) || _pins.Count >= MaxPins)
                    _pins.TryRemove(address, out _);
            }
        }
        foreach (var address in addresses)
        {
            _pins.AddOrUpdate(address, _ => [(name, expires)], (_, old) =>
                [.. old.Where(e => e.Name != name && e.Expires > now).Take(15), (name, expires)]);
        }
    }

    /// <summary>The names Moat resolved <paramref name="address"/> for, for this sandbox (unexpired).</summary>
    public IEnumerable<string> PinnedNames(IPAddress address)
    {
        if (!_pins.TryGetValue(address, out var entries))
            return [];
        long now = Environment.TickCount64;
        return entries.Where(e => e.Expires > now).Select(e => e.Name);
    }
}
