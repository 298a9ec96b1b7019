namespace Moat.Core.Sandboxes;

/// <summary>Where a sandbox is in its life.</summary>
public enum SandboxState
{
    /// <summary>Being set up; not yet usable.</summary>
    Creating,
    /// <summary>Running; commands and files work.</summary>
    Running,
    /// <summary>Frozen: no CPU, memory and files kept.</summary>
    Paused,
    /// <summary>Being torn down.</summary>
    Stopping,
    /// <summary>Gone, cleanly (deleted or timed out).</summary>
    Stopped,
    /// <summary>Gone because something broke; <see cref="SandboxRecord.StateReason"/> says what.</summary>
    Failed,
}

/// <summary>Wire names of states.</summary>
public static class SandboxStates
{
    /// <summary>The state's name in APIs.</summary>
    public static string Name(this SandboxState state) => state.ToString().ToLowerInvariant();

    /// <summary>Parses a state name; null when unknown.</summary>
    public static SandboxState? TryParse(string? name) =>
        Enum.TryParse<SandboxState>(name, ignoreCase: true, out var s) && Enum.IsDefined(s) && !int.TryParse(name, out _) ? s : null;

    /// <summary>Every state of a sandbox that is not gone for good (the opposite of <see cref="IsTerminal"/>).</summary>
    public static readonly IReadOnlyList<SandboxState> Alive = [SandboxState.Creating, SandboxState.Running, SandboxState.Paused, SandboxState.Stopping];

    /// <summary>Whether the sandbox is gone for good.</summary>
    public static bool IsTerminal(this SandboxState state) => state is SandboxState.Stopped or SandboxState.Failed;
}

/// <summary>The persisted description of a sandbox: what was asked, where it runs, what became of it.</summary>
public sealed record SandboxRecord
{
    /// <summary>Sandbox id (fixed width: runtimes that match ids by prefix never confuse two).</summary>
    public required string Id { get; init; }
    /// <summary>Owning tenant.</summary>
    public required string TenantId { get; init; }
    /// <summary>
    /// Which process manages it: the server ("serve") or a one-shot "run:PID:START" that owns
    /// its sandbox alone. A restarted server recovers only its own, and those of dead runs.
    /// </summary>
    public string Owner { get; init; } = "serve";
    /// <summary>What was asked for.</summary>
    public required SandboxSpec Spec { get; init; }
    /// <summary>Current state.</summary>
    public SandboxState State { get; init; }
    /// <summary>Why it is in that state (timeout, deleted, agent_lost, ...), for failed and stopped sandboxes.</summary>
    public string? StateReason { get; init; }
    /// <summary>When it was asked for.</summary>
    public DateTimeOffset CreatedAt { get; init; }
    /// <summary>When its agent first answered.</summary>
    public DateTimeOffset? StartedAt { get; init; }
    /// <summary>When the reaper ends it.</summary>
    public DateTimeOffset ExpiresAt { get; init; }
    /// <summary>When it ended.</summary>
    public DateTimeOffset? EndedAt { get; init; }
    /// <summary>While paused: the lifetime it had left when it was paused (the clock stops while paused).</summary>
    public TimeSpan? RemainingWhenPaused { get; init; }
    /// <summary>When it was last paused.</summary>
    public DateTimeOffset? PausedAt { get; init; }
    /// <summary>What the runtime needs to find it again (container id, paths), opaque to the manager.</summary>
    public Runtimes.RuntimeInstance? Instance { get; init; }
    /// <summary>
    /// SHA-256 (hex) of the sandbox's data-plane access token (E2B's <c>envdAccessToken</c>), when
    /// one was issued. The token itself is never stored.
    /// </summary>
    public string? AccessTokenHash { get; init; }
}
