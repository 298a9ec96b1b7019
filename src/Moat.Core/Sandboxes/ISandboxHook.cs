using Moat.Core.Runtimes;
using Moat.Core.Agent;

namespace Moat.Core.Sandboxes;

/// <summary>
/// What the platform around the manager (quotas, audit, metrics, metering) sees of sandboxes.
/// Admission hooks may refuse by throwing; the observing ones must not throw and must not block.
/// </summary>
public interface ISandboxHook
{
    /// <summary>
    /// Before a sandbox is created: throw to refuse (over quota). The returned reservation, if
    /// any, is disposed once the creation has finished, whichever way.
    /// </summary>
    ValueTask<IDisposable?> AdmitAsync(SandboxSpec spec, string tenantId, CancellationToken cancellationToken) => ValueTask.FromResult<IDisposable?>(null);

    /// <summary>Before a running sandbox's lifetime is set to end at <paramref name="expiresAt"/>: throw to refuse.</summary>
    void AdmitTimeout(SandboxRecord record, DateTimeOffset expiresAt)
    {
    }

    /// <summary>A sandbox became running (<c>sandbox.created</c>) or ended (<c>sandbox.ended</c>, with its last usage).</summary>
    void OnLifecycle(SandboxRecord record, string kind, HostUsage? usage)
    {
    }

    /// <summary>A command ended.</summary>
    void OnCommand(SandboxRecord record, CommandAuditInfo command)
    {
    }

    /// <summary>A file was written through the API.</summary>
    void OnFileWritten(SandboxRecord record, string path, long size, string sha256, string user)
    {
    }

    /// <summary>
    /// A command's output passed through the host (an exec, buffered or streamed, or an attach to a
    /// background command), then its exit. Called on the reading path: observers copy and return.
    /// </summary>
    void OnOutput(SandboxRecord record, CommandOutputInfo output)
    {
    }

    /// <summary>The sandbox's egress proxy or resolver recorded a connection attempt or DNS question.</summary>
    void OnEgress(SandboxRecord record, Networking.EgressEvent attempt)
    {
    }
}

/// <summary>Which part of a command's history a <see cref="CommandOutputInfo"/> is.</summary>
public enum CommandOutputKind
{
    /// <summary>Standard output (or a terminal's output).</summary>
    Stdout,
    /// <summary>Standard error.</summary>
    Stderr,
    /// <summary>The command exited; <see cref="CommandOutputInfo.ExitCode"/> says how.</summary>
    Exit,
}

/// <summary>A piece of a command's output, or its exit, as it passed through the host.</summary>
/// <param name="Pid">Process id inside the sandbox.</param>
/// <param name="Argv">The command line, when the host started it (empty for a process it only attached to).</param>
/// <param name="Kind">stdout, stderr or exit.</param>
/// <param name="Data">The bytes (empty for an exit); valid only during the call.</param>
/// <param name="ExitCode">The exit code, for <see cref="CommandOutputKind.Exit"/>.</param>
public readonly record struct CommandOutputInfo(int Pid, IReadOnlyList<string> Argv, CommandOutputKind Kind, ReadOnlyMemory<byte> Data, int ExitCode);

/// <summary>A command as the audit trail keeps it.</summary>
public sealed record CommandAuditInfo(IReadOnlyList<string> Argv, string User, string Cwd, ProcessExit? Exit, TimeSpan Duration, bool Detached);
