namespace Moat.Contracts;

/// <summary>
/// A text message on the terminal WebSocket (GET /v1/sandboxes/{id}/terminal). From the client:
/// <see cref="Resize"/> or <see cref="Signal"/>. From the server: <see cref="Exit"/> (then the
/// socket closes) or <see cref="Error"/>. Binary messages are the terminal's bytes, both ways.
/// </summary>
public sealed record TerminalMessage
{
    /// <summary>New terminal size.</summary>
    public TerminalSize? Resize { get; init; }
    /// <summary>A signal for the terminal's process group (2 is Ctrl+C's SIGINT).</summary>
    public int? Signal { get; init; }
    /// <summary>The program on the terminal ended.</summary>
    public ExecExitDto? Exit { get; init; }
    /// <summary>The session failed.</summary>
    public ErrorBody? Error { get; init; }
}

/// <summary>A terminal size in character cells.</summary>
public sealed record TerminalSize(int Cols, int Rows);

