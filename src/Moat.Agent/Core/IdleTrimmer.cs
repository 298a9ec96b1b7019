using System.Runtime;

namespace Moat.Agent.Core;

/// <summary>
/// Gives memory back when the host goes quiet. The GC keeps the pages it touched during a burst
/// (gen-0 regions grow to their high-water mark), which across thousands of idle sandboxes is
/// the difference that matters: a few seconds after the last frame from the host, one
/// aggressive, compacting collection decommits what the burst left behind.
/// </summary>
internal sealed class IdleTrimmer(EventLoop loop)
{
    private const long QuietMs = 3000;
    private long _lastActivity;
    private int _scheduled;
    private int _dirty;

    /// <summary>Something happened (any thread, cheap).</summary>
    public void Touch()
    {
        Volatile.Write(ref _lastActivity, EventLoop.Now);
        Volatile.Write(ref _dirty, 1);
        if (Interlocked.Exchange(ref _scheduled, 1) == 0)
            loop.Post(() => loop.Schedule(QuietMs, Check));
    }

    private void Check()
    {
        long quiet = EventLoop.Now - Volatile.Read(ref _lastActivity);
        if (quiet < QuietMs)
        {
            loop.Schedule(QuietMs - quiet, Check);
            return;
        }
        Volatile.Write(ref _scheduled, 0);
        if (Interlocked.Exchange(ref _dirty, 0) == 0)
            return;
        FramePool.Trim();
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
    }
}
