using Moat.Agent.Core;
using Moat.Protocol;

namespace Moat.Agent.Processes;

/// <summary>
/// A command the agent started: identity, its pipes or terminal, retained output and exit.
/// Everything mutable is owned by the I/O loop thread, except <see cref="Failed"/>.
/// </summary>
internal sealed class ProcessEntry
{
    public int Pid { get; set; }
    public required string[] Argv { get; init; }
    public required string Tag { get; init; }
    public required string User { get; init; }
    public required string Cwd { get; init; }
    public bool Pty { get; init; }
    public bool KeepOutput { get; init; }
    public uint TimeoutMs { get; init; }
    public long StartedUnixMs { get; init; }
    public long StartTimestamp { get; set; }
    /// <summary>VM guest: the commands' cgroup OOM-kill count when this one started.</summary>
    public long OomKillsAtStart { get; init; }

    public OutputChannel? Stdout { get; set; }
    public OutputChannel? Stderr { get; set; }
    public StdinChannel? Stdin { get; set; }

    public OutputRing Ring { get; } = new();

    /// <summary>The stream output goes to, if any.</summary>
    public ExecStream? Attached { get; set; }

    /// <summary>waitpid status once reaped.</summary>
    public int? Status { get; set; }
    public long ExitTimestamp { get; set; }
    public bool TimedOut { get; set; }
    /// <summary>Output was dropped while no host was attached.</summary>
    public bool OutputLost { get; set; }

    /// <summary>The exec never happened; the reaper ignores this entry.</summary>
    public volatile bool Failed;

    /// <summary>The loop knows the entry (its pipes are watched).</summary>
    public bool Registered { get; set; }
    /// <summary>Exited and fully drained; kept only for late attaches and listings.</summary>
    public bool Retired { get; set; }

    public LoopTimer? TimeoutTimer { get; set; }
    public LoopTimer? DrainTimer { get; set; }

    public bool Running => Status is null;
}

/// <summary>One output pipe (or the terminal master) of a process, watched by the loop.</summary>
internal sealed class OutputChannel(ProcessEntry owner, FrameType type, int fd, Action<OutputChannel> pump) : IFdHandler
{
    public ProcessEntry Owner { get; } = owner;
    public FrameType Type { get; } = type;
    public int Fd { get; set; } = fd;
    /// <summary>Epoll registration; 0 while not watched (no credit, or closed).</summary>
    public ulong Token { get; set; }
    public bool Eof { get; set; }
    /// <summary>After the drain deadline: bytes still to deliver before closing; -1 before it.</summary>
    public long ClosingBudget { get; set; } = -1;

    public void OnEvents(uint events) => pump(this);
}

/// <summary>The write side of a process's stdin pipe (or a dup of the terminal master).</summary>
internal sealed class StdinChannel(ProcessEntry owner, int fd, bool terminal, Action<ProcessEntry> pump) : IFdHandler
{
    public ProcessEntry Owner { get; } = owner;
    public int Fd { get; set; } = fd;
    public bool Terminal { get; } = terminal;
    public ulong Token { get; set; }
    public bool CloseRequested { get; set; }
    public Queue<StdinChunk> Pending { get; } = new();

    public void OnEvents(uint events) => pump(Owner);
}

/// <summary>Bytes from a Stdin frame not yet written to the pipe, with the stream whose credit they hold.</summary>
internal sealed class StdinChunk(byte[] data, ExecStream? origin)
{
    public byte[] Data { get; } = data;
    public int Offset { get; set; }
    public ExecStream? Origin { get; } = origin;
}
