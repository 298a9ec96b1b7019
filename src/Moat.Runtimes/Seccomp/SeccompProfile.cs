using System.Text.Json;

namespace Moat.Runtimes.Seccomp;

/// <summary>
/// Moat's own seccomp profile (runc applies none by default). Kept in the repository as data,
/// <c>moat-seccomp.json</c>, so it can be reviewed and diffed like any policy.
/// </summary>
public static class SeccompProfile
{
    private static readonly Lazy<JsonElement> Profile = new(Load);
    private static readonly Lazy<JsonElement> SentryProfile = new(() => WithClone3Allowed(Profile.Value));

    /// <summary>The profile as the OCI <c>linux.seccomp</c> object.</summary>
    public static JsonElement Json => Profile.Value;

    /// <summary>
    /// The profile as gVisor applies it (<c>--oci-seccomp</c>): the same, except that clone3 is
    /// allowed. gVisor's release 20221219 turns every errno action into EPERM, and glibc only
    /// falls back from clone3 to clone on ENOSYS; namespace creation through clone3 is still
    /// refused by the Sentry itself, since user code holds no capabilities.
    /// </summary>
    public static JsonElement ForSentry => SentryProfile.Value;

    private static JsonElement WithClone3Allowed(JsonElement profile)
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse(profile.GetRawText())!;
        var rules = node["syscalls"]!.AsArray();
        for (int i = rules.Count - 1; i >= 0; i--)
        {
            var names = rules[i]!["names"]!.AsArray();
            if (names.Count == 1 && names[0]!.GetValue<string>() == "clone3")
                rules.RemoveAt(i);
        }
        rules[0]!["names"]!.AsArray().Add("clone3");
        using var document = JsonDocument.Parse(node.ToJsonString());
        return document.RootElement.Clone();
    }

    /// <summary>Syscalls the profile allows unconditionally.</summary>
    public static IReadOnlySet<string> Allowed { get; } = new Lazy<HashSet<string>>(() =>
        Json.GetProperty("syscalls").EnumerateArray()
            .Where(r => r.GetProperty("action").GetString() == "SCMP_ACT_ALLOW" && !r.TryGetProperty("args", out _))
            .SelectMany(r => r.GetProperty("names").EnumerateArray().Select(n => n.GetString()!))
            .ToHashSet()).Value;

    private static JsonElement Load()
    {
        using var stream = typeof(SeccompProfile).Assembly.GetManifestResourceStream("moat-seccomp.json")
            ?? throw new InvalidOperationException("the seccomp profile is not embedded in Moat.Runtimes");
        using var document = JsonDocument.Parse(stream);
        var root = document.RootElement.Clone();
        return root;
    }
}
