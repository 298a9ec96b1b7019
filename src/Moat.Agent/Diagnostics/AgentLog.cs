using System.Text;
using Moat.Agent.Interop;

namespace Moat.Agent.Diagnostics;

/// <summary>
/// Terse diagnostics on stderr. Bounded: after about 1 MiB in total the agent goes quiet, so a
/// sandbox that provokes errors in a loop cannot fill whatever collects the agent's stderr.
/// </summary>
internal static class AgentLog
{
    private const long Budget = 1 << 20;
    private static long _written;

    /// <summary>Set by --verbose: also log routine events.</summary>
    public static bool Verbose { get; set; }

    public static void Info(string message)
    {
        if (Verbose)
            Write(message);
    }

    public static void Write(string message)
    {
        long before = Interlocked.Read(ref _written);
        if (before >= Budget)
            return;
        byte[] line = Encoding.UTF8.GetBytes("moat-agent: " + message + "\n");
        long after = Interlocked.Add(ref _written, line.Length);
        if (after > Budget)
            line = before + 40 < Budget ? Encoding.UTF8.GetBytes("moat-agent: log budget exhausted\n") : [];
        if (line.Length > 0)
            Libc.WriteAll(2, line);
    }
}
