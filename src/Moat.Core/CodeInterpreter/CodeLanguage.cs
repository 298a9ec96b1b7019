using Moat.Core.Errors;

namespace Moat.Core.CodeInterpreter;

/// <summary>The interpreters a code context can run.</summary>
public enum CodeLanguage
{
    /// <summary>python3, with Moat's Python kernel.</summary>
    Python,
    /// <summary>node, with Moat's JavaScript kernel.</summary>
    JavaScript,
    /// <summary>bash, driven line by line.</summary>
    Bash,
}

/// <summary>Language names as the APIs spell them.</summary>
public static class CodeLanguages
{
    /// <summary>The language's name in APIs.</summary>
    public static string Name(this CodeLanguage language) => language switch
    {
        CodeLanguage.Python => "python",
        CodeLanguage.JavaScript => "javascript",
        CodeLanguage.Bash => "bash",
        _ => throw new ArgumentOutOfRangeException(nameof(language)),
    };

    /// <summary>The program that has to exist in the template for the language.</summary>
    public static string Program(this CodeLanguage language) => language switch
    {
        CodeLanguage.Python => "python3",
        CodeLanguage.JavaScript => "node",
        CodeLanguage.Bash => "bash",
        _ => throw new ArgumentOutOfRangeException(nameof(language)),
    };

    /// <summary>Parses a language name (null or empty: python); unknown names are a 400 that lists the known ones.</summary>
    public static CodeLanguage Parse(string? name) => name?.Trim().ToLowerInvariant() switch
    {
        null or "" or "python" or "python3" or "py" => CodeLanguage.Python,
        "javascript" or "js" or "node" or "nodejs" => CodeLanguage.JavaScript,
        "bash" or "sh" or "shell" => CodeLanguage.Bash,
        var other => throw MoatException.Invalid("unsupported_language", $"language '{other}' is not supported; use python, javascript or bash"),
    };
}
