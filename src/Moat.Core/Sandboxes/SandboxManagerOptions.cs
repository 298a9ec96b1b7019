namespace Moat.Core.Sandboxes;

/// <summary>Configuration of the sandbox manager (section <c>Moat</c>).</summary>
public sealed class SandboxManagerOptions
{
    /// <summary>Where state, templates and sandbox directories live.</summary>
    public string DataDirectory { get; set; } = "/var/lib/moat";

    /// <summary>Who this manager is, in records it owns (see <see cref="SandboxRecord.Owner"/>).</summary>
    public string Owner { get; set; } = "serve";

    /// <summary>Where moat-agent and its loader and libraries are (the directory publish.sh made).</summary>
    public string AgentDirectory { get; set; } = "";

    /// <summary>Tier used when a request names none; empty picks the strongest usable one.</summary>
    public string DefaultTier { get; set; } = "";

    /// <summary>Whether the container tier (shared host kernel) may be used at all.</summary>
    public bool AllowContainer { get; set; } = true;

    /// <summary>Template used when a request names none.</summary>
    public string DefaultTemplate { get; set; } = "base";

    /// <summary>Lifetime when a request gives none.</summary>
    public int DefaultTimeoutSeconds { get; set; } = 300;

    /// <summary>Resources when a request gives none.</summary>
    public ResourceLimits DefaultResources { get; set; } = new();

    /// <summary>What a request may ask for.</summary>
    public SandboxLimits Limits { get; set; } = new();

    /// <summary>How long a new sandbox's agent has to answer (microVMs under TCG need the most).</summary>
    public int AgentStartTimeoutSeconds { get; set; } = 60;

    /// <summary>Largest file the API reads out of a sandbox in one request.</summary>
    public long MaxFileReadBytes { get; set; } = 1L << 30;

    /// <summary>Largest file the API writes into a sandbox in one request.</summary>
    public long MaxFileWriteBytes { get; set; } = 1L << 30;

    /// <summary>Output kept per stream by a buffered exec; more is dropped and marked truncated.</summary>
    public int MaxBufferedOutputBytes { get; set; } = 4 << 20;

    /// <summary>Sandboxes that may exist at once on this node.</summary>
    public int MaxSandboxes { get; set; } = 4000;

    /// <summary>Sandbox creations that may be in progress at once; more wait.</summary>
    public int MaxConcurrentCreates { get; set; } = 32;

    /// <summary>Warm pools: sandboxes of a shape kept ready and handed out on create.</summary>
    public List<PoolOptions> Pools { get; set; } = [];

    /// <summary>How long ended sandboxes stay visible in the API.</summary>
    public int EndedRetentionHours { get; set; } = 24;
}
