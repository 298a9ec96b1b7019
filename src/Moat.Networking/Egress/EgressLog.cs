using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Moat.Core.Networking;

namespace Moat.Networking.Egress;

/// <summary>
/// Every connection attempt and DNS question of every sandbox, one JSON line per event in
/// <c>{data}/network/logs/{sandbox}.jsonl</c>: written when the attempt ends (refusals at once),
/// numbered per sandbox, bounded in size (what does not fit is counted), kept after the sandbox
/// ends for the retention period so its history can still be read.
/// </summary>
public sealed class EgressLog : IDisposable
{
    private readonly string _directory;
    private readonly long _maxBytes;
    private readonly ConcurrentDictionary<string, Writer> _writers = new();

    /// <summary>Opens the log directory.</summary>
    public EgressLog(string directory, long maxBytesPerSandbox)
    {
        _directory = directory;
        _maxBytes = maxBytesPerSandbox;
        Directory.CreateDirectory(directory);
    }

    /// <summary>Raised after an event is recorded (for the audit trail and metrics).</summary>
    public event Action<string, EgressEvent>? Recorded;

    /// <summary>Records an event for a sandbox; its sequence number is assigned here.</summary>
    public EgressEvent Append(string sandboxId, EgressEvent e)
    {
        var writer = _writers.GetOrAdd(sandboxId, id => new Writer(PathOf(id)));
        EgressEvent numbered;
        lock (writer)
        {
            numbered = e with { Seq = ++writer.Seq };
            var line = JsonSerializer.SerializeToUtf8Bytes(numbered, EgressJson.Default.EgressEvent);
            if (writer.Bytes + line.Length + 1 > _maxBytes)
            {
                writer.Dropped++;
                return numbered;
            }
            writer.Stream.Write(line);
            writer.Stream.WriteByte((byte)'\n');
            writer.Stream.Flush();
            writer.Bytes += line.Length + 1;
        }
        Recorded?.Invoke(sandboxId, numbered);
        return numbered;
    }

    /// <summary>Closes a sandbox's file (it stays readable).</summary>
    public void Close(string sandboxId)
    {
        if (_writers.TryRemove(sandboxId, out var writer))
        {
            lock (writer)
                writer.Stream.Dispose();
        }
    }

    /// <summary>Events after <paramref name="after"/>, oldest first.</summary>
    public async Task<EgressLogPage> ReadAsync(string sandboxId, long after, int limit, CancellationToken cancellationToken)
    {
        var events = new List<EgressEvent>();
        long dropped = _writers.TryGetValue(sandboxId, out var live) ? Volatile.Read(ref live.Dropped) : 0;
        var path = PathOf(sandboxId);
        if (!File.Exists(path))
            return new EgressLogPage(events, after, dropped);
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        long next = after;
        while (await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false) is { } line)
        {
            if (line.Length == 0)
                continue;
            EgressEvent? e;
            try
            {
                e = JsonSerializer.Deserialize(line, EgressJson.Default.EgressEvent);
            }
            catch (JsonException)
            {
                continue; // a torn last line after a crash
            }
            if (e is null || e.Seq <= after)
                continue;
            events.Add(e);
            next = e.Seq;
            if (events.Count >= limit)
                break;
        }
        return new EgressLogPage(events, next, dropped);
    }

    /// <summary>Deletes the logs of sandboxes that ended more than <paramref name="retention"/> ago (not written since).</summary>
    public void Expire(TimeSpan retention)
    {
        foreach (var file in Directory.EnumerateFiles(_directory, "*.jsonl"))
        {
            var id = Path.GetFileNameWithoutExtension(file);
            if (_writers.ContainsKey(id))
                continue;
            try
            {
                if (DateTime.UtcNow - File.GetLastWriteTimeUtc(file) > retention)
                    File.Delete(file);
            }
            catch (IOException)
            {
            }
        }
    }

    private string PathOf(string sandboxId) => Path.Combine(_directory, sandboxId + ".jsonl");

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var id in _writers.Keys.ToList())
            Close(id);
    }

    private sealed class Writer
    {
        public Writer(string path)
        {
            // A restarted server continues the numbering.
            if (File.Exists(path))
            {
                foreach (var line in File.ReadLines(path))
                {
                    if (line.Length == 0)
                        continue;
                    Bytes += Encoding.UTF8.GetByteCount(line) + 1;
                    try
                    {
                        if (JsonSerializer.Deserialize(line, EgressJson.Default.EgressEvent) is { } e)
                            Seq = Math.Max(Seq, e.Seq);
                    }
                    catch (JsonException)
                    {
                    }
                }
            }
            Stream = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete);
        }

        public FileStream Stream { get; }
        public long Seq;
        public long Bytes;
        public long Dropped;
    }
}

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(EgressEvent))]
internal sealed partial class EgressJson : JsonSerializerContext;
