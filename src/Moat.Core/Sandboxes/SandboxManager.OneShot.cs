using Moat.Core.Agent;
using Moat.Core.Errors;

namespace Moat.Core.Sandboxes;

/// <summary>A one-shot run: a fresh sandbox, files, one command, teardown.</summary>
public sealed record OneShotSpec
{
    /// <summary>The sandbox; its timeout bounds the whole run.</summary>
    public required SandboxSpec Sandbox { get; init; }
    /// <summary>The command.</summary>
    public required CommandSpec Command { get; init; }
    /// <summary>Files written before the command runs.</summary>
    public IReadOnlyList<(string Path, byte[] Content)> Files { get; init; } = [];
    /// <summary>Bytes for stdin (none: stdin is empty).</summary>
    public byte[] Stdin { get; init; } = [];
    /// <summary>Stream stdin from here instead (the CLI's own stdin).</summary>
    public Stream? StdinStream { get; init; }
}

/// <summary>How a one-shot run ended.</summary>
public sealed record OneShotResult
{
    /// <summary>The sandbox used (already gone).</summary>
    public required string SandboxId { get; init; }
    /// <summary>Exit status: the command's, 124 after the timeout, 137 after the memory limit.</summary>
    public int ExitCode { get; init; }
    /// <summary>The command's exit as the agent reported it, if it got that far.</summary>
    public ProcessExit? Exit { get; init; }
    /// <summary>The timeout ended it.</summary>
    public bool TimedOut { get; init; }
    /// <summary>The memory limit ended it.</summary>
    public bool OomKilled { get; init; }
    /// <summary>Why, in words, when it did not simply exit.</summary>
    public string? Reason { get; init; }
    /// <summary>Creation to teardown.</summary>
    public TimeSpan Total { get; init; }
}

public sealed partial class SandboxManager
{
    /// <summary>The extra lifetime a one-shot sandbox gets over its command's timeout, so the command's own timeout ends it cleanly.</summary>
    private static readonly TimeSpan OneShotGrace = TimeSpan.FromSeconds(10);

    /// <summary>Runs one command in a fresh sandbox and tears the sandbox down, whatever happens.</summary>
    /// <param name="spec">What to run.</param>
    /// <param name="tenantId">For whom.</param>
    /// <param name="output">Receives output as it is produced.</param>
    /// <param name="cancellationToken">Cancels the run (the sandbox is still destroyed).</param>
    public async Task<OneShotResult> RunOnceAsync(OneShotSpec spec, string tenantId, Func<ProcessOutput, CancellationToken, ValueTask> output, CancellationToken cancellationToken)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var timeout = spec.Sandbox.Timeout;
        var record = await CreateAsync(spec.Sandbox with { Timeout = timeout + OneShotGrace }, tenantId, cancellationToken).ConfigureAwait(false);
        try
        {
            foreach (var (path, content) in spec.Files)
            {
                using var stream = new MemoryStream(content, writable: false);
                await WriteFileAsync(record.Id, tenantId, path, stream, spec.Command.User, 0, cancellationToken).ConfigureAwait(false);
            }
            var command = spec.Command with
            {
                Stdin = spec.Stdin.Length > 0 || spec.StdinStream is not null,
                Timeout = spec.Command.Timeout is { } t && t < timeout ? t : timeout,
            };
            await using var running = await StartCommandAsync(record.Id, tenantId, command, cancellationToken).ConfigureAwait(false);
            Task stdin = Task.CompletedTask;
            if (spec.StdinStream is { } source)
                stdin = PumpStdinAsync(running, source, cancellationToken);
            else if (spec.Stdin.Length > 0)
            {
                await running.WriteStdinAsync(spec.Stdin, cancellationToken).ConfigureAwait(false);
                await running.CloseStdinAsync(cancellationToken).ConfigureAwait(false);
            }
            ProcessExit exit;
            try
            {
                await foreach (var chunk in running.ReadOutputAsync(cancellationToken).ConfigureAwait(false))
                    await output(chunk, cancellationToken).ConfigureAwait(false);
                exit = await running.WaitExitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (AgentUnavailableException)
            {
                // The sandbox itself ended under the command: say why, as the exit status.
                var ended = await WaitForEndAsync(record.Id, tenantId).ConfigureAwait(false);
                bool timedOut = ended.StateReason == "timeout";
                bool oom = ended.StateReason?.StartsWith(OomReason, StringComparison.Ordinal) == true;
                return new OneShotResult
                {
                    SandboxId = record.Id,
                    ExitCode = timedOut ? RunRecipes.TimeoutExitCode : oom ? RunRecipes.OomExitCode : 255,
                    TimedOut = timedOut,
                    OomKilled = oom,
                    Reason = timedOut ? $"the sandbox reached its timeout of {timeout.TotalSeconds:0} s"
                        : oom ? $"the sandbox was killed for exceeding its memory limit of {spec.Sandbox.Resources.MemoryMiB} MiB"
                        : $"the sandbox failed: {ended.StateReason}",
                    Total = clock.Elapsed,
                };
            }
            await stdin.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            string? reason = null;
            int code = exit.ExitCode;
            if (exit.TimedOut)
            {
                code = RunRecipes.TimeoutExitCode;
                reason = $"the command reached its timeout of {command.Timeout!.Value.TotalSeconds:0.###} s and was killed";
            }
            else if (exit.OomKilled)
            {
                code = RunRecipes.OomExitCode;
                reason = $"the command was killed for exceeding the sandbox's memory limit of {spec.Sandbox.Resources.MemoryMiB} MiB";
            }
            return new OneShotResult { SandboxId = record.Id, ExitCode = code, Exit = exit, TimedOut = exit.TimedOut, OomKilled = exit.OomKilled, Reason = reason, Total = clock.Elapsed };
        }
        finally
        {
            await DeleteAsync(record.Id, tenantId, CancellationToken.None).ConfigureAwait(false);
        }
    }

    /// <summary>The record once the sandbox has ended (the teardown that saw the agent go may still be running).</summary>
    private async Task<SandboxRecord> WaitForEndAsync(string id, string tenantId)
    {
        for (int i = 0; i < 100; i++)
        {
            var record = await GetAsync(id, tenantId, CancellationToken.None).ConfigureAwait(false);
            if (record.State.IsTerminal())
                return record;
            await Task.Delay(50).ConfigureAwait(false);
        }
        return await GetAsync(id, tenantId, CancellationToken.None).ConfigureAwait(false);
    }

    private static async Task PumpStdinAsync(SandboxCommand running, Stream source, CancellationToken cancellationToken)
    {
        var buffer = new byte[Protocol.ProtocolConstants.DataChunk];
        try
        {
            int n;
            while ((n = await source.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                await running.WriteStdinAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            await running.CloseStdinAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is MoatException or IOException or OperationCanceledException or InvalidOperationException)
        {
            // The command ended first, or the caller's stdin failed: nothing more to send.
        }
    }
}
