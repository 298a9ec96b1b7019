namespace Moat.Client;

/// <summary>How to run one command in a sandbox. Every property is optional.</summary>
public sealed class CommandOptions
{
    /// <summary>Working directory (default: the template's, else the user's home).</summary>
    public string? Cwd { get; set; }

    /// <summary>Extra environment variables for this command, over the sandbox's own.</summary>
    public IDictionary<string, string> Env { get; set; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>User to run as (default: the template's, else <c>user</c>); <c>root</c> only when asked for.</summary>
    public string? User { get; set; }

    /// <summary>Text written to the command's stdin, which is then closed. Mutually exclusive with <see cref="StdinBytes"/>.</summary>
    public string? Stdin { get; set; }

    /// <summary>Bytes written to the command's stdin, which is then closed. Mutually exclusive with <see cref="Stdin"/>.</summary>
    public ReadOnlyMemory<byte>? StdinBytes { get; set; }

    /// <summary>Kill the command after this long; its result then has <see cref="CommandResult.TimedOut"/> set.</summary>
    public TimeSpan? Timeout { get; set; }

    /// <summary>
    /// Called with each chunk of stdout as the sandbox produces it. Setting either callback makes
    /// <see cref="SandboxCommands.RunAsync(string, CommandOptions?, CancellationToken)"/> stream the output instead of
    /// waiting for a buffered result. Callbacks run on the reading task, in output order; keep them quick.
    /// </summary>
    public Action<string>? OnStdout { get; set; }

    /// <summary>Called with each chunk of stderr as the sandbox produces it (see <see cref="OnStdout"/>).</summary>
    public Action<string>? OnStderr { get; set; }

    /// <summary>
    /// Stream output byte for byte: <see cref="SandboxCommands.StreamAsync(string, CommandOptions?, CancellationToken)"/> then yields
    /// <see cref="CommandEvent.StdoutBytes"/> and <see cref="CommandEvent.StderrBytes"/> instead of text events, so binary
    /// output and invalid UTF-8 arrive unchanged. Callbacks and <see cref="CommandResult"/> still get text.
    /// </summary>
    public bool RawOutput { get; set; }

    /// <summary>Throw <see cref="CommandExitException"/> when the command exits with a non-zero code.</summary>
    public bool ThrowOnNonZero { get; set; }
}
