using Moat.Agent.Interop;

namespace Moat.Agent.Transport;

/// <summary>
/// A blocking <see cref="Stream"/> over a non-blocking file descriptor (poll, then read or
/// write). Meant for one dedicated thread: the async overloads complete synchronously, so
/// <see cref="Moat.Protocol.FrameReader"/> runs without the thread pool.
/// </summary>
internal sealed unsafe class FdStream(int fd) : Stream
{
    private volatile bool _interrupted;

    public void Interrupt() => _interrupted = true;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(Span<byte> buffer)
    {
        if (buffer.IsEmpty)
            return 0;
        while (true)
        {
            if (_interrupted)
                return 0;
            nint n;
            fixed (byte* p = buffer)
                n = Libc.read(fd, p, buffer.Length);
            if (n >= 0)
                return (int)n;
            int e = Libc.Errno;
            if (e == Libc.EINTR)
                continue;
            if (e != Libc.EAGAIN)
                throw new IOException($"channel read failed (errno {e})");
            Wait(Libc.POLLIN);
        }
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            if (_interrupted)
                throw new IOException("channel closed");
            nint n;
            fixed (byte* p = buffer)
                n = Libc.write(fd, p + done, buffer.Length - done);
            if (n >= 0)
            {
                done += (int)n;
                continue;
            }
            int e = Libc.Errno;
            if (e == Libc.EINTR)
                continue;
            if (e != Libc.EAGAIN)
                throw new IOException($"channel write failed (errno {e})");
            Wait(Libc.POLLOUT);
        }
    }

    private void Wait(short events)
    {
        var pfd = new Libc.PollFd { Fd = fd, Events = events };
        // No timeout: an idle agent must not wake up periodically (thousands of them share a
        // host). A socket is woken by shutdown(); a serial port ends with POLLHUP when the host
        // goes, and is never interrupted otherwise.
        Libc.poll(&pfd, 1, -1);
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        => new(Read(buffer.Span));

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Write(buffer.Span);
        return ValueTask.CompletedTask;
    }

    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
