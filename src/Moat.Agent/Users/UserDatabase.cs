using System.Globalization;
using Moat.Agent.Interop;

namespace Moat.Agent.Users;

/// <summary>One line of /etc/passwd.</summary>
internal sealed record PasswdEntry(string Name, uint Uid, uint Gid, string Home, string Shell);

/// <summary>One line of /etc/group.</summary>
internal sealed record GroupEntry(string Name, uint Gid, string[] Members);

/// <summary>Who a command runs as or whose permissions a file operation uses.</summary>
internal sealed record UserIdentity(string Name, uint Uid, uint Gid, uint[] Groups, string Home, string Shell)
{
    public bool IsRoot => Uid == 0;
}

/// <summary>
/// A parsed snapshot of the sandbox's /etc/passwd and /etc/group. The files belong to the
/// sandbox and may be anything: malformed lines are skipped, never fatal.
/// </summary>
internal sealed class AccountFiles
{
    /// <summary>Most supplementary groups given to one user (the kernel allows 65536; nobody needs that).</summary>
    public const int MaxGroups = 256;

    private readonly Dictionary<string, PasswdEntry> _byName = new(StringComparer.Ordinal);
    private readonly Dictionary<uint, PasswdEntry> _byUid = [];
    private readonly Dictionary<uint, GroupEntry> _groupsByGid = [];
    private readonly List<GroupEntry> _groups = [];

    public static readonly AccountFiles Empty = Parse(null, null);

    public static AccountFiles Parse(string? passwd, string? group)
    {
        var files = new AccountFiles();
        foreach (var line in Lines(passwd))
        {
            var f = line.Split(':');
            if (f.Length < 7 || f[0].Length == 0 || !TryId(f[2], out uint uid) || !TryId(f[3], out uint gid))
                continue;
            var entry = new PasswdEntry(f[0], uid, gid, f[5], f[6]);
            files._byName.TryAdd(entry.Name, entry); // the first line wins, as in getpwnam
            files._byUid.TryAdd(uid, entry);
        }
        foreach (var line in Lines(group))
        {
            var f = line.Split(':');
            if (f.Length < 4 || f[0].Length == 0 || !TryId(f[2], out uint gid))
                continue;
            var members = f[3].Length == 0 ? [] : f[3].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var entry = new GroupEntry(f[0], gid, members);
            files._groups.Add(entry);
            files._groupsByGid.TryAdd(gid, entry);
        }
        return files;
    }

    public PasswdEntry? ByName(string name) => _byName.GetValueOrDefault(name);

    public PasswdEntry? ByUid(uint uid) => _byUid.GetValueOrDefault(uid);

    public GroupEntry? GroupByGid(uint gid) => _groupsByGid.GetValueOrDefault(gid);

    public bool HasGroup(string name) => _groups.Exists(g => g.Name == name);

    /// <summary>The primary group followed by every group that lists <paramref name="userName"/>.</summary>
    public uint[] GroupsOf(string userName, uint primaryGid)
    {
        var result = new List<uint> { primaryGid };
        foreach (var g in _groups)
        {
            if (result.Count >= MaxGroups)
                break;
            if (Array.IndexOf(g.Members, userName) >= 0 && !result.Contains(g.Gid))
                result.Add(g.Gid);
        }
        return [.. result];
    }

    private static IEnumerable<string> Lines(string? text)
    {
        if (string.IsNullOrEmpty(text))
            yield break;
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.TrimEnd('\r');
            if (line.Length == 0 || line[0] == '#')
                continue;
            yield return line;
        }
    }

    private static bool TryId(string text, out uint id)
        => uint.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out id) && id != uint.MaxValue;
}

