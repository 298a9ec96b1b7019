using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using Microsoft.Extensions.Options;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;

namespace Moat.Server.Observability;

/// <summary>Options of the command output history (section <c>Moat:Logs</c>).</summary>
public sealed class CommandHistoryOptions
{
    /// <summary>Output kept per sandbox, bytes; the oldest entries go first.</summary>
    public long MaxBytesPerSandbox { get; set; } = 1024 * 1024;
    /// <summary>How long a sandbox's history is kept after it ends, minutes.</summary>
    public int RetentionMinutes { get; set; } = 60;
}

/// <summary>One entry of a sandbox's command history.</summary>
public sealed record CommandHistoryEntry(long Seq, DateTimeOffset Time, int Pid, string Command, string Stream, string Data);

/// <summary>
/// Command output history: what commands printed, recorded on the host as the output passes
/// through it (buffered and streamed exec, attaches to background commands), with each exit.
/// Bounded per sandbox in bytes (oldest entries dropped), in memory, kept for the sandbox's life
/// and the retention window after it ends. Output of a background command nobody attaches to
/// stays in the agent (which keeps it for a later attach) and is recorded when it is read.
/// </summary>
public sealed class CommandHistory(IOptions<CommandHistoryOptions> options, TimeProvider time) : ISandboxHook
{
    private sealed class Log
    {
        public readonly Queue<CommandHistoryEntry> Entries = new();
        public long Seq;
        public long Bytes;
        public DateTimeOffset? EndedAt;
        // Per process and stream, so a UTF-8 sequence split across chunks is decoded whole.
        public readonly Dictionary<(int Pid, CommandOutputKind Kind), Decoder> Decoders = new();
    }

    private readonly ConcurrentDictionary<string, Log> _logs = new();

    /// <summary>Entries after <paramref name="after"/>, oldest first, at most <paramref name="limit"/>; and the <c>after</c> of the next page.</summary>
    public (IReadOnlyList<CommandHistoryEntry> Entries, long Next) Read(string sandboxId, long after, int limit)
    {
        if (!_logs.TryGetValue(sandboxId, out var log))
            return ([], after);
        lock (log)
        {
            var page = log.Entries.Where(e => e.Seq > after).Take(limit).ToList();
            return (page, page.Count > 0 ? page[^1].Seq : Math.Max(after, 0));
        }
    }

    /// <inheritdoc />
    public void OnOutput(SandboxRecord record, CommandOutputInfo output)
    {
        var log = _logs.GetOrAdd(record.Id, _ => new Log());
        lock (log)
        {
            string stream, data;
            if (output.Kind == CommandOutputKind.Exit)
            {
                stream = "exit";
                data = output.ExitCode.ToString(CultureInfo.InvariantCulture);
                log.Decoders.Remove((output.Pid, CommandOutputKind.Stdout));
                log.Decoders.Remove((output.Pid, CommandOutputKind.Stderr));
            }
            else
            {
                stream = output.Kind == CommandOutputKind.Stderr ? "stderr" : "stdout";
                if (!log.Decoders.TryGetValue((output.Pid, output.Kind), out var decoder))
                    log.Decoders[(output.Pid, output.Kind)] = decoder = Encoding.UTF8.GetDecoder();
                var chars = new char[decoder.GetCharCount(output.Data.Span, flush: false)];
                decoder.GetChars(output.Data.Span, chars, flush: false);
                data = new string(chars);
                if (data.Length == 0)
                    return;
            }
            var entry = new CommandHistoryEntry(++log.Seq, time.GetUtcNow(), output.Pid, string.Join(' ', output.Argv), stream, data);
            long size = SizeOf(entry);
            log.Entries.Enqueue(entry);
            log.Bytes += size;
            while (log.Bytes > options.Value.MaxBytesPerSandbox && log.Entries.Count > 1)
                log.Bytes -= SizeOf(log.Entries.Dequeue());
        }
    }

    private static long SizeOf(CommandHistoryEntry e) => Encoding.UTF8.GetByteCount(e.Data) + Encoding.UTF8.GetByteCount(e.Command) + 64;

    /// <inheritdoc />
    public void OnLifecycle(SandboxRecord record, string kind, HostUsage? usage)
    {
        if (kind != SandboxEvents.Ended)
            return;
        if (_logs.TryGetValue(record.Id, out var log))
        {
            lock (log)
                log.EndedAt = time.GetUtcNow();
        }
        // Expiry piggybacks on ends: a history is dropped at the first end after its window.
        var cutoff = time.GetUtcNow() - TimeSpan.FromMinutes(Math.Max(0, options.Value.RetentionMinutes));
        foreach (var (id, l) in _logs)
        {
            if (l.EndedAt is { } ended && ended < cutoff)
                _logs.TryRemove(id, out _);
        }
    }
}
