using Microsoft.Extensions.Logging;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Core.Runtimes;

namespace Moat.Core.Sandboxes;

public sealed partial class SandboxManager
{
    /// <summary>
    /// Saves the processes and memory of a running sandbox into <paramref name="imageDirectory"/>
    /// (the tier's <see cref="ISandboxRuntime.CheckpointAsync"/>); the sandbox runs on, and its
    /// agent is connected again before this returns. <paramref name="whileFrozen"/> runs while the
    /// sandbox is frozen for the save.
    /// </summary>
    public async Task CheckpointAsync(string id, string tenantId, string imageDirectory, Func<CancellationToken, Task>? whileFrozen, CancellationToken cancellationToken)
    {
        var live = await RunningAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        if (live.Runtime is not { } runtime || live.Record.Instance is not { } instance)
            throw NotRunning(live.Record);
        if (!runtime.SnapshotKinds.Contains(SnapshotKindNames.Memory))
            throw MemoryUnsupported(runtime);
        await live.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (live.Record.State != SandboxState.Running)
                throw NotRunning(live.Record);
            // Let go of the connection first, so that its closing is not taken for a lost agent.
            var old = live.Detach();
            if (old is not null)
                await old.DisposeAsync().ConfigureAwait(false);
            System.Runtime.ExceptionServices.ExceptionDispatchInfo? failure = null;
            try
            {
                await runtime.CheckpointAsync(instance, imageDirectory, whileFrozen, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                failure = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(ex);
            }
            try
            {
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_shutdown.Token);
                deadline.CancelAfter(TimeSpan.FromSeconds(30));
                var agent = await AgentClient.ConnectAsync(instance.AgentSocket, new AgentClientOptions(), _loggerFactory.CreateLogger<AgentClient>(), null, instance.AgentPid, deadline.Token).ConfigureAwait(false);
                live.Attach(agent);
                Watch(live, agent);
            }
            catch (Exception ex) when (failure is not null)
            {
                // The checkpoint's own error is the one to report.
                LogReconnectFailed(_logger, id, ex.Message);
            }
            failure?.Throw();
            LogCheckpoint(_logger, id, imageDirectory);
        }
        finally
        {
            live.Gate.Release();
        }
    }

    /// <summary>Where the memory checkpoint of the snapshot template <paramref name="templateId"/> is kept.</summary>
    public string CheckpointDirectory(string templateId) => Path.Combine(_options.DataDirectory, "checkpoints", templateId);

    /// <summary>
    /// A restored sandbox shares everything the source had in memory, randomness included. What
    /// the platform can renew it renews: entropy from the host mixed into the guest's pool
    /// (/dev/urandom; gVisor's Sentry draws from the host anyway), and a new machine-id where the
    /// image has one. What processes already drew and keep (a seeded PRNG in a running
    /// interpreter, a cached UUID) stays identical across forks: that is the documented residual risk.
    /// </summary>
    private async Task ReseedAsync(LiveSandbox live, AgentClient agent, CancellationToken cancellationToken)
    {
        var entropy = System.Security.Cryptography.RandomNumberGenerator.GetBytes(512);
        var machineId = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16));
        try
        {
            var result = await RunCommandAsync(live.Record.Id, live.Record.TenantId, new CommandSpec
            {
                Shell = $"cat > /dev/urandom; if [ -f /etc/machine-id ]; then echo {machineId} > /etc/machine-id; fi",
                User = "root",
                Stdin = true,
                Timeout = TimeSpan.FromSeconds(20),
            }, entropy, cancellationToken).ConfigureAwait(false);
            LogReseeded(_logger, live.Record.Id, result.Exit.ExitCode);
        }
        catch (MoatException ex)
        {
            LogReseedFailed(_logger, live.Record.Id, ex.Message);
        }
    }

    /// <summary>The error for a memory snapshot a tier cannot take.</summary>
    public static MoatException MemoryUnsupported(ISandboxRuntime runtime) => new(ErrorKind.Conflict, "snapshot_kind_unsupported",
        $"memory snapshots are not available on the {runtime.Tier.Name()} tier here ({runtime.MemorySnapshotProblem ?? "not supported"}); take a filesystem snapshot (kind \"filesystem\") or use a tier that lists \"memory\" in GET /v1/capabilities");

    [LoggerMessage(Level = LogLevel.Debug, Message = "Sandbox {SandboxId}: restored, reseeded (exit {ExitCode})")]
    private static partial void LogReseeded(ILogger logger, string sandboxId, int exitCode);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Sandbox {SandboxId}: restored, but reseeding failed: {Error}")]
    private static partial void LogReseedFailed(ILogger logger, string sandboxId, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Sandbox {SandboxId}: no agent connection after a failed checkpoint: {Error}")]
    private static partial void LogReconnectFailed(ILogger logger, string sandboxId, string error);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId}: memory checkpoint in {Directory}")]
    private static partial void LogCheckpoint(ILogger logger, string sandboxId, string directory);
}
