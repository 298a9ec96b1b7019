namespace Moat.Core.Templates;

/// <summary>
/// A template resolved for launching: its read-only layers (lowest first) and the image config
/// to honour.
/// </summary>
public sealed record TemplateImage
{
    /// <summary>Template id (stable, content-derived).</summary>
    public required string Id { get; init; }
    /// <summary>Template name.</summary>
    public required string Name { get; init; }
    /// <summary>
    /// Unpacked layer directories, lowest first, in overlayfs's own format: a deleted file of a
    /// lower layer is a character device 0:0 of its name, an opaque directory carries the
    /// <c>trusted.overlay.opaque=y</c> attribute (OCI's <c>.wh.</c> files are converted when a layer
    /// is unpacked). Read-only and shared: nothing may write into them.
    /// </summary>
    public required IReadOnlyList<string> LayerPaths { get; init; }
    /// <summary>The image's configuration.</summary>
    public ImageConfig Config { get; init; } = new();
    /// <summary>What a sandbox of this template starts in the background once it runs, if anything.</summary>
    public TemplateStart? Start { get; init; }
    /// <summary>
    /// For a memory snapshot: the tier whose checkpoint it holds (a sandbox from it resumes the
    /// saved processes, on that tier only); null for an ordinary template.
    /// </summary>
    public Sandboxes.IsolationTier? CheckpointTier { get; init; }
}

/// <summary>
/// A template's start command (the image's Entrypoint + Cmd, or one given at import), kept running
/// in the background of every sandbox, and the check that says it is ready — the way E2B templates
/// keep a server warm.
/// </summary>
public sealed record TemplateStart
{
    /// <summary>The command, as argv.</summary>
    public required IReadOnlyList<string> Command { get; init; }
    /// <summary>A shell command that exits 0 once the sandbox is ready (e.g. <c>curl -sf localhost:8000</c>); null: ready at once.</summary>
    public string? ReadyCheck { get; init; }
    /// <summary>How long the ready check may take to pass.</summary>
    public int ReadyTimeoutSeconds { get; init; } = 30;
}

/// <summary>The parts of an OCI image config Moat honours.</summary>
public sealed record ImageConfig
{
    /// <summary>Environment, as NAME=value.</summary>
    public IReadOnlyList<string> Env { get; init; } = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
    /// <summary>Default working directory, or empty for the user's home.</summary>
    public string WorkingDir { get; init; } = "";
    /// <summary>Default user for commands, or empty for Moat's default (<c>user</c>).</summary>
    public string User { get; init; } = "";
    /// <summary>Entrypoint.</summary>
    public IReadOnlyList<string> Entrypoint { get; init; } = [];
    /// <summary>Cmd.</summary>
    public IReadOnlyList<string> Cmd { get; init; } = [];
}

/// <summary>Where templates come from.</summary>
public interface ITemplateStore
{
    /// <summary>Resolves a template by name for a tenant (its own, or a public one); null if there is none.</summary>
    Task<TemplateImage?> ResolveAsync(string name, string tenantId, CancellationToken cancellationToken);

    /// <summary>Templates visible to a tenant.</summary>
    Task<IReadOnlyList<TemplateImage>> ListAsync(string tenantId, CancellationToken cancellationToken);
}
