namespace Moat.Client;

/// <summary>The outcome of a finished command.</summary>
public sealed record CommandResult
{
    /// <summary>Exit status; 128 + signal when a signal ended it.</summary>
    public int ExitCode { get; init; }

    /// <summary>The signal that ended it, if any.</summary>
    public int? Signal { get; init; }

    /// <summary>Its <see cref="CommandOptions.Timeout"/> killed it.</summary>
    public bool TimedOut { get; init; }

    /// <summary>The sandbox's memory limit killed it.</summary>
    public bool OomKilled { get; init; }

    /// <summary>Everything it wrote to stdout (UTF-8).</summary>
    public string Stdout { get; init; } = "";

    /// <summary>Everything it wrote to stderr (UTF-8).</summary>
    public string Stderr { get; init; } = "";

    /// <summary>The server kept only the first part of stdout (buffered runs only; streamed output is never cut).</summary>
    public bool StdoutTruncated { get; init; }

    /// <summary>The server kept only the first part of stderr (buffered runs only).</summary>
    public bool StderrTruncated { get; init; }

    /// <summary>Wall time of the command inside the sandbox.</summary>
    public TimeSpan Duration { get; init; }

    /// <summary>Its process id inside the sandbox, when known.</summary>
    public int? Pid { get; init; }

    /// <summary>Whether it exited with code 0.</summary>
    public bool Succeeded => ExitCode == 0;
}
