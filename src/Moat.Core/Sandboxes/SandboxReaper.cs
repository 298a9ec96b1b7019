using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Moat.Core.Sandboxes;

/// <summary>Re-adopts sandboxes at start-up, then ends every sandbox whose lifetime is over and keeps the warm pools full.</summary>
public sealed partial class SandboxReaper(SandboxManager manager, ILogger<SandboxReaper> logger) : BackgroundService
{
    private Task _refilling = Task.CompletedTask;

    /// <summary>How often lifetimes are checked.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(200);

    /// <inheritdoc />
    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        // Re-adoption finishes before the server takes requests: a restarted server never
        // answers about a sandbox it has not looked at yet.
        await manager.RecoverAsync(cancellationToken).ConfigureAwait(false);
        await base.StartAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Interval);
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
        {
            try
            {
                await manager.ReapExpiredAsync(stoppingToken).ConfigureAwait(false);
                if (!_refilling.IsCompleted)
                    continue;
                // Refilling boots sandboxes (seconds for a microVM): never hold up the lifetime checks for it.
                _refilling = Task.Run(() => manager.RefillPoolsAsync(stoppingToken), stoppingToken);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                LogReapFailed(logger, ex);
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Reaping expired sandboxes failed")]
    private static partial void LogReapFailed(ILogger logger, Exception exception);
}
