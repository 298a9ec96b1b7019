namespace Moat.Server.E2b;

/// <summary>E2B compatibility (section <c>Moat:E2b</c>).</summary>
public sealed class E2bOptions
{
    /// <summary>Path prefix of E2B's control plane (the SDK's <c>apiUrl</c> is the server's URL plus this).</summary>
    public string Prefix { get; set; } = "/e2b";

    /// <summary>
    /// Base domain sandboxes answer on as <c>{port}-{sandboxId}.{domain}</c> (returned to the SDKs as
    /// <c>domain</c>). Unset: the SDKs are pointed at the server with <c>sandboxUrl</c> instead.
    /// </summary>
    public string? Domain { get; set; }

    /// <summary>Lifetime of a sandbox whose create request gives no timeout (E2B's API: 15 s).</summary>
    public int DefaultTimeoutSeconds { get; set; } = 15;

    /// <summary>The envd version Moat's data plane reports (the SDKs enable features by it).</summary>
    public string EnvdVersion { get; set; } = "0.6.4";

    /// <summary>Isolation tier of sandboxes created through E2B's API (empty: the server's default).</summary>
    public string Isolation { get; set; } = "";

    /// <summary>E2B template ids mapped to Moat template names; ids not listed are used as names.</summary>
    public Dictionary<string, string> Templates { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The Moat template an E2B template id stands for.</summary>
    public string TemplateFor(string? e2bTemplate)
    {
        var id = string.IsNullOrWhiteSpace(e2bTemplate) ? "base" : e2bTemplate.Trim();
        return Templates.TryGetValue(id, out var mapped) ? mapped : id;
    }
}
