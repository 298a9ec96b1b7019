using Google.Protobuf.Collections;
using Moat.Agent.Interop;
using Moat.Agent.Users;
using Moat.Protocol.Messages;

namespace Moat.Agent.Processes;

/// <summary>Environment composition and PATH lookup for a command, as execvpe would do it.</summary>
internal static unsafe class CommandLine
{
    public const string DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /// <summary>
    /// The host's environment plus HOME, USER, LOGNAME and PATH where absent (and TERM on a
    /// terminal; a later duplicate name wins). Null with <paramref name="error"/> set when a variable is malformed.
    /// </summary>
    public static List<string>? ComposeEnvironment(RepeatedField<EnvVar> env, UserIdentity user, out string? error, out string path, bool terminal = false)
    {
        var order = new List<string>();
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var v in env)
        {
            if (v.Name.Length == 0 || v.Name.Contains('=') || v.Name.Contains('\0') || v.Value.Contains('\0'))
            {
                error = $"invalid environment variable name or value: '{Truncate(v.Name)}'";
                path = "";
                return null;
            }
            if (!values.ContainsKey(v.Name))
                order.Add(v.Name);
            values[v.Name] = v.Value;
        }
        AddDefault(order, values, "HOME", user.Home);
        AddDefault(order, values, "USER", user.Name);
        AddDefault(order, values, "LOGNAME", user.Name);
        AddDefault(order, values, "PATH", DefaultPath);
        if (terminal)
            AddDefault(order, values, "TERM", "xterm-256color");
        path = values["PATH"];
        error = null;
        var result = new List<string>(order.Count);
        foreach (var name in order)
            result.Add(name + "=" + values[name]);
        return result;
    }

    /// <summary>
    /// Finds the program: argv[0] with a slash is used as given (relative to the cwd, where the
    /// child will be); otherwise the first executable regular file along PATH. When only a
    /// non-executable match exists it is returned so exec reports EACCES, like execvp.
    /// </summary>
    public static string? Resolve(string program, string path, string cwd)
    {
        if (program.Length == 0)
            return null;
        if (program.Contains('/'))
            return program;
        string? fallback = null;
        foreach (var part in path.Split(':'))
        {
            string dir = part.Length == 0 ? "." : part;
            string candidate = dir + "/" + program;
            string probe = candidate[0] == '/' ? candidate : cwd.TrimEnd('/') + "/" + candidate;
            if (!Libc.TryEncode(probe, out var z))
                continue;
            MoatStat st;
            int r;
            fixed (byte* p = z)
                r = Native.moat_fstatat(Libc.AT_FDCWD, p, 0, &st);
            if (r < 0 || !st.IsRegular)
                continue;
            if ((st.Mode & 0x49 /* 0111 */) != 0)
                return probe;
            fallback ??= probe;
        }
        return fallback;
    }

    private static void AddDefault(List<string> order, Dictionary<string, string> values, string name, string value)
    {
        if (values.ContainsKey(name))
            return;
        order.Add(name);
        values[name] = value;
    }

    private static string Truncate(string s) => s.Length > 64 ? s[..64] : s;
}
