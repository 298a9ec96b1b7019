using System.Text.Json;

namespace Moat.Core.CodeInterpreter;

/// <summary>Something an execution produced, in the order it happened.</summary>
public abstract record CodeEvent;

/// <summary>Text the code wrote to stdout or stderr.</summary>
/// <param name="Stderr">Whether it went to stderr.</param>
/// <param name="Text">The text (UTF-8 decoded; a character split between writes is kept whole).</param>
public sealed record CodeOutput(bool Stderr, string Text) : CodeEvent;

/// <summary>
/// A value to display: the value of the cell's last expression (<see cref="IsMainResult"/>), or
/// something shown while it ran (a matplotlib figure). Each representation is keyed by E2B's
/// name for it: <c>text</c>, <c>html</c>, <c>markdown</c>, <c>svg</c>, <c>png</c> and <c>jpeg</c>
/// (base64), <c>pdf</c>, <c>latex</c>, <c>json</c>, <c>javascript</c>.
/// </summary>
public sealed record CodeResult(bool IsMainResult, IReadOnlyDictionary<string, JsonElement> Formats) : CodeEvent
{
    /// <summary>The plain-text representation, if any.</summary>
    public string? Text => Formats.TryGetValue("text", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
}

/// <summary>The cell raised: the exception's type name, its message and the traceback from the cell down.</summary>
public sealed record CodeError(string Name, string Value, string Traceback) : CodeEvent;

/// <summary>The execution is over (always the last event).</summary>
/// <param name="ExecutionCount">How many executions the context has run, this one included.</param>
/// <param name="Duration">Wall time of this execution on the host.</param>
public sealed record CodeExecutionEnd(int ExecutionCount, TimeSpan Duration) : CodeEvent
{
    /// <summary>The execution ran past its timeout and was interrupted.</summary>
    public bool TimedOut { get; init; }
}

/// <summary>A code context as the API shows it.</summary>
/// <param name="Id">Context id.</param>
/// <param name="Language">python, javascript or bash.</param>
/// <param name="Cwd">Working directory of its interpreter.</param>
public sealed record CodeContextInfo(string Id, string Language, string Cwd);

/// <summary>What to run, where.</summary>
public sealed record CodeRequest
{
    /// <summary>Source of the cell.</summary>
    public required string Code { get; init; }
    /// <summary>Run in this context (mutually exclusive with <see cref="Language"/>).</summary>
    public string? ContextId { get; init; }
    /// <summary>Run in the sandbox's default context of this language (python when neither is given).</summary>
    public string? Language { get; init; }
    /// <summary>Environment variables for this execution only.</summary>
    public IReadOnlyDictionary<string, string>? Env { get; init; }
    /// <summary>Interrupt the execution after this long (null: no limit beyond the sandbox's).</summary>
    public TimeSpan? Timeout { get; init; }
}
