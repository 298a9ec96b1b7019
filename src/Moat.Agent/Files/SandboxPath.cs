namespace Moat.Agent.Files;

/// <summary>
/// Paths of file requests. Everything resolves inside the sandbox anyway (the agent lives in its
/// mount namespace); normalising only makes results predictable: relative paths are taken from
/// the user's home, and ".", ".." and repeated slashes are folded lexically.
/// </summary>
internal static class SandboxPath
{
    public const int MaxLength = 4096;

    /// <summary>The absolute, normalised path, or null when the path is empty, has a NUL or is too long.</summary>
    public static string? Normalize(string path, string home)
    {
        if (path.Length == 0 || path.Length > MaxLength || path.Contains('\0'))
            return null;
        if (path[0] != '/')
            path = home.TrimEnd('/') + "/" + path;
        var parts = new List<string>();
        foreach (var part in path.Split('/'))
        {
            if (part.Length == 0 || part == ".")
                continue;
            if (part == "..")
            {
                if (parts.Count > 0)
                    parts.RemoveAt(parts.Count - 1);
                continue;
            }
            parts.Add(part);
        }
        string result = "/" + string.Join('/', parts);
        return result.Length > MaxLength ? null : result;
    }

    public static string Parent(string normalized)
    {
        int i = normalized.LastIndexOf('/');
        return i <= 0 ? "/" : normalized[..i];
    }

    public static string Name(string normalized)
    {
        int i = normalized.LastIndexOf('/');
        return normalized[(i + 1)..];
    }

    public static string Join(string dir, string name) => dir == "/" ? "/" + name : dir + "/" + name;
}
