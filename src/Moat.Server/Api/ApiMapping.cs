using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Protocol.Messages;
using FileInfo = Moat.Protocol.Messages.FileInfo;

namespace Moat.Server.Api;

/// <summary>Between the core's types and the API's JSON shapes.</summary>
public static class ApiMapping
{
    /// <summary>A sandbox for the API.</summary>
    public static SandboxDto ToDto(this SandboxRecord r, HostUsage? usage = null) => new()
    {
        Id = r.Id,
        State = r.State.Name(),
        StateReason = r.StateReason,
        Template = r.Spec.Template,
        Isolation = r.Spec.Tier.Name(),
        Resources = new ResourcesDto { Cpus = r.Spec.Resources.Cpus, MemoryMiB = r.Spec.Resources.MemoryMiB, DiskMiB = r.Spec.Resources.DiskMiB, Pids = r.Spec.Resources.Pids, OpenFiles = r.Spec.Resources.OpenFiles },
        Network = new NetworkDto { Mode = r.Spec.Network.Mode.ToString().ToLowerInvariant(), Allow = r.Spec.Network.Allow },
        TimeoutSeconds = (long)r.Spec.Timeout.TotalSeconds,
        OnTimeout = r.Spec.OnTimeout.Name(),
        CreatedAt = r.CreatedAt,
        StartedAt = r.StartedAt,
        ExpiresAt = r.ExpiresAt,
        EndedAt = r.EndedAt,
        EnvKeys = r.Spec.Env.Keys.Order(StringComparer.Ordinal).ToList(),
        Metadata = r.Spec.Metadata,
        Usage = usage is null ? null : new UsageDto
        {
            CpuSeconds = Math.Round(usage.CpuTime.TotalSeconds, 3),
            MemoryBytes = usage.MemoryBytes,
            MemoryPeakBytes = usage.MemoryPeakBytes,
            MemoryLimitBytes = usage.MemoryLimitBytes,
            DiskUsedBytes = usage.DiskUsedBytes,
            DiskLimitBytes = usage.DiskLimitBytes,
            Pids = usage.Pids,
            OomKills = usage.OomKills,
        },
    };

    /// <summary>
    /// Turns a create request into a validated spec: defaults filled in, the tier checked against
    /// this host, every limit enforced (never silently clamped).
    /// </summary>
    public static async Task<SandboxSpec> ToSpecAsync(CreateSandboxRequest request, SandboxManager manager, CancellationToken cancellationToken)
    {
        var options = manager.Options;
        IsolationTier tier;
        if (string.IsNullOrEmpty(request.Isolation))
            tier = await manager.Runtimes.DefaultTierAsync(cancellationToken).ConfigureAwait(false);
        else
            tier = IsolationTiers.TryParse(request.Isolation) ?? throw MoatException.Invalid("invalid_isolation", $"isolation must be microvm, gvisor or container, got '{request.Isolation}'");
        var d = options.DefaultResources;
        var r = request.Resources;
        var resources = new ResourceLimits
        {
            Cpus = r?.Cpus ?? d.Cpus,
            MemoryMiB = r?.MemoryMiB ?? d.MemoryMiB,
            DiskMiB = r?.DiskMiB ?? d.DiskMiB,
            Pids = r?.Pids ?? d.Pids,
            OpenFiles = r?.OpenFiles ?? d.OpenFiles,
        };
        long timeout = request.TimeoutSeconds ?? options.DefaultTimeoutSeconds;
        if (timeout <= 0 || timeout > 10L * 365 * 86400)
            throw MoatException.Invalid("invalid_timeout", $"timeoutSeconds must be between 1 and {10L * 365 * 86400}, got {timeout}");
        var onTimeout = ToTimeoutAction(request.OnTimeout) ?? TimeoutAction.Kill;
        var template = string.IsNullOrEmpty(request.Template) ? options.DefaultTemplate : request.Template;
        if (template.Length > 256)
            throw MoatException.Invalid("invalid_template", "template names are at most 256 characters");
        return new SandboxSpec
        {
            Template = template,
            Tier = tier,
            Resources = resources,
            Timeout = TimeSpan.FromSeconds(timeout),
            OnTimeout = onTimeout,
            Network = ToPolicy(request.Network),
            Env = request.Env ?? [],
            Metadata = request.Metadata ?? [],
        };
    }

