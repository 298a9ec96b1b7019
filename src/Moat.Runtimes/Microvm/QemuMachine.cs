using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;

namespace Moat.Runtimes.Microvm;

/// <summary>Where a microVM's files live inside its sandbox directory.</summary>
internal readonly record struct VmPaths(string Directory)
{
    /// <summary>Everything of the VM: one directory, root-only.</summary>
    public string Vm => Path.Combine(Directory, "vm");
    /// <summary>QEMU's chardev socket behind the guest's <c>moat.agent</c> port (the host connects).</summary>
    public string AgentSocket => Path.Combine(Vm, "agent.sock");
    /// <summary>The QMP socket, Moat's only monitor of the VM.</summary>
    public string Qmp => Path.Combine(Vm, "qmp.sock");
    /// <summary>QEMU's pid.</summary>
    public string PidFile => Path.Combine(Vm, "qemu.pid");
    /// <summary>Pid of the launcher that joins the cgroup before QEMU starts.</summary>
    public string LauncherPidFile => Path.Combine(Vm, "launcher.pid");
    /// <summary>QEMU's own stderr (start-up errors).</summary>
    public string Log => Path.Combine(Vm, "qemu.log");
    /// <summary>The sandbox's writable volume, the guest's second disk.</summary>
    public string Scratch => Path.Combine(Vm, "scratch.img");
    /// <summary>The empty directory QEMU chroots into once it has opened everything.</summary>
    public string Jail => Path.Combine(Vm, "jail");
}

/// <summary>
/// The host's live view of one running microVM, through QMP: when the guest's agent opened its
/// port (the VM is ready), and when the guest stopped. QEMU runs with
/// <c>-action reboot=shutdown,shutdown=pause</c>, so a guest that powers off, reboots or panics
/// (<c>panic=-1</c> reboots) leaves QEMU paused with its console ring buffer intact: Moat reads
/// the console (the failure reason) and only then tells QEMU to quit.
/// </summary>
internal sealed partial class QemuMachine : IAsyncDisposable
{
    /// <summary>QEMU id of the agent's virtio-serial port.</summary>
    public const string AgentPortId = "agentport";
    /// <summary>QEMU id of the console ring buffer.</summary>
    public const string ConsoleId = "console";

    private readonly QmpClient _qmp;
    private readonly ILogger _logger;
    private readonly string _id;
    private readonly TaskCompletionSource _agentPortOpened = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<string> _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _stop = new();

    private QemuMachine(string id, QmpClient qmp, ILogger logger)
    {
        _id = id;
        _qmp = qmp;
        _logger = logger;
        _ = Task.Run(WatchAsync, CancellationToken.None);
    }

    /// <summary>Completes when the guest's agent has opened its port.</summary>
    public Task AgentPortOpened => _agentPortOpened.Task;

    /// <summary>Completes, with what is known of why, when the guest stopped or QEMU went away.</summary>
    public Task<string> Stopped => _stopped.Task;

    /// <summary>Connects to the VM's QMP socket.</summary>
    public static async Task<QemuMachine> AttachAsync(string id, VmPaths paths, ILogger logger, CancellationToken cancellationToken)
    {
        var qmp = await QmpTimeouts.WithTimeoutAsync(ct => QmpClient.ConnectAsync(paths.Qmp, ct), "the QMP handshake", cancellationToken).ConfigureAwait(false);
        return new QemuMachine(id, qmp, logger);
    }

    /// <summary>QEMU's run state (<c>running</c>, <c>paused</c>, <c>shutdown</c>, <c>guest-panicked</c>...).</summary>
    public async Task<string> StatusAsync(CancellationToken cancellationToken)
    {
        var status = await QmpTimeouts.WithTimeoutAsync(ct => _qmp.ExecuteAsync("query-status", null, ct), "query-status", cancellationToken).ConfigureAwait(false);
        return status.TryGetProperty("status", out var s) ? s.GetString() ?? "" : "";
    }

    /// <summary>Whether the guest's agent has the port open now (after a restart, instead of the event).</summary>
    public async Task<bool> AgentPortOpenAsync(CancellationToken cancellationToken)
    {
        var chardevs = await QmpTimeouts.WithTimeoutAsync(ct => _qmp.ExecuteAsync("query-chardev", null, ct), "query-chardev", cancellationToken).ConfigureAwait(false);
        foreach (var c in chardevs.EnumerateArray())
        {
            if (c.TryGetProperty("label", out var label) && label.GetString() == "agent")
                return c.TryGetProperty("frontend-open", out var open) && open.GetBoolean();
        }
        return false;
    }

    /// <summary>The guest console QEMU kept (at most the ring's size), as printable text.</summary>
    public async Task<string> ReadConsoleAsync(CancellationToken cancellationToken)
    {
        var data = await QmpTimeouts.WithTimeoutAsync(ct => _qmp.ExecuteAsync("ringbuf-read", w =>
        {
            w.WriteString("device", ConsoleId);
            w.WriteNumber("size", 1 << 20);
            w.WriteString("format", "base64");
        }, ct), "ringbuf-read", cancellationToken).ConfigureAwait(false);
        var bytes = data.ValueKind == JsonValueKind.String ? Convert.FromBase64String(data.GetString() ?? "") : [];
        return Printable(bytes);
    }

