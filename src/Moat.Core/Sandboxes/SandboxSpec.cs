using Moat.Core.Errors;

namespace Moat.Core.Sandboxes;

/// <summary>How strongly a sandbox is isolated from the host.</summary>
public enum IsolationTier
{
    /// <summary>Hardened container (runc): namespaces, seccomp, cgroups, no capabilities. Shares the host kernel.</summary>
    Container,
    /// <summary>gVisor (runsc): a user-space kernel between the code and the host.</summary>
    Gvisor,
    /// <summary>A microVM (QEMU microvm) with its own guest kernel.</summary>
    Microvm,
}

/// <summary>Wire names of tiers.</summary>
public static class IsolationTiers
{
    /// <summary>All tiers, strongest first.</summary>
    public static readonly IReadOnlyList<IsolationTier> All = [IsolationTier.Microvm, IsolationTier.Gvisor, IsolationTier.Container];

    /// <summary>The tier's name in APIs and on the command line.</summary>
    public static string Name(this IsolationTier tier) => tier switch
    {
        IsolationTier.Container => "container",
        IsolationTier.Gvisor => "gvisor",
        IsolationTier.Microvm => "microvm",
        _ => throw new ArgumentOutOfRangeException(nameof(tier)),
    };

    /// <summary>Parses a tier name; null when unknown.</summary>
    public static IsolationTier? TryParse(string? name) => name?.Trim().ToLowerInvariant() switch
    {
        "container" or "runc" => IsolationTier.Container,
        "gvisor" or "runsc" => IsolationTier.Gvisor,
        "microvm" or "vm" or "qemu" => IsolationTier.Microvm,
        _ => null,
    };
}

/// <summary>Resource limits of a sandbox. Every one is enforced; none is ever "unlimited".</summary>
public sealed record ResourceLimits
{
    /// <summary>CPU share, in CPUs (fractions allowed).</summary>
    public double Cpus { get; init; } = 1;
    /// <summary>Memory limit in MiB (user processes and everything they put in tmpfs).</summary>
    public int MemoryMiB { get; init; } = 512;
    /// <summary>Size of the writable layer in MiB.</summary>
    public int DiskMiB { get; init; } = 1024;
    /// <summary>Maximum number of processes and threads.</summary>
    public int Pids { get; init; } = 512;
    /// <summary>Open files per process.</summary>
    public int OpenFiles { get; init; } = 4096;
}

/// <summary>Outbound network policy.</summary>
public enum NetworkMode
{
    /// <summary>Loopback only.</summary>
    None,
    /// <summary>Only the listed destinations.</summary>
    Allow,
    /// <summary>The internet, minus the always-denied ranges.</summary>
    Open,
}

/// <summary>What a sandbox may reach.</summary>
public sealed record NetworkPolicy(NetworkMode Mode, IReadOnlyList<string> Allow)
{
    /// <summary>Loopback only — the default.</summary>
    public static readonly NetworkPolicy None = new(NetworkMode.None, []);
}

/// <summary>What happens to a sandbox when its lifetime ends.</summary>
public enum TimeoutAction
{
    /// <summary>It is stopped and its resources freed (the default).</summary>
    Kill,
    /// <summary>It is paused: memory and files kept, no CPU, until resumed or deleted.</summary>
    Pause,
}

/// <summary>Parsing of <see cref="TimeoutAction"/> as the API spells it.</summary>
public static class TimeoutActions
{
    /// <summary>kill or pause, or null for anything else.</summary>
    public static TimeoutAction? TryParse(string? value) => value?.ToLowerInvariant() switch
    {
        "kill" => TimeoutAction.Kill,
        "pause" => TimeoutAction.Pause,
        _ => null,
    };

    /// <summary>The API's name.</summary>
    public static string Name(this TimeoutAction action) => action == TimeoutAction.Pause ? "pause" : "kill";
}

/// <summary>Everything needed to create a sandbox, validated.</summary>
public sealed record SandboxSpec
{
    /// <summary>Template name.</summary>
    public required string Template { get; init; }
    /// <summary>Isolation tier.</summary>
    public required IsolationTier Tier { get; init; }
    /// <summary>Resource limits.</summary>
    public ResourceLimits Resources { get; init; } = new();
    /// <summary>Lifetime from creation (or from the last extension).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>What the reaper does when the lifetime ends.</summary>
    public TimeoutAction OnTimeout { get; init; } = TimeoutAction.Kill;
    /// <summary>Network policy.</summary>
    public NetworkPolicy Network { get; init; } = NetworkPolicy.None;
    /// <summary>Environment for every command (on top of the template's).</summary>
    public IReadOnlyDictionary<string, string> Env { get; init; } = new Dictionary<string, string>();
    /// <summary>Caller's labels, for filtering.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; init; } = new Dictionary<string, string>();
}

