using Moat.Core.Runtimes;

namespace Moat.Core.Sandboxes;

/// <summary>Names of the lifecycle events hooks see.</summary>
public static class SandboxEvents
{
    /// <summary>The sandbox is running.</summary>
    public const string Created = "sandbox.created";
    /// <summary>The sandbox ended (deleted, timed out, failed).</summary>
    public const string Ended = "sandbox.ended";
}

public sealed partial class SandboxManager
{
    private sealed class Reservations(List<IDisposable> held) : IDisposable
    {
        public void Dispose()
        {
            foreach (var r in held)
                r.Dispose();
        }
    }

    private async Task<IDisposable?> AdmitAsync(SandboxSpec spec, string tenantId, CancellationToken cancellationToken)
    {
        if (_hooks.Length == 0)
            return null;
        var held = new List<IDisposable>();
        try
        {
            foreach (var hook in _hooks)
            {
                if (await hook.AdmitAsync(spec, tenantId, cancellationToken).ConfigureAwait(false) is { } reservation)
                    held.Add(reservation);
            }
        }
        catch
        {
            new Reservations(held).Dispose();
            throw;
        }
        return new Reservations(held);
    }

    /// <summary>Tells every hook; a failing hook is logged and never fails the sandbox.</summary>
    private void Notify(Action<ISandboxHook> notify)
    {
        foreach (var hook in _hooks)
        {
            try
            {
                notify(hook);
            }
            catch (Exception ex)
            {
                LogHookFailed(_logger, hook.GetType().Name, ex);
            }
        }
    }

    /// <summary>The host's last reading of a sandbox about to end (for metering), when hooks want it.</summary>
    private async Task<HostUsage?> LastUsageAsync(LiveSandbox live)
    {
        if (_hooks.Length == 0 || live.Record.Instance is not { } instance || live.Runtime is null)
            return null;
        try
        {
            return await live.Runtime.ReadUsageAsync(instance, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or InvalidOperationException or FormatException)
        {
            return null;
        }
    }

    private void NotifyCommand(LiveSandbox live, Agent.AgentProcess process, IReadOnlyList<string> argv, string user, string cwd, bool detached)
    {
        if (_hooks.Length == 0)
            return;
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        _ = process.Exit.ContinueWith(t =>
        {
            var exit = t.IsCompletedSuccessfully ? t.Result : null;
            var info = new CommandAuditInfo(argv, user, cwd, exit, exit?.Duration ?? System.Diagnostics.Stopwatch.GetElapsedTime(started), detached);
            Notify(h => h.OnCommand(live.Record, info));
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    /// <summary>What a command's output is shown to on its way through the host (null when no hook listens).</summary>
    private Action<CommandOutputKind, ReadOnlyMemory<byte>, int>? OutputObserver(LiveSandbox live, int pid, IReadOnlyList<string> argv)
    {
        if (_hooks.Length == 0)
            return null;
        return (kind, data, exitCode) =>
        {
            var info = new CommandOutputInfo(pid, argv, kind, data, exitCode);
            Notify(h => h.OnOutput(live.Record, info));
        };
    }

    /// <summary>An egress event of a sandbox, for the hooks; a sandbox that just ended is looked up in the store.</summary>
    private void OnEgressRecorded(string sandboxId, Networking.EgressEvent attempt)
    {
        if (_hooks.Length == 0)
            return;
        if (_live.TryGetValue(sandboxId, out var live))
        {
            Notify(h => h.OnEgress(live.Record, attempt));
            return;
        }
        _ = Task.Run(async () =>
        {
            try
            {
                if (await _store.GetAsync(sandboxId, CancellationToken.None).ConfigureAwait(false) is { } record)
                    Notify(h => h.OnEgress(record, attempt));
            }
            catch (Exception ex)
            {
                LogHookFailed(_logger, nameof(OnEgressRecorded), ex);
            }
        });
    }

    private void NotifyFileWritten(string id, string tenantId, string path, long size, string sha256, string user)
    {
        if (_hooks.Length == 0 || !_live.TryGetValue(id, out var live) || live.Record.TenantId != tenantId)
            return;
        Notify(h => h.OnFileWritten(live.Record, path, size, sha256, user));
    }
}

public sealed partial class SandboxManager
{
    [Microsoft.Extensions.Logging.LoggerMessage(Level = Microsoft.Extensions.Logging.LogLevel.Warning, Message = "Sandbox hook {Hook} failed")]
    private static partial void LogHookFailed(Microsoft.Extensions.Logging.ILogger logger, string hook, Exception exception);
}

/// <summary>Passes a stream through while counting its bytes and hashing them (SHA-256), for the audit trail.</summary>
internal sealed class HashingReadStream(Stream inner) : Stream
{
    private readonly System.Security.Cryptography.IncrementalHash _hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
    private long _length;

    public string Sha256Hex() => Convert.ToHexStringLower(_hash.GetCurrentHash());

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();

    /// <summary>Bytes passed through so far.</summary>
    public long BytesRead => _length;
    public override long Position { get => _length; set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int n = inner.Read(buffer);
        _hash.AppendData(buffer[..n]);
        _length += n;
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int n = await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        _hash.AppendData(buffer.Span[..n]);
        _length += n;
        return n;
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
            _hash.Dispose();
        base.Dispose(disposing);
    }
}
