using Moat.Agent.Core;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Session;

/// <summary>
/// Frames waiting to go to the host, written without ever blocking the caller on the channel:
/// whoever enqueues writes straight away when the channel has room (no thread hop on the exec
/// fast path); otherwise the bytes wait and the I/O loop resumes when epoll says the channel is
/// writable. Data frames are bounded by flow-control credit; everything else is bounded by
/// <see cref="HighWater"/>, above which callers that may block (the frame reader, workers) wait:
/// that is the backpressure on a host that stops reading.
/// </summary>
internal sealed unsafe class OutboundQueue(int fd)
{
    private const int HighWater = 4 << 20;
    private const int CoalesceLimit = 16 * 1024;

    private readonly object _gate = new();
    private readonly Queue<(byte[] Buffer, int Length, bool Pooled)> _frames = new();
    private byte[]? _coalesce;
    private int _headOffset;
    private long _queuedBytes;
    private bool _waitingForWritable;
    private bool _closed;

    /// <summary>Set when the channel failed on write; the session closes.</summary>
    public Action? Failed { get; set; }

    public bool IsClosed
    {
        get { lock (_gate) return _closed; }
    }

    /// <summary>
    /// Queues a whole frame (<paramref name="length"/> -1: all of <paramref name="buffer"/>);
    /// <paramref name="pooled"/> buffers go back to <see cref="FramePool"/> once written.
    /// </summary>
    public void Enqueue(byte[] buffer, int length, bool pooled, bool mayBlock = false)
    {
        if (length < 0)
            length = buffer.Length;
        bool failed = false;
        lock (_gate)
        {
            if (mayBlock)
            {
                while (!_closed && _queuedBytes > HighWater)
                    Monitor.Wait(_gate, 1000);
            }
            if (_closed)
            {
                if (pooled)
                    FramePool.Return(buffer);
                return;
            }
            _frames.Enqueue((buffer, length, pooled));
            _queuedBytes += length;
            if (!_waitingForWritable)
                failed = !FlushLocked();
        }
        if (failed)
            Failed?.Invoke();
    }

    /// <summary>The loop saw the channel become writable.</summary>
    public void OnWritable()
    {
        bool failed;
        lock (_gate)
        {
            _waitingForWritable = false;
            failed = !FlushLocked();
        }
        if (failed)
            Failed?.Invoke();
    }

    /// <summary>Waits until everything queued is written (or the timeout passes).</summary>
    public bool WaitDrained(int timeoutMs)
    {
        long deadline = EventLoop.Now + timeoutMs;
        lock (_gate)
        {
            while (!_closed && _frames.Count > 0)
            {
                long left = deadline - EventLoop.Now;
                if (left <= 0)
                    return false;
                Monitor.Wait(_gate, (int)Math.Min(left, 50));
                if (_waitingForWritable)
                    continue;
                FlushLocked();
            }
            return _frames.Count == 0;
        }
    }

    /// <summary>Drops everything; later frames are discarded.</summary>
    public void Close()
    {
        lock (_gate)
        {
            _closed = true;
            while (_frames.TryDequeue(out var f))
            {
                if (f.Pooled)
                    FramePool.Return(f.Buffer);
            }
            _queuedBytes = 0;
            Monitor.PulseAll(_gate);
        }
    }

    // Returns false when the channel is broken.
    private bool FlushLocked()
    {
        while (_frames.Count > 0 && !_closed)
        {
            var head = _frames.Peek();
            nint n;
            if (_frames.Count > 1 && head.Length - _headOffset < CoalesceLimit)
            {
                // Several small frames (Finals, an exit, window updates) in one write().
                _coalesce ??= new byte[CoalesceLimit * 2];
                int used = 0;
                int offset = _headOffset;
                foreach (var f in _frames)
                {
                    int part = f.Length - offset;
                    if (used + part > _coalesce.Length)
                        break;
                    Buffer.BlockCopy(f.Buffer, offset, _coalesce, used, part);
                    used += part;
                    offset = 0;
                }
                fixed (byte* p = _coalesce)
                    n = Libc.write(fd, p, used);
            }
            else
            {
                fixed (byte* p = head.Buffer)
                    n = Libc.write(fd, p + _headOffset, head.Length - _headOffset);
            }

            if (n < 0)
            {
                int e = Libc.Errno;
                if (e == Libc.EINTR)
                    continue;
                if (e == Libc.EAGAIN)
                {
                    _waitingForWritable = true;
                    return true;
                }
                AgentLog.Info($"channel write failed (errno {e})");
                _closed = true;
                Monitor.PulseAll(_gate);
                return false;
            }
            Advance((int)n);
        }
        Monitor.PulseAll(_gate);
        return true;
    }

    private void Advance(int written)
    {
        _queuedBytes -= written;
        while (written > 0)
        {
            var head = _frames.Peek();
            int left = head.Length - _headOffset;
            if (written < left)
            {
                _headOffset += written;
                return;
            }
            written -= left;
            _frames.Dequeue();
            _headOffset = 0;
            if (head.Pooled)
                FramePool.Return(head.Buffer);
        }
    }
}
