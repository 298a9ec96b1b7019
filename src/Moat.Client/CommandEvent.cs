namespace Moat.Client;

/// <summary>
/// One event of a streamed command, in the order the sandbox produced them: one <see cref="Started"/>,
/// any number of <see cref="Stdout"/> and <see cref="Stderr"/> (or, with <see cref="CommandOptions.RawOutput"/>,
/// <see cref="StdoutBytes"/> and <see cref="StderrBytes"/>), then one <see cref="Exited"/>. A failure
/// of the stream is thrown as <see cref="MoatStreamException"/> rather than yielded.
/// </summary>
public abstract record CommandEvent
{
    private protected CommandEvent()
    {
    }

    /// <summary>The command started.</summary>
    /// <param name="Pid">Its process id inside the sandbox.</param>
    public sealed record Started(int Pid) : CommandEvent;

    /// <summary>A chunk of stdout, decoded as UTF-8 (a character split across chunks is never broken).</summary>
    /// <param name="Text">The text.</param>
    public sealed record Stdout(string Text) : CommandEvent;

    /// <summary>A chunk of stderr, decoded as UTF-8.</summary>
    /// <param name="Text">The text.</param>
    public sealed record Stderr(string Text) : CommandEvent;

    /// <summary>A chunk of stdout, byte for byte (instead of <see cref="Stdout"/> when <see cref="CommandOptions.RawOutput"/> is set).</summary>
    /// <param name="Data">The bytes.</param>
    public sealed record StdoutBytes(byte[] Data) : CommandEvent;

    /// <summary>A chunk of stderr, byte for byte (instead of <see cref="Stderr"/> when <see cref="CommandOptions.RawOutput"/> is set).</summary>
    /// <param name="Data">The bytes.</param>
    public sealed record StderrBytes(byte[] Data) : CommandEvent;

    /// <summary>The command ended; always the last event.</summary>
    /// <param name="ExitCode">Exit status; 128 + signal when a signal ended it.</param>
    /// <param name="Signal">The signal that ended it, if any.</param>
    /// <param name="TimedOut">Its timeout killed it.</param>
    /// <param name="OomKilled">The memory limit killed it.</param>
    /// <param name="Duration">Wall time inside the sandbox.</param>
    public sealed record Exited(int ExitCode, int? Signal, bool TimedOut, bool OomKilled, TimeSpan Duration) : CommandEvent;
}
