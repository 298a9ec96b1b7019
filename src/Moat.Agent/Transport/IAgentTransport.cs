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

    /// <summary>Asks the transport to let go of every host resource before a memory checkpoint (from a signal; returns at once).</summary>
    void RequestPark() { }

    /// <summary>Lets a parked transport listen again (after the checkpoint, or in the restored sandbox).</summary>
    void RequestUnpark() { }

    /// <summary>
    /// When a park was requested (<see cref="Accept"/> then returned null): closes the sessions,
    /// releases the channel, blocks until un-parked, listens again and returns true. False otherwise.
    /// </summary>
    bool ParkIfRequested(Action closeSessions) => false;

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
