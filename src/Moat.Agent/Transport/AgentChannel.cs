using Moat.Agent.Interop;

namespace Moat.Agent.Transport;

/// <summary>
/// One host connection: a non-blocking, close-on-exec file descriptor. The session reads it on
/// its own thread through <see cref="Reader"/> and writes it without blocking from anywhere.
/// </summary>
internal sealed class AgentChannel : IDisposable
{
    private int _fd;
    private int _interrupted;

    public AgentChannel(int fd, string transport)
    {
        _fd = fd;
        Transport = transport;
        Reader = new FdStream(fd);
    }

    public int Fd => _fd;

    public string Transport { get; }

    /// <summary>Blocking read side for the frame reader.</summary>
    public FdStream Reader { get; }

    /// <summary>Wakes a reader blocked on the channel and makes further I/O fail; the fd stays valid until <see cref="Dispose"/>.</summary>
    public void Interrupt()
    {
        if (Interlocked.Exchange(ref _interrupted, 1) != 0)
            return;
        Reader.Interrupt();
        Libc.shutdown(_fd, Libc.SHUT_RDWR);
    }

    public void Dispose()
    {
        Interrupt();
        int fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0)
            Libc.close(fd);
    }
}
