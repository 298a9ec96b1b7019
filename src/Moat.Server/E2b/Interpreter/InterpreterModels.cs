using System.Text.Json.Serialization;

namespace Moat.Server.E2b.Interpreter;

// The JSON shapes of E2B's code interpreter (port 49999 of a sandbox), snake_case as its server
// speaks them. The streamed execution lines are written directly (see InterpreterEndpoints).

internal sealed class ExecuteBody
{
    [JsonPropertyName("code")]
    public string? Code { get; set; }
    [JsonPropertyName("context_id")]
    public string? ContextId { get; set; }
    [JsonPropertyName("language")]
    public string? Language { get; set; }
    [JsonPropertyName("env_vars")]
    public Dictionary<string, string>? EnvVars { get; set; }
}

internal sealed class CreateContextBody
{
    [JsonPropertyName("language")]
    public string? Language { get; set; }
    [JsonPropertyName("cwd")]
    public string? Cwd { get; set; }
}

internal sealed record ContextBody(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("language")] string Language,
    [property: JsonPropertyName("cwd")] string Cwd);
