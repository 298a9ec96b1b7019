using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Transport;

/// <summary>
/// <c>unix:PATH</c>: the agent binds and listens on a Unix socket (the host bind-mounts a private
/// directory at /.moat/chan and connects from outside). One connection is served at a time; a
/// newly accepted one replaces the previous.
/// </summary>
internal sealed unsafe class UnixSocketTransport : IAgentTransport
{
    private readonly int _listenFd;
    private readonly bool _refuseSandboxPeers;

    public UnixSocketTransport(string path)
    {
        if (!Libc.TryEncode(path, out var z))
            throw new ArgumentException("socket path contains NUL");
        fixed (byte* p = z)
            _listenFd = Native.moat_unix_listen(p);
        if (_listenFd < 0)
            throw new IOException($"cannot listen on unix:{path} (errno {-_listenFd})");
        // As PID 1 of a pid namespace, the host's connecting process is outside the namespace and
        // its pid reads as 0. A peer with a visible pid is a process of the sandbox itself
        // (root-requested code can reach the socket directory): it must not take over the agent.
        _refuseSandboxPeers = Libc.getpid() == 1;
    }

    public string Name => "unix";

    public bool ReplacesOnAccept => true;

    public AgentChannel? Accept()
    {
        while (true)
        {
            int fd = Native.moat_accept(_listenFd);
            if (fd < 0)
            {
                int e = -fd;
                if (e == Libc.EBADF || e == Libc.EINVAL)
                    return null;
                AgentLog.Write($"accept failed (errno {e})");
                Thread.Sleep(100); // EMFILE and friends: do not spin
                continue;
            }
            if (_refuseSandboxPeers)
            {
                int peer = Native.moat_peer_pid(fd);
                // Only a peer that is a live process of this namespace (other than the agent) is a
                // sandbox process; 0 (outside the namespace) or an unknown pid (gVisor's view of
                // a host-side peer) is the host.
                if (peer > 1 && Directory.Exists("/proc/" + peer))
                {
                    AgentLog.Write($"refused a connection from pid {peer} inside the sandbox");
                    Libc.close(fd);
                    continue;
                }
            }
            return new AgentChannel(fd, Name);
        }
    }

    public void Dispose() => Libc.close(_listenFd);
}
