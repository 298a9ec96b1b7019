namespace Moat.Protocol;

/// <summary>
/// Flow-control credit that a sender spends and a receiver grants. Sending waits while the
/// window is empty; the receiving side uses <see cref="Consume"/> to detect a peer that overruns it.
/// </summary>
public sealed class CreditWindow(int initial)
{
    private readonly object _gate = new();
    private long _available = initial;
    private TaskCompletionSource? _waiter;
    private bool _closed;

    /// <summary>Credit left.</summary>
    public long Available { get { lock (_gate) return _available; } }

    /// <summary>Adds credit granted by the peer.</summary>
    public void Grant(int increment)
    {
        TaskCompletionSource? waiter;
        lock (_gate)
        {
            _available += increment;
            if (_available > ProtocolConstants.MaxWindow * 2L)
                throw new ProtocolException("window_overflow", "the peer granted more credit than any window may hold");
            waiter = _waiter;
            _waiter = null;
        }
        waiter?.TrySetResult();
    }

    /// <summary>
    /// Takes up to <paramref name="wanted"/> bytes of credit, waiting until at least one byte is
    /// available. Returns how much was taken.
    /// </summary>
    public async ValueTask<int> TakeAsync(int wanted, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_gate)
            {
                if (_closed)
                    throw new OperationCanceledException("the stream is closed");
                if (_available > 0)
                {
                    int taken = (int)Math.Min(wanted, _available);
                    _available -= taken;
                    return taken;
                }
                _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _waiter.Task;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Gives back credit taken but not used.</summary>
    public void Return(int amount)
    {
        if (amount > 0)
            Grant(amount);
    }

    /// <summary>Receiver side: accounts for <paramref name="bytes"/> the peer sent; false if that overran the window.</summary>
    public bool Consume(int bytes)
    {
        lock (_gate)
        {
            if (bytes > _available)
                return false;
            _available -= bytes;
            return true;
        }
    }

    /// <summary>Wakes every waiter with cancellation; later takes fail.</summary>
    public void Close()
    {
        TaskCompletionSource? waiter;
        lock (_gate)
        {
            _closed = true;
            waiter = _waiter;
            _waiter = null;
        }
        waiter?.TrySetResult();
    }
}
