using Moat.Protocol;

namespace Moat.Agent.Processes;

/// <summary>
/// Output of one process kept while no host is attached (keep_output), in the order it was
/// produced across stdout and stderr. Bounded per process and across the agent: when full, the
/// oldest bytes go and the ring remembers that its head was cut. Loop thread only.
/// </summary>
internal sealed class OutputRing
{
    /// <summary>Most bytes one process keeps.</summary>
    public const int PerProcessLimit = 1 << 20;
    /// <summary>Most bytes all processes together keep.</summary>
    public const long GlobalLimit = 32L << 20;

    private static long _globalBytes;

    private readonly Queue<(FrameType Type, byte[] Data)> _chunks = new();
    private int _headOffset;

    public long Bytes { get; private set; }

    public long StdoutBytes { get; private set; }

    public long StderrBytes { get; private set; }

    /// <summary>Bytes were dropped at the head since the ring was last emptied by a reader.</summary>
    public bool HeadCut { get; set; }

    public static long GlobalBytes => _globalBytes;

    public long BytesOf(FrameType type) => type == FrameType.Stderr ? StderrBytes : StdoutBytes;

    /// <summary>Room left before the per-process limit (global pressure aside).</summary>
    public long Space => PerProcessLimit - Bytes;

    /// <summary>Appends output, dropping the oldest to make room. Returns whether anything was lost.</summary>
    public bool AppendDroppingOldest(FrameType type, ReadOnlySpan<byte> data)
    {
        bool lost = false;
        if (data.Length > PerProcessLimit)
        {
            data = data[^PerProcessLimit..];
            lost = true;
        }
        while (Bytes > 0 && (Bytes + data.Length > PerProcessLimit || _globalBytes + data.Length > GlobalLimit))
        {
            DropHead();
            lost = true;
        }
        if (_globalBytes + data.Length > GlobalLimit)
            return true; // other processes hold the global budget: this output is lost
        Add(type, data);
        if (lost)
            HeadCut = true;
        return lost;
    }

    /// <summary>Appends without dropping (a host is attached and replaying): the caller checked <see cref="Space"/>.</summary>
    public void Append(FrameType type, ReadOnlySpan<byte> data) => Add(type, data);

    public bool TryPeek(out FrameType type, out ReadOnlyMemory<byte> data)
    {
        if (!_chunks.TryPeek(out var head))
        {
            type = default;
            data = default;
            return false;
        }
        type = head.Type;
        data = head.Data.AsMemory(_headOffset);
        return true;
    }

    /// <summary>Removes <paramref name="count"/> bytes from the head chunk (sent to the host).</summary>
    public void Consume(int count)
    {
        var head = _chunks.Peek();
        _headOffset += count;
        Account(head.Type, -count);
        if (_headOffset >= head.Data.Length)
        {
            _chunks.Dequeue();
            _headOffset = 0;
        }
    }

    public void Clear()
    {
        while (_chunks.Count > 0)
            DropHead();
        HeadCut = false;
    }

    private void Add(FrameType type, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
            return;
        _chunks.Enqueue((type, data.ToArray()));
        Account(type, data.Length);
    }

    private void DropHead()
    {
        var head = _chunks.Dequeue();
        Account(head.Type, -(head.Data.Length - _headOffset));
        _headOffset = 0;
    }

    private void Account(FrameType type, long delta)
    {
        Bytes += delta;
        _globalBytes += delta;
        if (type == FrameType.Stderr)
            StderrBytes += delta;
        else
            StdoutBytes += delta;
    }
}
