using Moat.Contracts;

namespace Moat.Client;

/// <summary>What sandbox to create. Every property is optional: the server fills in its defaults (see <see cref="CapabilitiesResponse.Defaults"/>).</summary>
public sealed class SandboxCreateOptions
{
    /// <summary>Template name, e.g. <c>base</c> (default: the server's default template).</summary>
    public string? Template { get; set; }

    /// <summary><c>microvm</c>, <c>gvisor</c> or <c>container</c> (default: the strongest tier this host can run).</summary>
    public string? Isolation { get; set; }

    /// <summary>CPUs; fractions allowed.</summary>
    public double? Cpus { get; set; }

    /// <summary>Memory limit in MiB.</summary>
    public int? MemoryMiB { get; set; }

    /// <summary>Size of the writable disk layer in MiB.</summary>
    public int? DiskMiB { get; set; }

    /// <summary>Process and thread limit.</summary>
    public int? Pids { get; set; }

    /// <summary>Open files per process.</summary>
    public int? OpenFiles { get; set; }

    /// <summary>Lifetime from now; the server ends the sandbox when it runs out (whole seconds; extend with <see cref="Sandbox.SetTimeoutAsync"/>).</summary>
    public TimeSpan? Timeout { get; set; }

    /// <summary>"kill" (the server's default) or "pause": what happens when <see cref="Timeout"/> runs out.</summary>
    public string? OnTimeout { get; set; }

    /// <summary>Network policy (default: none, loopback only).</summary>
    public NetworkDto? Network { get; set; }

    /// <summary>Environment variables for every command in the sandbox.</summary>
    public IDictionary<string, string> Env { get; set; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>Labels to find the sandbox by (<see cref="MoatClient.ListSandboxesAsync"/>).</summary>
    public IDictionary<string, string> Metadata { get; set; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>The request these options make.</summary>
    /// <returns>The wire shape of <c>POST /v1/sandboxes</c>.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><see cref="Timeout"/> is not a positive whole number of seconds.</exception>
    public CreateSandboxRequest ToRequest()
    {
        long? timeoutSeconds = null;
        if (Timeout is { } t)
        {
            if (t < TimeSpan.FromSeconds(1))
                throw new ArgumentOutOfRangeException(nameof(Timeout), t, "the sandbox timeout must be at least one second");
            timeoutSeconds = (long)Math.Ceiling(t.TotalSeconds);
        }
        bool anyResource = Cpus is not null || MemoryMiB is not null || DiskMiB is not null || Pids is not null || OpenFiles is not null;
        return new CreateSandboxRequest
        {
            Template = Template,
            Isolation = Isolation,
            Resources = anyResource ? new ResourcesDto { Cpus = Cpus, MemoryMiB = MemoryMiB, DiskMiB = DiskMiB, Pids = Pids, OpenFiles = OpenFiles } : null,
            TimeoutSeconds = timeoutSeconds,
            OnTimeout = OnTimeout,
            Network = Network,
            Env = Env is { Count: > 0 } ? new Dictionary<string, string>(Env, StringComparer.Ordinal) : null,
            Metadata = Metadata is { Count: > 0 } ? new Dictionary<string, string>(Metadata, StringComparer.Ordinal) : null,
        };
    }
}
