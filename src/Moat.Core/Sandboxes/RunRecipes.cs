using Moat.Core.Errors;

namespace Moat.Core.Sandboxes;

/// <summary>How a one-shot run executes source code of a language.</summary>
public static class RunRecipes
{
    /// <summary>Languages with a recipe: file name for the code, and the command that runs it.</summary>
    public static readonly IReadOnlyDictionary<string, (string File, string[] Argv)> Languages = new Dictionary<string, (string, string[])>(StringComparer.OrdinalIgnoreCase)
    {
        ["python"] = ("/tmp/moat-run/main.py", ["python3", "/tmp/moat-run/main.py"]),
        ["python3"] = ("/tmp/moat-run/main.py", ["python3", "/tmp/moat-run/main.py"]),
        ["bash"] = ("/tmp/moat-run/main.sh", ["bash", "/tmp/moat-run/main.sh"]),
        ["sh"] = ("/tmp/moat-run/main.sh", ["sh", "/tmp/moat-run/main.sh"]),
        ["node"] = ("/tmp/moat-run/main.js", ["node", "/tmp/moat-run/main.js"]),
        ["javascript"] = ("/tmp/moat-run/main.js", ["node", "/tmp/moat-run/main.js"]),
    };

    /// <summary>The file to write and the command to run for <paramref name="language"/>.</summary>
    public static (string File, string[] Argv) For(string language) =>
        Languages.TryGetValue(language, out var recipe)
            ? recipe
            : throw MoatException.Invalid("unknown_language", $"language '{language}' is not supported; use one of {string.Join(", ", Languages.Keys)}, or give cmd");

    /// <summary>Exit status of a one-shot run killed by its timeout (as GNU timeout reports).</summary>
    public const int TimeoutExitCode = 124;

    /// <summary>Exit status of a one-shot run killed by its memory limit (128 + SIGKILL).</summary>
    public const int OomExitCode = 137;
}
