using System.Diagnostics;

namespace Moat.Networking.Egress;

/// <summary>A byte budget refilled at a fixed rate, shared by all connections of one sandbox in one direction.</summary>
public sealed class TokenBucket
{
    private readonly object _gate = new();
    private readonly double _rate;
    private readonly double _burst;
    private double _tokens;
    private long _last = Stopwatch.GetTimestamp();

    /// <summary>A bucket of <paramref name="bytesPerSecond"/>, allowing bursts of a tenth of a second (at least 64 KiB).</summary>
    public TokenBucket(long bytesPerSecond)
    {
        _rate = bytesPerSecond;
        _burst = Math.Max(64 * 1024, bytesPerSecond / 10.0);
        _tokens = _burst;
    }

    /// <summary>Waits until <paramref name="bytes"/> may pass.</summary>
    public async ValueTask TakeAsync(int bytes, CancellationToken cancellationToken)
    {
        double want = bytes;
        while (want > 0)
        {
            TimeSpan wait;
            lock (_gate)
            {
                Refill();
                double take = Math.Min(want, Math.Max(0, _tokens));
                if (take > 0 && (take == want || _tokens >= Math.Min(want, _burst)))
                {
                    _tokens -= take;
                    want -= take;
                    continue;
                }
                wait = TimeSpan.FromSeconds((Math.Min(want, _burst) - _tokens) / _rate);
            }
            await Task.Delay(wait < TimeSpan.FromMilliseconds(1) ? TimeSpan.FromMilliseconds(1) : wait, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Takes <paramref name="bytes"/> if they are there now (for datagrams: false means drop).</summary>
    public bool TryTake(int bytes)
    {
        lock (_gate)
        {
            Refill();
            if (_tokens < bytes)
                return false;
            _tokens -= bytes;
            return true;
        }
    }

    private void Refill()
    {
        long now = Stopwatch.GetTimestamp();
        _tokens = Math.Min(_burst, _tokens + Stopwatch.GetElapsedTime(_last, now).TotalSeconds * _rate);
        _last = now;
    }
}
