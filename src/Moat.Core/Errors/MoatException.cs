namespace Moat.Core.Errors;

/// <summary>What kind of failure an error is; each surface maps it to its own status (HTTP, exit code).</summary>
public enum ErrorKind
{
    /// <summary>The request is malformed or asks for something impossible (400).</summary>
    InvalidArgument,
    /// <summary>No credentials, or unknown ones (401).</summary>
    Unauthenticated,
    /// <summary>Known caller, not allowed (403).</summary>
    PermissionDenied,
    /// <summary>The thing does not exist — or belongs to someone else (404).</summary>
    NotFound,
    /// <summary>The thing is in the wrong state for the request (409).</summary>
    Conflict,
    /// <summary>The request or its body is too large (413).</summary>
    TooLarge,
    /// <summary>A quota would be exceeded (422).</summary>
    QuotaExceeded,
    /// <summary>Too many requests (429).</summary>
    RateLimited,
    /// <summary>This host cannot do it now: a tier is unavailable, capacity is exhausted (503).</summary>
    Unavailable,
    /// <summary>The operation ran out of time (504).</summary>
    Timeout,
    /// <summary>A bug or an unexpected failure (500).</summary>
    Internal,
}

/// <summary>
/// An error a user can act on: a stable snake_case <see cref="Code"/>, a <see cref="Kind"/> that
/// surfaces map to a status, and a message that says which sandbox, what limit, what to do.
/// </summary>
public class MoatException(ErrorKind kind, string code, string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>Kind of failure.</summary>
    public ErrorKind Kind { get; } = kind;

    /// <summary>Stable machine-readable code, e.g. <c>sandbox_not_found</c>.</summary>
    public string Code { get; } = code;

    /// <summary>Seconds after which a retry may succeed (rate limits).</summary>
    public int? RetryAfterSeconds { get; init; }

    /// <summary>Shorthand for an <see cref="ErrorKind.InvalidArgument"/> error.</summary>
    public static MoatException Invalid(string code, string message) => new(ErrorKind.InvalidArgument, code, message);

    /// <summary>Shorthand for a sandbox that does not exist for this caller.</summary>
    public static MoatException SandboxNotFound(string id) => new(ErrorKind.NotFound, "sandbox_not_found", $"sandbox '{id}' does not exist");
}

/// <summary>The agent inside a sandbox answered an operation with an error (a missing file, an unknown user...).</summary>
public sealed class AgentOperationException(string code, string message, int errno = 0)
    : MoatException(KindOf(code), code, message)
{
    /// <summary>errno reported by the agent, if the failure came from a system call.</summary>
    public int Errno { get; } = errno;

    private static ErrorKind KindOf(string code) => code switch
    {
        "not_found" or "no_such_user" => ErrorKind.NotFound,
        "permission_denied" => ErrorKind.PermissionDenied,
        "already_exists" or "not_empty" or "busy" or "detached" => ErrorKind.Conflict,
        "too_large" => ErrorKind.TooLarge,
        "no_space" => ErrorKind.QuotaExceeded,
        "not_a_file" or "not_a_directory" or "is_a_directory" or "invalid_argument" => ErrorKind.InvalidArgument,
        "unsupported" => ErrorKind.InvalidArgument,
        _ => ErrorKind.Internal,
    };
}

/// <summary>The agent channel is gone or broke the protocol; the sandbox is unusable.</summary>
public sealed class AgentUnavailableException(string message, Exception? inner = null)
    : MoatException(ErrorKind.Conflict, "sandbox_unavailable", message, inner);
