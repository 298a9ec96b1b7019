using System.Diagnostics;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Processes;

/// <summary>
/// The pids of running commands and the reaper that collects every child and orphan. A pid is
/// recorded under the same lock the reaper takes before it looks a pid up, and the record is
/// made right after fork() returns, before the child can have been waited for: so the reaper
/// never sees an exit for a pid it does not know yet. A reaped pid with no record is an orphan
/// that was re-parented to the agent (PID 1 or child subreaper); its status is dropped.
/// </summary>
internal sealed class ProcessTable
{
    private readonly object _gate = new();
    private readonly Dictionary<int, ProcessEntry> _running = [];
    private readonly object _childSignal = new();
    private bool _childSpawned;

    /// <summary>Called on the reaper thread for a command's exit: (entry, wait status, Stopwatch timestamp).</summary>
    public Action<ProcessEntry, int, long>? Exited { get; set; }

    /// <summary>Running commands (leaders) the agent tracks.</summary>
    public int Count
    {
        get { lock (_gate) return _running.Count; }
    }

    public int[] RunningPids()
    {
        lock (_gate)
            return [.. _running.Keys];
    }

    /// <summary>The lock to hold across fork() and <see cref="RecordLocked"/>.</summary>
    public object SpawnGate => _gate;

    /// <summary>Records a pid right after fork, still under <see cref="SpawnGate"/>.</summary>
    public void RecordLocked(ProcessEntry entry, int pid)
    {
        entry.Pid = pid;
        _running[pid] = entry;
    }

    /// <summary>Wakes the reaper if it sleeps for lack of children.</summary>
    public void NotifySpawned()
    {
        lock (_childSignal)
        {
            _childSpawned = true;
            Monitor.Pulse(_childSignal);
        }
    }

    /// <summary>Forgets a pid whose exec failed; its exit, if the reaper sees it later, is dropped.</summary>
    public void Forget(ProcessEntry entry)
    {
        lock (_gate)
        {
            if (_running.TryGetValue(entry.Pid, out var e) && ReferenceEquals(e, entry))
                _running.Remove(entry.Pid);
        }
    }

    /// <summary>Starts the reaper thread.</summary>
    public void StartReaper()
    {
        new Thread(Reap, 128 * 1024) { IsBackground = true, Name = "moat-reaper" }.Start();
    }

    private unsafe void Reap()
    {
        while (true)
        {
            int status;
            int pid = Libc.waitpid(-1, &status, Libc.__WALL);
            if (pid > 0)
            {
                long now = Stopwatch.GetTimestamp();
                ProcessEntry? entry;
                lock (_gate)
                    _running.Remove(pid, out entry);
                if (entry is not null && !entry.Failed)
                {
                    try
                    {
                        Exited?.Invoke(entry, status, now);
                    }
                    catch (Exception ex)
                    {
                        AgentLog.Write($"reaper: {ex.Message}");
                    }
                }
                continue;
            }
            int e = Libc.Errno;
            if (e == Libc.EINTR)
                continue;
            if (e != Libc.ECHILD)
            {
                AgentLog.Write($"waitpid failed (errno {e})");
                Thread.Sleep(100);
            }
            // No children at all: sleep until the next spawn. Orphans can only come from our
            // own descendants, so none can appear while we have no child.
            lock (_childSignal)
            {
                while (!_childSpawned)
                    Monitor.Wait(_childSignal);
                _childSpawned = false;
            }
        }
    }
}
