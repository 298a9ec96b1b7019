using Moat.Protocol;

namespace Moat.Agent.Core;

/// <summary>
/// Reusable buffers for data frames (header + up to one data chunk). Streaming output at pipe
/// speed would otherwise allocate a 64 KiB array per frame and run a gen-0 GC every few frames;
/// the pool keeps only a handful so an idle agent holds almost nothing.
/// </summary>
internal static class FramePool
{
    public const int BufferSize = FrameHeader.Size + ProtocolConstants.DataChunk;
    private const int MaxPooled = 8;
    private static readonly Stack<byte[]> Free = new();

    public static byte[] Rent()
    {
        lock (Free)
        {
            if (Free.Count > 0)
                return Free.Pop();
        }
        return new byte[BufferSize];
    }

    public static void Return(byte[] buffer)
    {
        if (buffer.Length != BufferSize)
            return;
        lock (Free)
        {
            if (Free.Count < MaxPooled)
                Free.Push(buffer);
        }
    }

    /// <summary>Drops every pooled buffer (the agent went idle).</summary>
    public static void Trim()
    {
        lock (Free)
            Free.Clear();
    }
}
