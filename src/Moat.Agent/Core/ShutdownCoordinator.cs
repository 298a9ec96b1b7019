using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;
using Moat.Agent.Processes;

namespace Moat.Agent.Core;

/// <summary>
/// The agent's end, on SIGTERM/SIGINT/SIGHUP or a shutdown request: SIGTERM to every tracked
/// process group, a grace period, then SIGKILL to everything, then exit. As PID 1 "everything"
/// is kill(-1) — every process of the pid namespace; otherwise (tests, development) only what the
/// agent started, because kill(-1) would reach the whole machine.
/// </summary>
internal sealed class ShutdownCoordinator(ProcessSupervisor processes, ProcessTable table)
{
    private int _started;

    public void Begin(string reason, int graceMs, int exitCode)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
            return;
        AgentLog.Write($"shutting down ({reason})");
        try
        {
            new Thread(() => Run(graceMs, exitCode), 128 * 1024) { IsBackground = true, Name = "moat-shutdown" }.Start();
        }
        catch (Exception)
        {
            Run(graceMs, exitCode); // no thread to be had: shut down on this one
        }
    }

    private void Run(int graceMs, int exitCode)
    {
        bool pid1 = Libc.getpid() == 1;
        try
        {
            if (pid1)
                Libc.kill(-1, Libc.SIGTERM);
            else
                processes.SignalAll(Libc.SIGTERM);
            long deadline = Environment.TickCount64 + graceMs;
            while (table.Count > 0 && Environment.TickCount64 < deadline)
                Thread.Sleep(10);
            if (pid1)
                Libc.kill(-1, Libc.SIGKILL);
            else
                processes.KillAll();
        }
        catch (Exception ex)
        {
            AgentLog.Write($"shutdown: {ex.Message}");
        }
        // Give a Final response queued just before a moment to reach the host.
        Thread.Sleep(20);
        if (Init.VmInit.IsGuest)
            Init.VmInit.PowerOff(); // PID 1 of a VM: exiting would panic the guest kernel
        Libc._exit(exitCode);
    }
}