/// <summary>The limits the platform accepts for one sandbox; requests outside them are refused.</summary>
public sealed record SandboxLimits
{
    /// <summary>Largest CPU request.</summary>
    public double MaxCpus { get; init; } = Environment.ProcessorCount;
    /// <summary>Largest memory request in MiB.</summary>
    public int MaxMemoryMiB { get; init; } = 16 * 1024;
    /// <summary>Smallest memory request in MiB.</summary>
    public int MinMemoryMiB { get; init; } = 32;
    /// <summary>Largest disk request in MiB.</summary>
    public int MaxDiskMiB { get; init; } = 64 * 1024;
    /// <summary>Smallest disk request in MiB.</summary>
    public int MinDiskMiB { get; init; } = 16;
    /// <summary>Largest pids request.</summary>
    public int MaxPids { get; init; } = 32768;
    /// <summary>Largest open-files request.</summary>
    public int MaxOpenFiles { get; init; } = 1 << 20;
    /// <summary>Longest lifetime, or null for none (a tenant quota may still set one).</summary>
    public TimeSpan? MaxTimeout { get; init; }
    /// <summary>Environment variables per sandbox or command.</summary>
    public int MaxEnv { get; init; } = 256;
    /// <summary>Metadata entries per sandbox.</summary>
    public int MaxMetadata { get; init; } = 64;

    /// <summary>Checks a spec against these limits, throwing an error that names the limit.</summary>
    public void Validate(SandboxSpec spec)
    {
        var r = spec.Resources;
        if (!(r.Cpus > 0) || r.Cpus > MaxCpus || double.IsNaN(r.Cpus))
            throw MoatException.Invalid("invalid_cpus", $"cpus must be more than 0 and at most {MaxCpus} on this host, got {r.Cpus}");
        if (r.MemoryMiB < MinMemoryMiB || r.MemoryMiB > MaxMemoryMiB)
            throw MoatException.Invalid("invalid_memory", $"memoryMiB must be between {MinMemoryMiB} and {MaxMemoryMiB}, got {r.MemoryMiB}");
        if (r.DiskMiB < MinDiskMiB || r.DiskMiB > MaxDiskMiB)
            throw MoatException.Invalid("invalid_disk", $"diskMiB must be between {MinDiskMiB} and {MaxDiskMiB}, got {r.DiskMiB}");
        if (r.Pids < 8 || r.Pids > MaxPids)
            throw MoatException.Invalid("invalid_pids", $"pids must be between 8 and {MaxPids}, got {r.Pids}");
        if (r.OpenFiles < 64 || r.OpenFiles > MaxOpenFiles)
            throw MoatException.Invalid("invalid_open_files", $"openFiles must be between 64 and {MaxOpenFiles}, got {r.OpenFiles}");
        if (spec.Timeout <= TimeSpan.Zero)
            throw MoatException.Invalid("invalid_timeout", $"timeoutSeconds must be positive, got {spec.Timeout.TotalSeconds}");
        if (MaxTimeout is { } max && spec.Timeout > max)
            throw new MoatException(ErrorKind.QuotaExceeded, "timeout_over_limit", $"timeoutSeconds {spec.Timeout.TotalSeconds} exceeds the limit of {max.TotalSeconds}");
        if (spec.Timeout > TimeSpan.FromDays(3650))
            throw MoatException.Invalid("invalid_timeout", "timeoutSeconds is beyond ten years");
        ValidateEnv(spec.Env, MaxEnv);
        if (spec.Metadata.Count > MaxMetadata)
            throw MoatException.Invalid("too_much_metadata", $"at most {MaxMetadata} metadata entries are allowed, got {spec.Metadata.Count}");
        foreach (var (k, v) in spec.Metadata)
        {
            if (k.Length is 0 or > 128 || v.Length > 1024)
                throw MoatException.Invalid("invalid_metadata", "metadata keys must be 1-128 characters and values at most 1024");
        }
        ValidateNetwork(spec.Network);
    }

    /// <summary>Checks a network policy: a known mode, and an allow list (for mode allow only) whose every entry parses.</summary>
    public static void ValidateNetwork(NetworkPolicy policy)
    {
        if (!Enum.IsDefined(policy.Mode))
            throw MoatException.Invalid("invalid_network", $"unknown network mode {policy.Mode}");
        if (policy.Mode != NetworkMode.Allow && policy.Allow.Count > 0)
            throw MoatException.Invalid("invalid_network", "an allow list needs mode 'allow'");
        if (policy.Mode == NetworkMode.Allow && policy.Allow.Count == 0)
            throw MoatException.Invalid("invalid_network", "mode 'allow' needs a non-empty allow list");
        Networking.EgressRule.ParseAll(policy.Allow);
    }

    /// <summary>Checks environment variables: valid names, bounded sizes.</summary>
    public static void ValidateEnv(IReadOnlyDictionary<string, string> env, int max)
    {
        if (env.Count > max)
            throw MoatException.Invalid("too_many_env", $"at most {max} environment variables are allowed, got {env.Count}");
        foreach (var (k, v) in env)
        {
            if (k.Length is 0 or > 256 || k.Contains('=') || k.Contains('\0') || char.IsDigit(k[0]))
                throw MoatException.Invalid("invalid_env", $"'{Trim(k)}' is not a valid environment variable name");
            if (v.Length > 128 * 1024 || v.Contains('\0'))
                throw MoatException.Invalid("invalid_env", $"the value of {Trim(k)} is too long or contains a NUL byte");
        }
    }

    private static string Trim(string s) => s.Length > 40 ? s[..40] + "…" : s;
}
