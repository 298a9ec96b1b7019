using Microsoft.Extensions.Logging;

namespace Moat.Core.Sandboxes;

public sealed partial class SandboxManager
{
    [LoggerMessage(Level = LogLevel.Information, Message = "Creating sandbox {SandboxId} (tier {Tier}, template {Template}, tenant {TenantId})")]
    private static partial void LogCreating(ILogger logger, string sandboxId, string tier, string template, string tenantId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} is running ({Milliseconds:0.0} ms)")]
    private static partial void LogCreated(ILogger logger, string sandboxId, double milliseconds);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Creating sandbox {SandboxId} failed")]
    private static partial void LogCreateFailed(ILogger logger, string sandboxId, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} reached its timeout")]
    private static partial void LogExpired(ILogger logger, string sandboxId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} ended: {State} ({Reason})")]
    private static partial void LogEnded(ILogger logger, string sandboxId, string state, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Sandbox {SandboxId} lost its agent: {Reason}")]
    private static partial void LogAgentLost(ILogger logger, string sandboxId, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "Cleaning up sandbox {SandboxId} failed")]
    private static partial void LogCleanupFailed(ILogger logger, string sandboxId, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "Re-adopted sandbox {SandboxId} after a restart")]
    private static partial void LogReadopted(ILogger logger, string sandboxId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} paused")]
    private static partial void LogPaused(ILogger logger, string sandboxId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} reached its timeout and was paused (onTimeout=pause)")]
    private static partial void LogPausedForTimeout(ILogger logger, string sandboxId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Sandbox {SandboxId} reached its timeout with onTimeout=pause but could not be paused; ending it")]
    private static partial void LogPauseForTimeoutFailed(ILogger logger, string sandboxId, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId} resumed")]
    private static partial void LogResumed(ILogger logger, string sandboxId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Removing stray sandbox directory {SandboxId}")]
    private static partial void LogStray(ILogger logger, string sandboxId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Sandbox {SandboxId}: its agent did not report the guest's usage ({Error}); reporting the host's readings only")]
    private static partial void LogGuestUsageFailed(ILogger logger, string sandboxId, string error);
}
