using System.Text;
using System.Text.Json;
using Moat.Core.Errors;

namespace Moat.Storage.Templates;

/// <summary>One instruction of a Dockerfile, with its line for messages.</summary>
/// <param name="Line">1-based line where it starts.</param>
/// <param name="Keyword">Upper-case instruction (FROM, RUN, ...).</param>
/// <param name="Arguments">The text after the keyword, continuation lines joined.</param>
/// <param name="Flags">Leading <c>--name=value</c> flags (COPY --chown, FROM --platform).</param>
/// <param name="Exec">The JSON (exec) form's argv, when the instruction used one.</param>
public sealed record DockerInstruction(int Line, string Keyword, string Arguments, IReadOnlyDictionary<string, string> Flags, IReadOnlyList<string>? Exec)
{
    /// <summary>The instruction as written, normalised: what its cache key is made of.</summary>
    public string Canonical => Keyword + " " + string.Join(' ', Flags.OrderBy(f => f.Key, StringComparer.Ordinal).Select(f => $"--{f.Key}={f.Value}")) + " " + (Exec is null ? Arguments : JsonSerializer.Serialize(Exec.ToList(), StorageJson.Default.ListString));
}

/// <summary>
/// The Dockerfile subset Moat builds: FROM (one stage), RUN, COPY, ADD (local files), ENV, ARG,
/// WORKDIR, USER, CMD, ENTRYPOINT, LABEL, EXPOSE; comments, <c>\</c> continuations, <c>$VAR</c> and
/// <c>${VAR}</c> in the arguments of ENV, ARG, WORKDIR, USER, COPY and ADD. Anything else is refused
/// with its line number rather than silently ignored.
/// </summary>
public static class Dockerfile
{
    private static readonly HashSet<string> Supported = ["FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL", "EXPOSE"];
    private static readonly HashSet<string> Ignored = ["MAINTAINER", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "VOLUME", "ONBUILD"];

    /// <summary>Largest Dockerfile read.</summary>
    public const int MaxBytes = 1 << 20;

