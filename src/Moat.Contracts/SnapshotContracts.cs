namespace Moat.Contracts;

/// <summary>POST /v1/sandboxes/{id}/snapshots.</summary>
public sealed record CreateSnapshotRequest
{
    /// <summary>The snapshot's name: a new template of the tenant (1-128 letters, digits and . _ - : /).</summary>
    public string? Name { get; init; }
    /// <summary>
    /// What to capture: <c>filesystem</c> (the default, every tier but microVM: files only) or
    /// <c>memory</c> (processes, memory and files, where the tier lists it in <c>GET /v1/capabilities</c>).
    /// </summary>
    public string? Kind { get; init; }
}

/// <summary>A snapshot: a template made from a sandbox's files, and for a memory snapshot its saved processes.</summary>
public sealed record SnapshotDto
{
    /// <summary>Its name; <c>POST /v1/sandboxes {"template": name}</c> restores it.</summary>
    public required string Name { get; init; }
    /// <summary>What is captured: <c>filesystem</c> (files; not processes or memory) or <c>memory</c> (processes, memory and files).</summary>
    public required string Kind { get; init; }
    /// <summary>For a memory snapshot, the only tier that can resume it.</summary>
    public string? Isolation { get; init; }
    /// <summary>The sandbox it was taken from.</summary>
    public string? SandboxId { get; init; }
    /// <summary>Files, directories and deletions captured on top of the sandbox's template.</summary>
    public int? ChangedEntries { get; init; }
    /// <summary>The template as it is stored.</summary>
    public required TemplateDto Template { get; init; }
}

/// <summary>GET /v1/snapshots.</summary>
public sealed record SnapshotListResponse(IReadOnlyList<SnapshotDto> Snapshots);

/// <summary>POST /v1/sandboxes/{id}/fork.</summary>
public sealed record ForkRequest
{
    /// <summary>How many sandboxes to start from the source's current files (1-50; default 1).</summary>
    public int? Count { get; init; }
    /// <summary><c>filesystem</c> (default: each fork starts fresh on the source's files) or <c>memory</c> (each fork resumes the source's running processes).</summary>
    public string? Kind { get; init; }
}

/// <summary>The sandboxes a fork started.</summary>
public sealed record ForkResponse(IReadOnlyList<SandboxDto> Sandboxes);
