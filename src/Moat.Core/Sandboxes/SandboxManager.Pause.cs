using Microsoft.Extensions.Logging;
using Moat.Core.Agent;
using Moat.Core.Errors;

namespace Moat.Core.Sandboxes;

public sealed partial class SandboxManager
{
    /// <summary>
    /// Freezes a running sandbox: its processes get no CPU, its memory and files stay. The
    /// lifetime clock stops while paused. Pausing a paused sandbox is a conflict.
    /// </summary>
    public async Task<SandboxRecord> PauseAsync(string id, string tenantId, CancellationToken cancellationToken)
    {
        var live = await LiveOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        return await PauseLiveAsync(live, remainingAfterResume: null, reason: null, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The reaper's pause for a sandbox created with onTimeout=pause. When resumed it gets its
    /// requested lifetime again (or the one set while paused). False when it could not be paused
    /// (the caller then ends it: a lifetime that is over never leaves a sandbox running).
    /// </summary>
    private async Task<bool> PauseForTimeoutAsync(LiveSandbox live, CancellationToken cancellationToken)
    {
        try
        {
            await PauseLiveAsync(live, live.Record.Spec.Timeout, "timeout", cancellationToken).ConfigureAwait(false);
            LogPausedForTimeout(_logger, live.Record.Id);
            return true;
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            LogPauseForTimeoutFailed(_logger, live.Record.Id, ex);
            return live.Record.State == SandboxState.Paused;
        }
    }

    private async Task<SandboxRecord> PauseLiveAsync(LiveSandbox live, TimeSpan? remainingAfterResume, string? reason, CancellationToken cancellationToken)
    {
        string id = live.Record.Id;
        await live.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (live.Record.State == SandboxState.Paused)
                throw new MoatException(ErrorKind.Conflict, "sandbox_paused", $"sandbox {id} is already paused");
            if (live.Record.State != SandboxState.Running || live.Runtime is null || live.Record.Instance is null)
                throw NotRunning(live.Record);
            if (live.Agent is { } agent)
                agent.Frozen = true;
            try
            {
                await live.Runtime.PauseAsync(live.Record.Instance, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                if (live.Agent is { } a)
                    a.Frozen = false;
                throw;
            }
            var now = _time.GetUtcNow();
            live.Record = live.Record with
            {
                State = SandboxState.Paused,
                PausedAt = now,
                RemainingWhenPaused = remainingAfterResume ?? live.Record.ExpiresAt - now,
                StateReason = reason,
            };
            await _store.UpdateAsync(live.Record, CancellationToken.None).ConfigureAwait(false);
            LogPaused(_logger, id);
            return live.Record;
        }
        finally
        {
            live.Gate.Release();
        }
    }

    /// <summary>Thaws a paused sandbox; its lifetime resumes with what it had left.</summary>
    public async Task<SandboxRecord> ResumeAsync(string id, string tenantId, CancellationToken cancellationToken)
    {
        var live = await LiveOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        await live.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (live.Record.State == SandboxState.Running)
                throw new MoatException(ErrorKind.Conflict, "sandbox_running", $"sandbox {id} is not paused");
            if (live.Record.State != SandboxState.Paused || live.Runtime is null || live.Record.Instance is not { } instance)
                throw NotRunning(live.Record);
            await live.Runtime.ResumeAsync(instance, cancellationToken).ConfigureAwait(false);
            // A server restarted while the sandbox was frozen has no connection yet: make one now.
            if (live.Agent is null)
            {
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                deadline.CancelAfter(TimeSpan.FromSeconds(30));
                var agent = await AgentClient.ConnectAsync(instance.AgentSocket, new AgentClientOptions(), _loggerFactory.CreateLogger<AgentClient>(), null, instance.AgentPid, deadline.Token).ConfigureAwait(false);
                live.Attach(agent);
                Watch(live, agent);
            }
            else
            {
                live.Agent.Frozen = false;
            }
            var now = _time.GetUtcNow();
            live.Record = live.Record with
            {
                State = SandboxState.Running,
                ExpiresAt = now + (live.Record.RemainingWhenPaused ?? TimeSpan.Zero),
                RemainingWhenPaused = null,
                StateReason = null,
            };
            await _store.UpdateAsync(live.Record, CancellationToken.None).ConfigureAwait(false);
            LogResumed(_logger, id);
            return live.Record;
        }
        finally
        {
            live.Gate.Release();
        }
    }

    /// <summary>A sandbox alive on this node (running or paused) that belongs to the tenant.</summary>
    private async Task<LiveSandbox> LiveOfAsync(string id, string tenantId, CancellationToken cancellationToken)
    {
        if (_live.TryGetValue(id, out var live) && live.Record.TenantId == tenantId)
            return live;
        throw NotRunning(await GetAsync(id, tenantId, cancellationToken).ConfigureAwait(false));
    }
}