    /// <summary>Parses a Dockerfile into instructions; errors name the line.</summary>
    public static IReadOnlyList<DockerInstruction> Parse(string text)
    {
        if (text.Length > MaxBytes)
            throw MoatException.Invalid("invalid_dockerfile", $"the Dockerfile is larger than {MaxBytes} bytes");
        var result = new List<DockerInstruction>();
        var lines = text.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            var line = lines[i].Trim();
            if (line.Length == 0 || line.StartsWith('#'))
                continue;
            int start = i + 1;
            var joined = new StringBuilder();
            while (true)
            {
                var current = lines[i].TrimEnd();
                bool continues = current.EndsWith('\\');
                joined.Append(continues ? current[..^1] : current);
                if (!continues || i + 1 >= lines.Length)
                    break;
                i++;
                // Comment lines inside a continued instruction are skipped, as Docker does.
                while (i < lines.Length && lines[i].TrimStart().StartsWith('#'))
                    i++;
                if (i >= lines.Length)
                    break;
                joined.Append(' ');
            }
            var full = joined.ToString().Trim();
            int space = full.IndexOfAny([' ', '\t']);
            var keyword = (space < 0 ? full : full[..space]).ToUpperInvariant();
            var rest = space < 0 ? "" : full[(space + 1)..].Trim();
            if (Ignored.Contains(keyword))
                continue;
            if (!Supported.Contains(keyword))
                throw MoatException.Invalid("unsupported_instruction", $"Dockerfile line {start}: {keyword} is not supported by Moat's builder (supported: {string.Join(", ", Supported)})");
            var flags = new Dictionary<string, string>(StringComparer.Ordinal);
            while (rest.StartsWith("--", StringComparison.Ordinal) && keyword is "COPY" or "ADD" or "FROM" or "RUN")
            {
                int end = rest.IndexOfAny([' ', '\t']);
                var flag = end < 0 ? rest : rest[..end];
                rest = end < 0 ? "" : rest[(end + 1)..].TrimStart();
                int eq = flag.IndexOf('=');
                flags[eq < 0 ? flag[2..] : flag[2..eq]] = eq < 0 ? "" : flag[(eq + 1)..];
            }
            IReadOnlyList<string>? exec = null;
            if (keyword is "RUN" or "CMD" or "ENTRYPOINT" or "COPY" or "ADD" && rest.StartsWith('['))
            {
                try
                {
                    exec = JsonSerializer.Deserialize(rest, StorageJson.Default.ListString);
                }
                catch (JsonException)
                {
                    // Not JSON after all: the shell form, as Docker treats it.
                }
            }
            if (rest.Length == 0 && keyword is not ("CMD" or "ENTRYPOINT"))
                throw MoatException.Invalid("invalid_dockerfile", $"Dockerfile line {start}: {keyword} needs arguments");
            result.Add(new DockerInstruction(start, keyword, rest, flags, exec));
        }
        var froms = result.Where(r => r.Keyword == "FROM").ToList();
        if (froms.Count == 0)
            throw MoatException.Invalid("invalid_dockerfile", "the Dockerfile has no FROM");
        if (froms.Count > 1)
            throw MoatException.Invalid("unsupported_instruction", $"Dockerfile line {froms[1].Line}: multi-stage builds are not supported (one FROM only)");
        if (result.TakeWhile(r => r.Keyword != "FROM").Any(r => r.Keyword != "ARG"))
            throw MoatException.Invalid("invalid_dockerfile", "the Dockerfile must start with FROM (only ARG may come before it)");
        return result;
    }

    /// <summary>Replaces <c>$NAME</c> and <c>${NAME}</c> (and <c>${NAME:-default}</c>) from <paramref name="variables"/>; <c>\$</c> stays a dollar.</summary>
    public static string Expand(string text, IReadOnlyDictionary<string, string> variables)
    {
        if (!text.Contains('$'))
            return text;
        var output = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '\\' && i + 1 < text.Length && text[i + 1] == '$')
            {
                output.Append('$');
                i++;
                continue;
            }
            if (c != '$' || i + 1 >= text.Length)
            {
                output.Append(c);
                continue;
            }
            if (text[i + 1] == '{')
            {
                int end = text.IndexOf('}', i + 2);
                if (end < 0)
                {
                    output.Append(c);
                    continue;
                }
                var inner = text[(i + 2)..end];
                string? fallback = null;
                int sep = inner.IndexOf(":-", StringComparison.Ordinal);
                if (sep >= 0)
                {
                    fallback = inner[(sep + 2)..];
                    inner = inner[..sep];
                }
                output.Append(variables.TryGetValue(inner, out var value) && value.Length > 0 ? value : fallback ?? "");
                i = end;
                continue;
            }
            int j = i + 1;
            while (j < text.Length && (char.IsAsciiLetterOrDigit(text[j]) || text[j] == '_'))
                j++;
            if (j == i + 1)
            {
                output.Append(c);
                continue;
            }
            output.Append(variables.TryGetValue(text[(i + 1)..j], out var v) ? v : "");
            i = j - 1;
        }
        return output.ToString();
    }

    /// <summary>KEY=VALUE pairs (quotes allowed) or the legacy <c>KEY VALUE</c> form of ENV and LABEL.</summary>
    public static List<KeyValuePair<string, string>> Pairs(string arguments, int line, string keyword)
    {
        var words = Words(arguments);
        var pairs = new List<KeyValuePair<string, string>>();
        if (words.Count >= 1 && !words[0].Contains('='))
        {
            // ENV KEY VALUE...: the rest of the line is the value.
            int space = arguments.IndexOfAny([' ', '\t']);
            pairs.Add(new(words[0], space < 0 ? "" : Unquote(arguments[(space + 1)..].Trim())));
            return pairs;
        }
        foreach (var word in words)
        {
            int eq = word.IndexOf('=');
            if (eq <= 0)
                throw MoatException.Invalid("invalid_dockerfile", $"Dockerfile line {line}: {keyword} takes KEY=VALUE, got '{word}'");
            pairs.Add(new(word[..eq], word[(eq + 1)..]));
        }
        return pairs;
    }

    /// <summary>Splits on blanks, honouring double and single quotes and backslash escapes; quotes are removed.</summary>
    public static List<string> Words(string text)
    {
        var words = new List<string>();
        var current = new StringBuilder();
        bool any = false;
        char quote = '\0';
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (quote != '\0')
            {
                if (c == quote)
                    quote = '\0';
                else if (c == '\\' && quote == '"' && i + 1 < text.Length)
                    current.Append(text[++i]);
                else
                    current.Append(c);
                continue;
            }
            if (c is '"' or '\'')
            {
                quote = c;
                any = true;
            }
            else if (c == '\\' && i + 1 < text.Length)
            {
                current.Append(text[++i]);
                any = true;
            }
            else if (char.IsWhiteSpace(c))
            {
                if (any || current.Length > 0)
                    words.Add(current.ToString());
                current.Clear();
                any = false;
            }
            else
            {
                current.Append(c);
                any = true;
            }
        }
        if (any || current.Length > 0)
            words.Add(current.ToString());
        return words;
    }

    private static string Unquote(string s) => s.Length >= 2 && (s[0] == '"' && s[^1] == '"' || s[0] == '\'' && s[^1] == '\'') ? s[1..^1] : s;
}