    /// <summary>Stops the guest's vCPUs (QMP <c>stop</c>): the guest's memory, devices and disks stay as they are.</summary>
    public Task StopAsync(CancellationToken cancellationToken) =>
        QmpTimeouts.WithTimeoutAsync(ct => _qmp.ExecuteAsync("stop", null, ct), "stop", cancellationToken);

    /// <summary>Lets a stopped guest's vCPUs run on (QMP <c>cont</c>).</summary>
    public Task ContinueAsync(CancellationToken cancellationToken) =>
        QmpTimeouts.WithTimeoutAsync(ct => _qmp.ExecuteAsync("cont", null, ct), "cont", cancellationToken);

    /// <summary>Asks QEMU to exit.</summary>
    public async Task QuitAsync(CancellationToken cancellationToken)
    {
        try
        {
            await QmpTimeouts.WithTimeoutAsync(ct => _qmp.ExecuteAsync("quit", null, ct), "quit", cancellationToken).ConfigureAwait(false);
        }
        catch (IOException)
        {
            // QEMU closes the socket as it exits, sometimes before answering.
        }
    }

    private async Task WatchAsync()
    {
        try
        {
            await foreach (var e in _qmp.Events.ReadAllAsync(_stop.Token).ConfigureAwait(false))
            {
                if (e.Name == "VSERPORT_CHANGE" && e.Data.ValueKind == JsonValueKind.Object
                    && e.Data.TryGetProperty("id", out var port) && port.GetString() == AgentPortId
                    && e.Data.TryGetProperty("open", out var open) && open.GetBoolean())
                    _agentPortOpened.TrySetResult();
                else if (e.Name == "SHUTDOWN" && !_stopped.Task.IsCompleted)
                    await OnGuestStoppedAsync(e.Data.ValueKind == JsonValueKind.Object && e.Data.TryGetProperty("reason", out var r) ? r.GetString() ?? "" : "").ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException or QmpException or Core.Errors.MoatException or FormatException)
        {
            LogWatchEnded(_logger, _id, ex.Message);
        }
        _stopped.TrySetResult("QEMU exited");
    }

    private async Task OnGuestStoppedAsync(string reason)
    {
        string console = "";
        try
        {
            console = await ReadConsoleAsync(_stop.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or QmpException or Core.Errors.MoatException or FormatException)
        {
            LogWatchEnded(_logger, _id, ex.Message);
        }
        var report = Describe(reason, console);
        if (reason != "guest-shutdown")
            LogGuestStopped(_logger, _id, report);
        _stopped.TrySetResult(report);
        await QuitAsync(_stop.Token).ConfigureAwait(false);
    }

    /// <summary>Why the guest stopped, in one line, from QEMU's reason and the console's last words.</summary>
    internal static string Describe(string reason, string console)
    {
        var lines = console.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        string? panic = lines.LastOrDefault(l => l.Contains("Kernel panic", StringComparison.Ordinal));
        string? agent = lines.LastOrDefault(l => l.StartsWith("moat-agent:", StringComparison.Ordinal));
        string what = reason switch
        {
            "guest-shutdown" => "the guest powered off",
            "guest-reset" => panic is not null ? "the guest kernel panicked" : "the guest rebooted",
            "guest-panic" => "the guest kernel panicked",
            "" => "the guest stopped",
            _ => $"the guest stopped ({reason})",
        };
        var detail = panic ?? agent ?? lines.LastOrDefault();
        if (detail is not null)
        {
            // Drop the kernel's timestamp prefix; the text came from the guest: keep it short.
            int close = detail.StartsWith('[') ? detail.IndexOf("] ", StringComparison.Ordinal) : -1;
            if (close > 0)
                detail = detail[(close + 2)..];
            what += ": " + (detail.Length > 300 ? detail[..300] + "…" : detail);
        }
        return what;
    }

    private static string Printable(byte[] bytes)
    {
        var sb = new StringBuilder(bytes.Length);
        foreach (char c in Encoding.UTF8.GetString(bytes))
        {
            if (c == '\n' || c == '\t' || !char.IsControl(c))
                sb.Append(c);
            else if (c != '\r')
                sb.Append('?');
        }
        return sb.ToString();
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _qmp.DisposeAsync().ConfigureAwait(false);
        _stopped.TrySetResult("detached");
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Sandbox {SandboxId}: {Report}")]
    private static partial void LogGuestStopped(ILogger logger, string sandboxId, string report);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Sandbox {SandboxId}: QMP watch ended ({Reason})")]
    private static partial void LogWatchEnded(ILogger logger, string sandboxId, string reason);
}
