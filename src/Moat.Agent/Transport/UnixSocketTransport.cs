using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Transport;

/// <summary>
/// <c>unix:PATH</c>: the agent binds and listens on a Unix socket (the host bind-mounts a private
/// directory at /.moat/chan and connects from outside). One connection is served at a time; a
/// newly accepted one replaces the previous.
/// The host can park the transport (SIGUSR1) before a memory checkpoint — a sandbox holding a
/// socket bound on the host cannot be saved — and un-park it (SIGUSR2) once the sandbox runs
/// again, possibly restored elsewhere: the listener is then bound anew at the same path, which is
/// the new sandbox's own channel directory.
/// </summary>
internal sealed unsafe class UnixSocketTransport : IAgentTransport
{
    private int _listenFd;
    private readonly byte[] _path;
    private readonly bool _refuseSandboxPeers;
    private volatile bool _parkRequested;
    private readonly SemaphoreSlim _unpark = new(0, 1);
    private readonly int _wakeRead, _wakeWrite;

    public UnixSocketTransport(string path)
    {
        if (!Libc.TryEncode(path, out var z))
            throw new ArgumentException("socket path contains NUL");
        _path = z;
        // accept() blocks in a poll on the listener and this pipe: a park request (from a signal
        // handler's thread) wakes it on every kernel, gVisor's included.
        int* fds = stackalloc int[2];
        if (Libc.pipe2(fds, 0x80000 /* O_CLOEXEC */) < 0)
            throw new IOException("cannot create the transport's wake pipe");
        (_wakeRead, _wakeWrite) = (fds[0], fds[1]);
        _listenFd = Listen(z);
        if (_listenFd < 0)
            throw new IOException($"cannot listen on unix:{path} (errno {-_listenFd})");
        // As PID 1 of a pid namespace, the host's connecting process is outside the namespace and
        // its pid reads as 0. A peer with a visible pid is a process of the sandbox itself
        // (root-requested code can reach the socket directory): it must not take over the agent.
        _refuseSandboxPeers = Libc.getpid() == 1;
    }

    private static int Listen(byte[] path)
    {
        fixed (byte* p = path)
            return Native.moat_unix_listen(p);
    }

    public string Name => "unix";

    /// <inheritdoc />
    public void RequestPark()
    {
        _parkRequested = true;
        byte b = 1;
        Libc.write(_wakeWrite, &b, 1);
    }

    /// <inheritdoc />
    public void RequestUnpark()
    {
        if (_unpark.CurrentCount == 0)
            _unpark.Release();
    }

    /// <inheritdoc />
    public bool ParkIfRequested(Action closeSessions)
    {
        if (!_parkRequested)
            return false;
        closeSessions();
        Libc.close(_listenFd);
        _listenFd = -1;
        // A marker beside the socket tells the host the channel is parked (gVisor's gofer cannot
        // unlink a host socket; the host removes the stale name itself).
        var marker = System.Text.Encoding.UTF8.GetString(_path.AsSpan(0, _path.Length - 1)) + ".parked";
        File.WriteAllText(marker, "parked\n");
        AgentLog.Info("channel parked for a checkpoint");
        _unpark.Wait();
        _parkRequested = false;
        try
        {
            File.Delete(marker);
        }
        catch (IOException)
        {
        }
        byte* drain = stackalloc byte[64];
        while (poll(new PollFd { Fd = _wakeRead, Events = 1 }, 0) > 0 && Libc.read(_wakeRead, drain, 64) > 0)
        {
        }
        while ((_listenFd = Listen(_path)) < 0)
        {
            AgentLog.Write($"cannot listen again after a checkpoint (errno {-_listenFd})");
            Thread.Sleep(100);
        }
        AgentLog.Info("channel listening again after a checkpoint");
        return true;
    }

    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    private static int poll(PollFd one, int timeoutMs) => poll(&one, 1, timeoutMs);

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int poll(PollFd* fds, nuint count, int timeoutMs);

    /// <summary>Waits until the listener has a connection or a park was requested.</summary>
    private void WaitReadable()
    {
        PollFd* fds = stackalloc PollFd[2];
        fds[0] = new PollFd { Fd = _listenFd, Events = 1 /* POLLIN */ };
        fds[1] = new PollFd { Fd = _wakeRead, Events = 1 };
        while (!_parkRequested && poll(fds, 2, -1) < 0)
        {
        }
    }

    public bool ReplacesOnAccept => true;

    public AgentChannel? Accept()
    {
        while (true)
        {
            WaitReadable();
            if (_parkRequested)
                return null;
            int fd = Native.moat_accept(_listenFd);
            if (fd < 0)
            {
                int e = -fd;
                if (e == Libc.EBADF || e == Libc.EINVAL || _parkRequested)
                    return null;
                AgentLog.Write($"accept failed (errno {e})");
                Thread.Sleep(100); // EMFILE and friends: do not spin
                continue;
            }
            if (_parkRequested)
            {
                Libc.close(fd);
                return null;
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

    public void Dispose()
    {
        Libc.close(_listenFd);
        Libc.close(_wakeRead);
        Libc.close(_wakeWrite);
        _unpark.Dispose();
    }
}