    /// <summary>onTimeout from the API: null when absent, 400 when not kill or pause.</summary>
    public static TimeoutAction? ToTimeoutAction(string? value)
    {
        if (value is null)
            return null;
        return TimeoutActions.TryParse(value) ?? throw MoatException.Invalid("invalid_on_timeout", $"onTimeout must be kill or pause, got '{value}'");
    }

    /// <summary>A network policy from the API.</summary>
    public static NetworkPolicy ToPolicy(NetworkDto? network)
    {
        if (network is null)
            return NetworkPolicy.None;
        var mode = network.Mode?.ToLowerInvariant() switch
        {
            null or "" or "none" => NetworkMode.None,
            "allow" => NetworkMode.Allow,
            "open" => NetworkMode.Open,
            var other => throw MoatException.Invalid("invalid_network", $"network mode must be none, allow or open, got '{other}'"),
        };
        var allow = network.Allow ?? [];
        if (mode != NetworkMode.Allow && allow.Count > 0)
            throw MoatException.Invalid("invalid_network", "an allow list needs mode 'allow'");
        if (mode == NetworkMode.Allow && allow.Count == 0)
            throw MoatException.Invalid("invalid_network", "mode 'allow' needs a non-empty allow list");
        return new NetworkPolicy(mode, allow);
    }

    /// <summary>A file entry for the API.</summary>
    public static FileEntryDto ToDto(this FileInfo f) => new()
    {
        Name = f.Name,
        Path = f.Path,
        Type = f.Type switch
        {
            FileType.File => "file",
            FileType.Directory => "dir",
            FileType.Symlink => "symlink",
            FileType.Fifo => "fifo",
            FileType.Socket => "socket",
            FileType.CharDevice => "char",
            FileType.BlockDevice => "block",
            _ => "unknown",
        },
        Size = (long)f.Size,
        Mode = "0" + Convert.ToString(f.Mode & 0xFFF, 8).PadLeft(3, '0'),
        Mtime = DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(f.MtimeUnixMs, -62135596800000, 253402300799999)),
        Owner = string.IsNullOrEmpty(f.Owner) ? f.Uid.ToString() : f.Owner,
        Group = string.IsNullOrEmpty(f.Group) ? f.Gid.ToString() : f.Group,
        SymlinkTarget = string.IsNullOrEmpty(f.SymlinkTarget) ? null : f.SymlinkTarget,
    };

    /// <summary>A command from the API.</summary>
    public static CommandSpec ToCommand(this ExecRequestDto request) => new()
    {
        Argv = request.Cmd,
        Shell = request.Shell,
        Cwd = string.IsNullOrEmpty(request.Cwd) ? null : request.Cwd,
        Env = request.Env,
        User = string.IsNullOrEmpty(request.User) ? null : request.User,
        Timeout = request.TimeoutSeconds is { } t ? (t > 0 && t < 365 * 86400 ? TimeSpan.FromSeconds(t) : throw MoatException.Invalid("invalid_timeout", $"timeoutSeconds must be positive and under a year, got {t}")) : null,
    };

    /// <summary>Stdin bytes of an exec request.</summary>
    public static byte[] StdinOf(string? text, string? base64)
    {
        if (text is not null && base64 is not null)
            throw MoatException.Invalid("invalid_stdin", "give stdin or stdinBase64, not both");
        if (base64 is not null)
        {
            try
            {
                return Convert.FromBase64String(base64);
            }
            catch (FormatException)
            {
                throw MoatException.Invalid("invalid_stdin", "stdinBase64 is not valid base64");
            }
        }
        return text is null ? [] : System.Text.Encoding.UTF8.GetBytes(text);
    }
}
