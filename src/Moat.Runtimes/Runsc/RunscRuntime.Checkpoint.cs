using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Host;
using Moat.Core.Runtimes;
using Moat.Storage.Rootfs;

namespace Moat.Runtimes.Runsc;

/// <summary>
/// Memory snapshots of the gVisor tier: <c>runsc checkpoint</c> saves the Sentry's whole kernel
/// state (processes, memory, open files) to an image directory, <c>runsc restore</c> starts a new
/// sandbox from it. gVisor cannot save a socket bound on the host, and the agent's channel is one
/// (<c>--host-uds=create</c>), so the agent is asked to park it first (SIGUSR1: it closes its
/// sessions and its listener and writes a marker file beside the socket) and to listen again afterwards (SIGUSR2) — in the
/// source sandbox, which runs on (restored in place by runsc from the same image), and in every
/// sandbox restored from the image, whose channel directory is its own.
/// </summary>
public sealed partial class RunscRuntime : ISandboxRuntime
{
    /// <inheritdoc />
    public IReadOnlyList<string> SnapshotKinds => [SnapshotKindNames.Filesystem, SnapshotKindNames.Memory];

    /// <inheritdoc />
    public string? MemorySnapshotProblem => null;

    /// <inheritdoc />
    public async Task CheckpointAsync(RuntimeInstance instance, string imageDirectory, Func<CancellationToken, Task>? whileFrozen, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(imageDirectory);
        File.Delete(instance.AgentSocket + ".parked"); // a previous checkpoint's, should the agent not have removed it
        await SignalAgentAsync(instance, "USR1", cancellationToken).ConfigureAwait(false);
        try
        {
            // The agent writes a marker once nothing of the channel is open any more; the stale
            // socket name is the host's to remove (the gofer cannot unlink a host socket).
            var marker = instance.AgentSocket + ".parked";
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (!File.Exists(marker))
            {
                if (DateTime.UtcNow > deadline)
                    throw new MoatException(ErrorKind.Timeout, "checkpoint_timeout", $"the agent of sandbox {instance.ContainerId} did not release its channel for the checkpoint within 10 s");
                await Task.Delay(5, cancellationToken).ConfigureAwait(false);
            }
            File.Delete(instance.AgentSocket);
            foreach (var stale in Directory.EnumerateFiles(Path.GetDirectoryName(instance.AgentSocket)!, Path.GetFileName(instance.AgentSocket) + ".*").Where(f => f != marker))
                File.Delete(stale);
            // The files are read frozen (runsc pause), then the memory saved; this release of
            // runsc cannot checkpoint a paused sandbox with --leave-running, so what a process
            // writes in the few milliseconds between the two is in memory but not on disk.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            await Runner.RunAsync(_options.Binary, [.. FlagsFor(instance), "pause", instance.ContainerId], new HostCommandOptions { Timeout = TimeSpan.FromSeconds(30) }, cancellationToken).ConfigureAwait(false);
            try
            {
                await CaptureFilesAsync(instance, imageDirectory, whileFrozen, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                await Runner.RunAsync(_options.Binary, [.. FlagsFor(instance), "resume", instance.ContainerId], new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(30) }, CancellationToken.None).ConfigureAwait(false);
            }
            await CheckpointLeavingRunningAsync(instance, imageDirectory, cancellationToken).ConfigureAwait(false);
            LogCheckpointed(logger, instance.ContainerId, clock.Elapsed.TotalMilliseconds);
        }
        finally
        {
            await SignalAgentAsync(instance, "USR2", CancellationToken.None).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// This release's <c>checkpoint --leave-running</c> saves the image, destroys the sandbox,
    /// restores a new one with the same id from the image and then stays in the foreground waiting
    /// for it to exit. So it is started in the background, done once the container runs again under a
    /// new sandbox process, and left to wait (it exits when the sandbox is deleted).
    /// </summary>
    private async Task CheckpointLeavingRunningAsync(RuntimeInstance instance, string imageDirectory, CancellationToken cancellationToken)
    {
        int? before = await SandboxPidAsync(instance, cancellationToken).ConfigureAwait(false);
        var start = new System.Diagnostics.ProcessStartInfo(_options.Binary)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in (IEnumerable<string>)[.. FlagsFor(instance), "checkpoint", "--image-path", imageDirectory, "--leave-running", instance.ContainerId])
            start.ArgumentList.Add(arg);
        var cli = System.Diagnostics.Process.Start(start) ?? throw new MoatException(ErrorKind.Internal, "checkpoint_failed", "cannot start runsc checkpoint");
        var stderr = new System.Text.StringBuilder();
        cli.ErrorDataReceived += (_, e) => { if (e.Data is { } line) lock (stderr) stderr.AppendLine(line); };
        cli.OutputDataReceived += (_, _) => { };
        cli.BeginErrorReadLine();
        cli.BeginOutputReadLine();
        cli.StandardInput.Close();
        // The CLI waits on the restored container for its whole life: reap it when it ends.
        _ = cli.WaitForExitAsync(CancellationToken.None).ContinueWith(_ => cli.Dispose(), TaskScheduler.Default);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(300);
        while (true)
        {
            if (cli.HasExited)
            {
                string error;
                lock (stderr)
                    error = stderr.ToString();
                if (cli.ExitCode != 0)
                    throw new MoatException(ErrorKind.Internal, "checkpoint_failed", $"gVisor could not checkpoint sandbox {instance.ContainerId}: {FirstLine(error)}");
            }
            var now = await SandboxPidAsync(instance, cancellationToken).ConfigureAwait(false);
            if (now is { } pid && pid != before && File.Exists(Path.Combine(imageDirectory, "checkpoint.img")))
                return;
            if (DateTime.UtcNow > deadline)
                throw new MoatException(ErrorKind.Timeout, "checkpoint_timeout", $"gVisor did not bring sandbox {instance.ContainerId} back after its checkpoint within 300 s");
            await Task.Delay(20, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The host pid of the running sandbox per <c>runsc state</c>, null while it is not running.</summary>
    private async Task<int?> SandboxPidAsync(RuntimeInstance instance, CancellationToken cancellationToken)
    {
        var result = await Runner.RunAsync(_options.Binary, [.. FlagsFor(instance), "state", instance.ContainerId], new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(20) }, cancellationToken).ConfigureAwait(false);
        if (result.ExitCode != 0)
            return null;
        using var state = System.Text.Json.JsonDocument.Parse(result.Stdout);
        return state.RootElement.GetProperty("status").GetString() == "running" && state.RootElement.TryGetProperty("pid", out var pid) ? pid.GetInt32() : null;
    }

    private async Task CaptureFilesAsync(RuntimeInstance instance, string imageDirectory, Func<CancellationToken, Task>? whileFrozen, CancellationToken cancellationToken)
    {
        if (whileFrozen is not null)
            await whileFrozen(cancellationToken).ConfigureAwait(false);
        // /tmp lives on the scratch volume, beside the writable layer.
        var tmp = Path.Combine(OverlayRootfs.LayoutOf(instance.Directory).ScratchMount, "tmp");
        if (Directory.Exists(tmp))
        {
            Directory.CreateDirectory(Path.Combine(imageDirectory, CheckpointTmp));
            await Runner.RunAsync("cp", ["-a", "--", tmp + "/.", Path.Combine(imageDirectory, CheckpointTmp)], new HostCommandOptions { Timeout = TimeSpan.FromSeconds(300) }, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    protected override IReadOnlyList<string> RestoreCommand(string pidFile, string bundle, string imageDirectory, string id) =>
        ["restore", "--detach", "--pid-file", pidFile, "--bundle", bundle, "--image-path", imageDirectory, id];

    /// <summary>The restored agent still has its channel parked: let it listen in its new home.</summary>
    protected override Task AfterRestoreAsync(RuntimeInstance instance, CancellationToken cancellationToken) =>
        SignalAgentAsync(instance, "USR2", cancellationToken);

    private Task SignalAgentAsync(RuntimeInstance instance, string signal, CancellationToken cancellationToken) =>
        Runner.RunAsync(_options.Binary, [.. FlagsFor(instance), "kill", instance.ContainerId, signal], new HostCommandOptions { Timeout = TimeSpan.FromSeconds(30) }, cancellationToken);

    private static string FirstLine(string text)
    {
        var line = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault(l => l.Length > 0) ?? "no error output";
        return line.Length > 400 ? line[..400] : line;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpointed {SandboxId} in {Ms:0.0} ms (frozen)")]
    private static partial void LogCheckpointed(ILogger logger, string sandboxId, double ms);
}