/// <summary>
/// Resolves user names in the sandbox's own account files (re-read when they change).
/// <c>user</c> is uid 1000 with home /home/user and <c>root</c> is uid 0 even when the image's
/// files do not say so.
/// </summary>
/// <param name="passwdPath">The sandbox's passwd file.</param>
/// <param name="groupPath">The sandbox's group file.</param>
/// <param name="stamp">How to tell a file changed (mtime, size, inode); the default is a native stat.</param>
internal sealed class UserDatabase(string passwdPath = "/etc/passwd", string groupPath = "/etc/group", Func<string, (long, long, ulong)>? stamp = null)
{
    public const uint DefaultUid = 1000;
    public const string DefaultUserName = "user";
    public const string DefaultHome = "/home/user";

    private readonly object _gate = new();
    private AccountFiles _files = AccountFiles.Empty;
    private (long, long, ulong, long, long, ulong) _stamp = (-1, -1, 0, -1, -1, 0);

    public string PasswdPath => passwdPath;

    public string GroupPath => groupPath;

    /// <summary>The current account files, re-parsed when either changed on disk.</summary>
    public AccountFiles Files
    {
        get
        {
            var stamper = stamp ?? Stamp;
            var stamp2 = (stamper(passwdPath), stamper(groupPath));
            var flat = (stamp2.Item1.Item1, stamp2.Item1.Item2, stamp2.Item1.Item3, stamp2.Item2.Item1, stamp2.Item2.Item2, stamp2.Item2.Item3);
            lock (_gate)
            {
                if (flat != _stamp)
                {
                    _files = AccountFiles.Parse(Libc.ReadSmallText(passwdPath), Libc.ReadSmallText(groupPath));
                    _stamp = flat;
                }
                return _files;
            }
        }
    }

    /// <summary>
    /// Resolves a user name or numeric uid; <paramref name="spec"/> empty means
    /// <paramref name="fallback"/>. Null when the name is unknown.
    /// </summary>
    public UserIdentity? Resolve(string spec, string fallback)
    {
        if (string.IsNullOrEmpty(spec))
            spec = fallback;
        var files = Files;
        if (spec == DefaultUserName)
        {
            var e = files.ByName(DefaultUserName);
            return e is not null
                ? Identity(files, e)
                : new UserIdentity(DefaultUserName, DefaultUid, DefaultUid, files.GroupsOf(DefaultUserName, DefaultUid), DefaultHome, DefaultShell());
        }
        if (spec == "root")
        {
            var e = files.ByName("root");
            return e is not null && e.Uid == 0
                ? Identity(files, e)
                : new UserIdentity("root", 0, 0, files.GroupsOf("root", 0), "/root", DefaultShell());
        }
        if (spec.Length > 0 && spec.All(char.IsAsciiDigit))
        {
            if (!uint.TryParse(spec, NumberStyles.None, CultureInfo.InvariantCulture, out uint uid) || uid == uint.MaxValue)
                return null;
            var e = files.ByUid(uid);
            return e is not null ? Identity(files, e) : new UserIdentity(spec, uid, uid, [uid], "/", DefaultShell());
        }
        var named = files.ByName(spec);
        return named is null ? null : Identity(files, named);
    }

    public string UserName(uint uid) => Files.ByUid(uid)?.Name ?? "";

    public string GroupName(uint gid) => Files.GroupByGid(gid)?.Name ?? "";

    private static UserIdentity Identity(AccountFiles files, PasswdEntry e)
        => new(e.Name, e.Uid, e.Gid, files.GroupsOf(e.Name, e.Gid), e.Home.Length > 0 ? e.Home : "/", e.Shell);

    public static string DefaultShell() => File.Exists("/bin/bash") ? "/bin/bash" : "/bin/sh";

    private static unsafe (long, long, ulong) Stamp(string path)
    {
        MoatStat st;
        int r;
        fixed (byte* p = Libc.Z(path))
            r = Native.moat_fstatat(Libc.AT_FDCWD, p, 0, &st);
        return r < 0 ? (-1, -1, 0) : (st.MtimeSec * 1_000_000_000 + st.MtimeNsec, (long)st.Size, st.Ino);
    }
}
