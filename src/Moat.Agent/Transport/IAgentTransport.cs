namespace Moat.Agent.Transport;

/// <summary>
/// Where host connections come from. One implementation per channel kind: a Unix socket the
/// agent listens on (container and gVisor tiers) or a virtio-serial port (microVM tier).
/// </summary>
internal interface IAgentTransport : IDisposable
{
    /// <summary>Name reported in HelloAck.transport ("unix", "virtio-serial").</summary>
    string Name { get; }

    /// <summary>
    /// Blocks until the next host connection is available and returns it; null when the
    /// transport can produce no more. The caller owns the result.
    /// </summary>
    AgentChannel? Accept();

    /// <summary>Whether a connection returned earlier can coexist with a newer one (sockets: yes; a serial port: no).</summary>
    bool ReplacesOnAccept { get; }

    /// <summary>
    /// Creates the transport named by a --listen argument: <c>unix:PATH</c> or <c>virtio:NAME</c>.
    /// </summary>
    static IAgentTransport Create(string spec)
    {
        if (spec.StartsWith("unix:", StringComparison.Ordinal))
            return new UnixSocketTransport(spec["unix:".Length..]);
        if (spec.StartsWith("virtio:", StringComparison.Ordinal))
            return new VirtioSerialTransport(spec["virtio:".Length..]);
        throw new ArgumentException($"unknown transport '{spec}' (expected unix:PATH or virtio:NAME)");
    }
}
