using System.Net;
using Moat.Core.Sandboxes;

namespace Moat.Core.Networking;

/// <summary>
/// The network side of every sandbox on this node: its namespace and link, its firewall rules, its
/// egress policy (enforced by Moat's egress proxy and resolver), its connection log, and the way in
/// for inbound connections. The manager calls it at create, policy change, teardown and recovery;
/// runtimes get what it made in <see cref="Runtimes.SandboxLaunch.Network"/>.
/// </summary>
public interface INetworkController
{
    /// <summary>The modes this node enforces; <see cref="NetworkMode.None"/> is always among them.</summary>
    IReadOnlyList<NetworkMode> Modes { get; }

    /// <summary>Why only <c>none</c> is available here (not root, nftables missing...), or null.</summary>
    string? Problem { get; }

    /// <summary>
    /// Before the sandbox starts: makes its network namespace, link and rules and starts enforcing
    /// <paramref name="policy"/>. Null for a policy that needs no interface (none): the runtime then
    /// gives the sandbox a namespace of its own with loopback only. On failure nothing is left.
    /// </summary>
    Task<NetworkAttachment?> AttachAsync(string sandboxId, NetworkPolicy policy, CancellationToken cancellationToken);

    /// <summary>
    /// Gives a running sandbox that started without an interface one, in the network namespace of
    /// <paramref name="pid"/> (a process of the sandbox that shares the host's kernel: the container tier).
    /// </summary>
    Task<NetworkAttachment> AttachRunningAsync(string sandboxId, int pid, NetworkPolicy policy, CancellationToken cancellationToken);

    /// <summary>
    /// For a VM: a tap device in the sandbox's network namespace, bridged to its link. The VMM runs
    /// in <see cref="TapDevice.NamespacePath"/> and opens <see cref="TapDevice.Name"/>; the guest takes
    /// the link's address. Call after <see cref="AttachAsync"/> returned an attachment.
    /// </summary>
    Task<TapDevice> CreateTapAsync(string sandboxId, CancellationToken cancellationToken);

    /// <summary>Whether the sandbox has an interface (attached and not yet detached).</summary>
    bool IsAttached(string sandboxId);

    /// <summary>
    /// Switches a sandbox to another policy. Connections and flows the new policy does not allow
    /// are closed. A sandbox without an interface can only switch to <c>none</c>.
    /// </summary>
    Task SetPolicyAsync(string sandboxId, NetworkPolicy policy, CancellationToken cancellationToken);

    /// <summary>After a restart: resumes enforcing the policy of a re-adopted sandbox that had an interface.</summary>
    Task RestoreAsync(string sandboxId, NetworkPolicy policy, CancellationToken cancellationToken);

    /// <summary>Removes the sandbox's namespace, link, rules and address; closes its connections. Idempotent; its log stays readable.</summary>
    Task DetachAsync(string sandboxId, CancellationToken cancellationToken);

    /// <summary>After recovery: removes whatever this node made for sandboxes that are not in <paramref name="alive"/>.</summary>
    Task PruneAsync(IReadOnlySet<string> alive, CancellationToken cancellationToken);

    /// <summary>Raised after a sandbox's connection attempt or DNS question is recorded in its log (sandbox id, event); handlers must not block.</summary>
    event Action<string, EgressEvent>? EgressRecorded;

    /// <summary>The sandbox's connection log after sequence number <paramref name="after"/>, oldest first.</summary>
    Task<EgressLogPage> ReadLogAsync(string sandboxId, long after, int limit, CancellationToken cancellationToken);

    /// <summary>
    /// Opens a TCP connection to <paramref name="port"/> inside a sandbox (its loopback where the
    /// host can reach it, else its own address) for the inbound proxy.
    /// </summary>
    Task<Stream> ConnectInboundAsync(InboundTarget target, int port, CancellationToken cancellationToken);
}

/// <summary>What the network made for a sandbox, for its runtime.</summary>
public sealed record NetworkAttachment
{
    /// <summary>The network namespace the sandbox runs in (<c>/run/netns/...</c>).</summary>
    public required string NamespacePath { get; init; }
    /// <summary>The sandbox's interface in that namespace.</summary>
    public string Interface { get; init; } = "eth0";
    /// <summary>The sandbox's IPv4 address.</summary>
    public required IPAddress Address { get; init; }
    /// <summary>Prefix length of the link.</summary>
    public int PrefixLength { get; init; } = 30;
    /// <summary>The default gateway (Moat's end of the link).</summary>
    public required IPAddress Gateway { get; init; }
    /// <summary>The resolver the sandbox must use (Moat's; it answers only allowed names).</summary>
    public required IPAddress Dns { get; init; }
    /// <summary>MTU of the link.</summary>
    public int Mtu { get; init; } = 1500;
    /// <summary>The resolv.conf the sandbox should see.</summary>
    public string ResolvConf => $"nameserver {Dns}\noptions ndots:0 attempts:2 timeout:2\n";
}

