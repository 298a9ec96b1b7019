namespace Moat.Client;

/// <summary>
/// The server refused or failed a request. <see cref="Code"/> is the server's stable snake_case
/// error code (e.g. <c>sandbox_not_found</c>); <see cref="Exception.Message"/> is its explanation.
/// Specific statuses have their own subclasses; catch this type for all of them.
/// </summary>
public class MoatApiException : Exception
{
    /// <summary>Creates an exception for an error answer.</summary>
    /// <param name="statusCode">The HTTP status of the answer, e.g. 404.</param>
    /// <param name="code">The server's error code.</param>
    /// <param name="message">The server's message.</param>
    /// <param name="innerException">The underlying failure, if any.</param>
    public MoatApiException(int statusCode, string code, string message, Exception? innerException = null)
        : base(message, innerException)
    {
        StatusCode = statusCode;
        Code = code;
    }

    /// <summary>The HTTP status of the answer, e.g. 404 (<c>ex.StatusCode is 404 or 409</c>).</summary>
    public int StatusCode { get; }

    /// <summary>The server's machine-readable error code, e.g. <c>invalid_memory</c>; <c>http_502</c> when the body was not Moat's error shape.</summary>
    public string Code { get; }

    /// <summary>The exception for an error answer: the subclass that fits its status.</summary>
    /// <param name="statusCode">The HTTP status.</param>
    /// <param name="code">The server's error code.</param>
    /// <param name="message">The server's message.</param>
    /// <param name="retryAfter">The <c>Retry-After</c> delay, if the server sent one.</param>
    public static MoatApiException Create(int statusCode, string code, string message, TimeSpan? retryAfter = null) => statusCode switch
    {
        400 => new MoatValidationException(code, message),
        401 => new MoatAuthenticationException(code, message),
        403 => new MoatPermissionDeniedException(code, message),
        404 => new MoatNotFoundException(code, message),
        409 => new MoatConflictException(code, message),
        413 => new MoatPayloadTooLargeException(code, message),
        422 => new MoatQuotaExceededException(code, message),
        429 => new MoatRateLimitedException(code, message, retryAfter),
        503 => new MoatUnavailableException(code, message, retryAfter),
        504 => new MoatServerTimeoutException(code, message),
        _ => new MoatApiException(statusCode, code, message),
    };
}

/// <summary>400: the request is malformed or asks for something impossible (a bad option, an out-of-range limit).</summary>
public sealed class MoatValidationException(string code, string message)
    : MoatApiException(400, code, message);

/// <summary>401 or 403: the API key is missing, unknown or revoked, or its role does not allow the request.</summary>
public class MoatAuthException(int statusCode, string code, string message)
    : MoatApiException(statusCode, code, message);

/// <summary>401: no API key was sent, or the server does not know it (or it was revoked).</summary>
public sealed class MoatAuthenticationException(string code, string message)
    : MoatAuthException(401, code, message);

/// <summary>403: the key is valid but its role does not allow this (a read-only key writing, a member managing keys).</summary>
public sealed class MoatPermissionDeniedException(string code, string message)
    : MoatAuthException(403, code, message);

/// <summary>404: the sandbox, file, template or key does not exist — or belongs to another tenant.</summary>
public sealed class MoatNotFoundException(string code, string message)
    : MoatApiException(404, code, message);

/// <summary>409: the target is in the wrong state, e.g. <c>sandbox_not_running</c> for a stopped sandbox, or a file that already exists.</summary>
public sealed class MoatConflictException(string code, string message)
    : MoatApiException(409, code, message);

/// <summary>413: the request or the file is larger than the server accepts (see <c>LimitsInfo.MaxFileBytes</c>).</summary>
public sealed class MoatPayloadTooLargeException(string code, string message)
    : MoatApiException(413, code, message);

/// <summary>422: a quota or limit of the tenant would be exceeded (lifetime, concurrent sandboxes, disk).</summary>
public sealed class MoatQuotaExceededException(string code, string message)
    : MoatApiException(422, code, message);

/// <summary>429: too many requests; retry after <see cref="RetryAfter"/>.</summary>
public sealed class MoatRateLimitedException(string code, string message, TimeSpan? retryAfter)
    : MoatApiException(429, code, message)
{
    /// <summary>How long the server asks to wait before retrying, when it said.</summary>
    public TimeSpan? RetryAfter { get; } = retryAfter;
}

/// <summary>503: this server cannot do it now (the tier is not usable on this host, the node is full).</summary>
public sealed class MoatUnavailableException(string code, string message, TimeSpan? retryAfter)
    : MoatApiException(503, code, message)
{
    /// <summary>How long the server asks to wait before retrying, when it said.</summary>
    public TimeSpan? RetryAfter { get; } = retryAfter;
}

/// <summary>504: the server ran out of time, e.g. a sandbox whose agent did not answer in time.</summary>
public sealed class MoatServerTimeoutException(string code, string message)
    : MoatApiException(504, code, message);

/// <summary>
/// A streamed command's output stream failed after it had started (the server sends an error
/// event instead of the exit event, or the stream ends early). <see cref="MoatApiException.StatusCode"/>
/// is the stream's status (200).
/// </summary>
public sealed class MoatStreamException(string code, string message)
    : MoatApiException(200, code, message);

/// <summary>A command exited non-zero and <see cref="CommandOptions.ThrowOnNonZero"/> was set.</summary>
public sealed class CommandExitException(CommandResult result)
    : Exception(Describe(result))
{
    /// <summary>The command's result, with its output.</summary>
    public CommandResult Result { get; } = result;

    /// <summary>The command's exit code.</summary>
    public int ExitCode => Result.ExitCode;

    private static string Describe(CommandResult r)
    {
        var why = r.TimedOut ? " (killed by its timeout)" : r.OomKilled ? " (killed by the memory limit)" : r.Signal is { } s ? $" (signal {s})" : "";
        var stderr = r.Stderr.Trim();
        if (stderr.Length > 500)
            stderr = stderr[..500] + "…";
        return $"command exited with code {r.ExitCode}{why}" + (stderr.Length > 0 ? $": {stderr}" : "");
    }
}
