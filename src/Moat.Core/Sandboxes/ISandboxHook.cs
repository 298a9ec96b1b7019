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
}

/// <summary>A command as the audit trail keeps it.</summary>
public sealed record CommandAuditInfo(IReadOnlyList<string> Argv, string User, string Cwd, ProcessExit? Exit, TimeSpan Duration, bool Detached);
