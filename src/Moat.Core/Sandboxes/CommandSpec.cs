using Moat.Core.Errors;

namespace Moat.Core.Sandboxes;

/// <summary>A command to run in a sandbox, as the API received it.</summary>
public sealed record CommandSpec
{
    /// <summary>Program and arguments (exclusive with <see cref="Shell"/>).</summary>
    public IReadOnlyList<string>? Argv { get; init; }
    /// <summary>A shell command line, run with <c>/bin/sh -c</c> (exclusive with <see cref="Argv"/>).</summary>
    public string? Shell { get; init; }
    /// <summary>Working directory (absolute); null for the template's or the user's home.</summary>
    public string? Cwd { get; init; }
    /// <summary>Extra environment for this command.</summary>
    public IReadOnlyDictionary<string, string>? Env { get; init; }
    /// <summary>User to run as; null for the template's default, else <c>user</c>.</summary>
    public string? User { get; init; }
    /// <summary>Whether the caller will stream stdin.</summary>
    public bool Stdin { get; init; }
    /// <summary>Kill the command (its whole process group) after this long; null for no limit beyond the sandbox's.</summary>
    public TimeSpan? Timeout { get; init; }
    /// <summary>A label to find the command again.</summary>
    public string? Tag { get; init; }
    /// <summary>Keep output in the sandbox while nobody is attached (background commands).</summary>
    public bool KeepOutput { get; init; }
    /// <summary>Run on a terminal of this size.</summary>
    public (int Cols, int Rows)? Pty { get; init; }

    /// <summary>The argv to execute, after checking the request.</summary>
    public IReadOnlyList<string> ResolveArgv()
    {
        if (Argv is { Count: > 0 } && Shell is not null)
            throw MoatException.Invalid("invalid_command", "give either cmd (an argv array) or shell (a string), not both");
        IReadOnlyList<string> argv = Shell is not null ? ["/bin/sh", "-c", Shell] : Argv ?? [];
        if (argv.Count == 0 || argv[0].Length == 0)
            throw MoatException.Invalid("invalid_command", "the command is empty: give cmd as a non-empty argv array, or shell as a string");
        if (argv.Count > 65536)
            throw MoatException.Invalid("invalid_command", $"the command has {argv.Count} arguments; the limit is 65536");
        long size = 0;
        foreach (var arg in argv)
        {
            if (arg.Contains('\0'))
                throw MoatException.Invalid("invalid_command", "command arguments may not contain NUL bytes");
            size += arg.Length + 1;
        }
        if (size > 512 * 1024)
            throw MoatException.Invalid("invalid_command", $"the command line is {size} bytes; the limit is 524288");
        if (Cwd is { } cwd && (cwd.Length == 0 || cwd[0] != '/' || cwd.Contains('\0') || cwd.Length > 4096))
            throw MoatException.Invalid("invalid_cwd", "cwd must be an absolute path inside the sandbox");
        if (User is { } user && !ValidUser(user))
            throw MoatException.Invalid("invalid_user", $"'{user}' is not a valid user name or uid");
        if (Timeout is { } t && (t <= TimeSpan.Zero || t > TimeSpan.FromDays(365)))
            throw MoatException.Invalid("invalid_timeout", "a command timeout must be positive and under a year");
        if (Tag is { Length: > 256 })
            throw MoatException.Invalid("invalid_tag", "tags are at most 256 characters");
        if (Pty is { } pty && (pty.Cols is < 1 or > 1000 || pty.Rows is < 1 or > 1000))
            throw MoatException.Invalid("invalid_pty", "terminal size must be 1-1000 columns and rows");
        if (Env is not null)
            SandboxLimits.ValidateEnv(Env, 1024);
        return argv;
    }

    /// <summary>A user name as passwd allows it, or a numeric uid.</summary>
    public static bool ValidUser(string user) =>
        user.Length is > 0 and <= 64 && user.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.') && user[0] != '-';
}
