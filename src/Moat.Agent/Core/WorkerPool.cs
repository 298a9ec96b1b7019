using Moat.Agent.Diagnostics;

namespace Moat.Agent.Core;

/// <summary>
/// Threads for work that blocks: file operations (disk I/O, waiting for flow-control credit or
/// for the host's next chunk) and /proc scans. Threads start on demand and exit after a few idle
/// seconds, so an idle agent keeps none. Synchronous by design: the per-thread file-system
/// identity switch must never straddle an await.
/// </summary>
internal sealed class WorkerPool(int maxThreads)
{
    private const int IdleExitMs = 5000;
    private readonly Queue<Action> _work = new();
    private int _threads;
    private int _idle;

    public void Run(Action action)
    {
        bool start = false;
        lock (_work)
        {
            _work.Enqueue(action);
            if (_idle > 0)
                Monitor.Pulse(_work);
            else if (_threads < maxThreads)
            {
                _threads++;
                start = true;
            }
        }
        if (!start)
            return;
        try
        {
            new Thread(Worker, 512 * 1024) { IsBackground = true, Name = "moat-worker" }.Start();
        }
        catch (Exception)
        {
            // No thread to be had (the sandbox hit its pids limit): take the work back, so it
            // never runs after the caller has answered for it, and let the caller answer.
            lock (_work)
            {
                _threads--;
                var rest = _work.Where(a => !ReferenceEquals(a, action)).ToList();
                _work.Clear();
                foreach (var a in rest)
                    _work.Enqueue(a);
            }
            throw;
        }
    }

    private void Worker()
    {
        while (true)
        {
            Action? action;
            lock (_work)
            {
                while (!_work.TryDequeue(out action))
                {
                    _idle++;
                    bool signalled = Monitor.Wait(_work, IdleExitMs);
                    _idle--;
                    if (!signalled && _work.Count == 0)
                    {
                        _threads--;
                        return;
                    }
                }
            }
            try
            {
                action();
            }
            catch (Exception ex)
            {
                AgentLog.Write($"worker: {ex.GetType().Name}: {ex.Message}");
            }
        }
    }
}