/// <summary>A tap device for a VM, in the sandbox's network namespace.</summary>
public sealed record TapDevice
{
    /// <summary>Interface name to open (QEMU: <c>-netdev tap,ifname=NAME,script=no,downscript=no</c>).</summary>
    public required string Name { get; init; }
    /// <summary>The namespace the VMM must run in to open it (<c>nsenter --net=PATH</c>).</summary>
    public required string NamespacePath { get; init; }
    /// <summary>MAC address to give the guest's NIC.</summary>
    public required string Mac { get; init; }
    /// <summary>The guest's IPv4 address.</summary>
    public required IPAddress Address { get; init; }
    /// <summary>Prefix length.</summary>
    public int PrefixLength { get; init; } = 30;
    /// <summary>The guest's default gateway.</summary>
    public required IPAddress Gateway { get; init; }
    /// <summary>The guest's resolver.</summary>
    public required IPAddress Dns { get; init; }
    /// <summary>MTU.</summary>
    public int Mtu { get; init; } = 1500;
    /// <summary>A Linux kernel <c>ip=</c> argument that configures the guest's eth0.</summary>
    public string KernelIpArgument => $"ip={Address}::{Gateway}:{Netmask(PrefixLength)}::eth0:off";

    private static string Netmask(int prefix) => new IPAddress(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(prefix == 0 ? 0u : uint.MaxValue << (32 - prefix))).ToString();
}

/// <summary>Where an inbound connection goes.</summary>
/// <param name="SandboxId">The sandbox.</param>
/// <param name="SharesHostKernel">Its processes use the host's network stack in its namespace (container tier), so its loopback is reachable from there.</param>
/// <param name="Pid">A host pid in the sandbox's network namespace, for sandboxes without an interface.</param>
public sealed record InboundTarget(string SandboxId, bool SharesHostKernel, int? Pid);

/// <summary>One connection attempt or DNS question of a sandbox.</summary>
public sealed record EgressEvent
{
    /// <summary>Sequence number within the sandbox's log, from 1.</summary>
    public long Seq { get; init; }
    /// <summary>When the attempt started.</summary>
    public DateTimeOffset Time { get; init; }
    /// <summary>tcp, udp or dns.</summary>
    public required string Protocol { get; init; }
    /// <summary>allowed or denied.</summary>
    public required string Verdict { get; init; }
    /// <summary>Why (the rule that allowed it, or what denied it: not_allowed, private, metadata, smtp, connection_limit, ...).</summary>
    public string? Reason { get; init; }
    /// <summary>The destination name: TLS server name, HTTP Host, the name Moat resolved the address for, or the DNS question.</summary>
    public string? Name { get; init; }
    /// <summary>The address Moat dialled (or would have), or the addresses a DNS answer gave.</summary>
    public string? Address { get; init; }
    /// <summary>The address the sandbox itself aimed at, when different from <see cref="Address"/>.</summary>
    public string? RequestedAddress { get; init; }
    /// <summary>Destination port.</summary>
    public int Port { get; init; }
    /// <summary>Bytes from the sandbox to the destination.</summary>
    public long BytesOut { get; init; }
    /// <summary>Bytes from the destination to the sandbox.</summary>
    public long BytesIn { get; init; }
    /// <summary>How long the connection lasted (0 for refusals).</summary>
    public double DurationMs { get; init; }
    /// <summary>How it ended, for allowed connections: closed, reset, policy_change, upstream_failed, timeout...</summary>
    public string? End { get; init; }
}

/// <summary>A page of a sandbox's connection log.</summary>
/// <param name="Events">Oldest first.</param>
/// <param name="Next">Pass as <c>after</c> for the next page.</param>
/// <param name="Dropped">Events not kept because the log of this sandbox reached its size limit.</param>
public sealed record EgressLogPage(IReadOnlyList<EgressEvent> Events, long Next, long Dropped);
