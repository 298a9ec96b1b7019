using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Moat.Contracts;
using Moat.Core.State;

namespace Moat.Server.Audit;

/// <summary>
/// The audit trail: an append-only chain where every record carries the SHA-256 of the one
/// before. Appends are queued and written in batches by one writer (so a request never waits on
/// the database for its audit record); <see cref="FlushAsync"/> waits until everything queued so
/// far is stored. The chain's head is kept in a separate row, so removing the newest records is
/// detected as well as editing or removing any other.
/// </summary>
public sealed partial class AuditLog(IAuditStore store, TimeProvider time, ILogger<AuditLog> logger) : BackgroundService
{
    /// <summary>Hash of the (absent) record before the first.</summary>
    public static readonly string Genesis = new('0', 64);

    private readonly Channel<object> _queue = Channel.CreateBounded<object>(new BoundedChannelOptions(100_000) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
    private long _seq;
    private string _head = Genesis;
    private readonly TaskCompletionSource _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Whether records are kept (<c>Moat:Audit:Enabled</c>, default true). Off, <see cref="Append"/> drops
    /// everything; the chain already stored stays readable and verifiable.
    /// </summary>
    public bool Enabled { get; set; } = true;

    /// <summary>Queues a record; its sequence number and hashes are assigned when it is written.</summary>
    public void Append(string kind, string action, string? tenantId, string? keyId, string? sandboxId, string? result, string? data)
    {
        if (!Enabled)
            return;
        var entry = new AuditEntry { Time = time.GetUtcNow(), Kind = kind, Action = action, TenantId = tenantId, KeyId = keyId, SandboxId = sandboxId, Result = result, Data = data };
        if (!_queue.Writer.TryWrite(entry))
            LogDropped(logger, kind, action);
    }

    /// <summary>Waits until every record queued before this call is stored.</summary>
    public async Task FlushAsync(CancellationToken cancellationToken)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await _queue.Writer.WriteAsync(done, cancellationToken).ConfigureAwait(false);
        await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (await store.HeadAsync(stoppingToken).ConfigureAwait(false) is { } head)
            (_seq, _head) = head;
        _loaded.TrySetResult();
        var batch = new List<AuditEntry>();
        var waiters = new List<TaskCompletionSource>();
        var reader = _queue.Reader;
        try
        {
            while (await reader.WaitToReadAsync(stoppingToken).ConfigureAwait(false))
            {
                while (batch.Count < 1000 && reader.TryRead(out var item))
                {
                    if (item is AuditEntry entry)
                    {
                        long seq = _seq + 1;
                        var chained = entry with { Seq = seq, PrevHash = _head };
                        chained = chained with { Hash = HashOf(chained) };
                        batch.Add(chained);
                        _seq = seq;
                        _head = chained.Hash;
                    }
                    else if (item is TaskCompletionSource waiter)
                        waiters.Add(waiter);
                }
                await WriteAsync(batch, waiters).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        // Whatever was queued before the stop is still written.
        while (reader.TryRead(out var item))
        {
            if (item is AuditEntry entry)
            {
                var chained = entry with { Seq = ++_seq, PrevHash = _head };
                chained = chained with { Hash = HashOf(chained) };
                _head = chained.Hash;
                batch.Add(chained);
            }
            else if (item is TaskCompletionSource waiter)
                waiters.Add(waiter);
        }
        await WriteAsync(batch, waiters).ConfigureAwait(false);
    }

    private async Task WriteAsync(List<AuditEntry> batch, List<TaskCompletionSource> waiters)
    {
        try
        {
            await store.AppendAsync(batch, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            LogWriteFailed(logger, batch.Count, ex);
            // The chain continues from what is stored, never from records that were not.
            try
            {
                (_seq, _head) = await store.HeadAsync(CancellationToken.None).ConfigureAwait(false) ?? (0, Genesis);
            }
            catch (Exception again)
            {
                LogWriteFailed(logger, 0, again);
            }
        }
        batch.Clear();
        foreach (var w in waiters)
            w.TrySetResult();
        waiters.Clear();
    }

    /// <summary>Walks the whole chain: every hash recomputed, every link and sequence number checked, the head matched.</summary>
    public async Task<AuditVerifyResponse> VerifyAsync(CancellationToken cancellationToken)
    {
        await FlushAsync(cancellationToken).ConfigureAwait(false);
        string prev = Genesis;
        long expected = 1, count = 0;
        await foreach (var e in store.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            count++;
            if (e.Seq != expected)
                return Bad(count, expected, $"record {expected} is missing (next stored record is {e.Seq})");
            if (e.PrevHash != prev)
                return Bad(count, e.Seq, $"record {e.Seq} does not link to the record before it (a record was removed or edited)");
            if (HashOf(e) != e.Hash)
                return Bad(count, e.Seq, $"record {e.Seq} was edited: its contents do not match its hash");
            prev = e.Hash;
            expected++;
        }
        var head = await store.HeadAsync(cancellationToken).ConfigureAwait(false);
        long last = expected - 1;
        if (head is { } h && (h.Seq != last || h.Hash != prev))
            return Bad(count, last + 1, $"the chain ends at record {last} but its head says {h.Seq}: the newest records were removed");
        if (head is null && last > 0)
            return Bad(count, 1, "the chain's head record is missing");
        return new AuditVerifyResponse { Valid = true, Records = count };
    }

    private static AuditVerifyResponse Bad(long count, long seq, string problem) => new() { Valid = false, Records = count, FirstBadSeq = seq, Problem = problem };

    /// <summary>SHA-256 over every field of a record and the previous hash, each length-prefixed (so no two records encode alike).</summary>
    public static string HashOf(AuditEntry e)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> number = stackalloc byte[8];
        BinaryPrimitives.WriteInt64BigEndian(number, e.Seq);
        hash.AppendData(number);
        BinaryPrimitives.WriteInt64BigEndian(number, e.Time.ToUnixTimeMilliseconds());
        hash.AppendData(number);
        foreach (var field in (ReadOnlySpan<string?>)[e.Kind, e.Action, e.TenantId, e.KeyId, e.SandboxId, e.Result, e.Data, e.PrevHash])
        {
            if (field is null)
            {
                BinaryPrimitives.WriteInt64BigEndian(number, -1);
                hash.AppendData(number);
                continue;
            }
            var bytes = Encoding.UTF8.GetBytes(field);
            BinaryPrimitives.WriteInt64BigEndian(number, bytes.Length);
            hash.AppendData(number);
            hash.AppendData(bytes);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Audit queue full; dropped a {Kind} record ({Action})")]
    private static partial void LogDropped(ILogger logger, string kind, string action);

    [LoggerMessage(Level = LogLevel.Error, Message = "Could not write {Count} audit records")]
    private static partial void LogWriteFailed(ILogger logger, int count, Exception exception);
}
