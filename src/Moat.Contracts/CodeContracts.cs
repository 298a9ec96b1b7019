using System.Text.Json;
using System.Text.Json.Serialization;

namespace Moat.Contracts;

/// <summary>POST /v1/sandboxes/{id}/code: run code in a stateful context.</summary>
public sealed record CodeRequestDto
{
    /// <summary>The code (a cell).</summary>
    public string? Code { get; init; }
    /// <summary>python (default), javascript or bash: the sandbox's default context of that language.</summary>
    public string? Language { get; init; }
    /// <summary>Run in this context instead (see /code/contexts).</summary>
    public string? ContextId { get; init; }
    /// <summary>Environment variables for this execution only.</summary>
    public Dictionary<string, string>? Env { get; init; }
    /// <summary>Interrupt the execution after this many seconds.</summary>
    public double? TimeoutSeconds { get; init; }
}

/// <summary>
/// Something to display: the value of the cell's last expression (<see cref="IsMainResult"/>) or
/// a figure shown while it ran. The representations sit beside it, keyed text, html, markdown,
/// svg, png, jpeg (base64), pdf, latex, json, javascript.
/// </summary>
public sealed record CodeResultItemDto
{
    /// <summary>The value of the last expression (not something displayed on the way).</summary>
    public bool IsMainResult { get; init; }
    /// <summary>The representations.</summary>
    /// <remarks>Settable, not init-only: System.Text.Json cannot bind extension data through the initializer it generates for init-only properties.</remarks>
    [JsonExtensionData]
    public Dictionary<string, JsonElement> Formats { get; set; } = [];
}

/// <summary>The exception a cell raised.</summary>
public sealed record CodeErrorDto(string Name, string Value, string Traceback);

/// <summary>How an execution ended.</summary>
public sealed record CodeEndDto
{
    /// <summary>Executions of the context so far, this one included.</summary>
    public int ExecutionCount { get; init; }
    /// <summary>Wall time.</summary>
    public long DurationMs { get; init; }
    /// <summary>The timeout interrupted it.</summary>
    public bool TimedOut { get; init; }
}

/// <summary>The buffered answer of POST /v1/sandboxes/{id}/code.</summary>
public sealed record CodeResultDto
{
    /// <summary>Results in the order they were produced.</summary>
    public List<CodeResultItemDto> Results { get; init; } = [];
    /// <summary>Everything written to stdout.</summary>
    public string Stdout { get; init; } = "";
    /// <summary>Everything written to stderr.</summary>
    public string Stderr { get; init; } = "";
    /// <summary>The exception, if the cell raised one.</summary>
    public CodeErrorDto? Error { get; init; }
    /// <summary>Executions of the context so far.</summary>
    public int ExecutionCount { get; init; }
    /// <summary>Wall time.</summary>
    public long DurationMs { get; init; }
    /// <summary>The timeout interrupted it.</summary>
    public bool TimedOut { get; init; }
}

/// <summary>
/// One line of the NDJSON stream of POST /v1/sandboxes/{id}/code (with Accept: application/x-ndjson):
/// exactly one property is set; <c>end</c> is the last line.
/// </summary>
public sealed record CodeEventDto
{
    /// <summary>Text written to stdout.</summary>
    public string? Stdout { get; init; }
    /// <summary>Text written to stderr.</summary>
    public string? Stderr { get; init; }
    /// <summary>A result.</summary>
    public CodeResultItemDto? Result { get; init; }
    /// <summary>The exception the cell raised.</summary>
    public CodeErrorDto? Error { get; init; }
    /// <summary>The execution is over.</summary>
    public CodeEndDto? End { get; init; }
}

/// <summary>POST /v1/sandboxes/{id}/code/contexts.</summary>
public sealed record CreateCodeContextRequest
{
    /// <summary>python (default), javascript or bash.</summary>
    public string? Language { get; init; }
    /// <summary>Working directory (default /home/user).</summary>
    public string? Cwd { get; init; }
}

/// <summary>A code context: one interpreter whose state persists between executions.</summary>
public sealed record CodeContextDto(string Id, string Language, string Cwd);

/// <summary>GET /v1/sandboxes/{id}/code/contexts.</summary>
public sealed record CodeContextListResponse(List<CodeContextDto> Contexts);

