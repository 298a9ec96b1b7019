using System.Text.Json;
using System.Text.Json.Serialization;

namespace Moat.Server.E2b.Envd;

// The messages of envd's process.Process and filesystem.Filesystem services in protobuf's JSON
// mapping (lowerCamelCase names, int64 as strings, bytes as base64, enums by name). Field names
// and numbers are E2B's (spec/envd/*.proto); requests are read leniently (absent or null fields
// are defaults), responses carry only what protobuf would.

/// <summary>An empty message (responses without fields, keepalives, start events).</summary>
internal sealed class Empty;

// ---- process.Process ----

internal sealed class ProcessConfig
{
    public string? Cmd { get; set; }
    public List<string>? Args { get; set; }
    public Dictionary<string, string>? Envs { get; set; }
    public string? Cwd { get; set; }
}

internal sealed class PtySize
{
    public uint? Cols { get; set; }
    public uint? Rows { get; set; }
}

internal sealed class Pty
{
    public PtySize? Size { get; set; }
}

internal sealed class ProcessSelector
{
    public uint? Pid { get; set; }
    public string? Tag { get; set; }
}

internal sealed class StartRequest
{
    public ProcessConfig? Process { get; set; }
    public Pty? Pty { get; set; }
    public string? Tag { get; set; }
    public bool? Stdin { get; set; }
}

internal sealed class ConnectRequest
{
    public ProcessSelector? Process { get; set; }
}

internal sealed class UpdateRequest
{
    public ProcessSelector? Process { get; set; }
    public Pty? Pty { get; set; }
}

internal sealed class ProcessInput
{
    public byte[]? Stdin { get; set; }
    public byte[]? Pty { get; set; }
}

internal sealed class SendInputRequest
{
    public ProcessSelector? Process { get; set; }
    public ProcessInput? Input { get; set; }
}

internal sealed class StreamInputRequest
{
    public StreamInputStart? Start { get; set; }
    public StreamInputData? Data { get; set; }
    public Empty? Keepalive { get; set; }
}

internal sealed class StreamInputStart
{
    public ProcessSelector? Process { get; set; }
}

internal sealed class StreamInputData
{
    public ProcessInput? Input { get; set; }
}

internal sealed class SendSignalRequest
{
    public ProcessSelector? Process { get; set; }
    /// <summary>Signal enum: a name (SIGNAL_SIGKILL) or its number.</summary>
    public JsonElement? Signal { get; set; }
}

internal sealed class CloseStdinRequest
{
    public ProcessSelector? Process { get; set; }
}

internal sealed class ListRequest;

internal sealed class ProcessInfoMessage
{
    public ProcessConfig Config { get; set; } = new();
    public uint Pid { get; set; }
    public string? Tag { get; set; }
}

internal sealed class ListResponse
{
    public List<ProcessInfoMessage> Processes { get; set; } = [];
}

internal sealed class ProcessEventMessage
{
    public StartEvent? Start { get; set; }
    public DataEvent? Data { get; set; }
    public EndEvent? End { get; set; }
    public Empty? Keepalive { get; set; }
}

internal sealed class StartEvent
{
    public uint Pid { get; set; }
}

internal sealed class DataEvent
{
    public byte[]? Stdout { get; set; }
    public byte[]? Stderr { get; set; }
    public byte[]? Pty { get; set; }
}

internal sealed class EndEvent
{
    public int ExitCode { get; set; }
    public bool Exited { get; set; }
    public string? Status { get; set; }
    public string? Error { get; set; }
}

/// <summary>StartResponse and ConnectResponse: one process event each.</summary>
internal sealed class ProcessEventResponse
{
    public ProcessEventMessage Event { get; set; } = new();
}

// ---- filesystem.Filesystem ----

internal sealed class PathRequest
{
    public string? Path { get; set; }
}

internal sealed class MoveRequest
{
    public string? Source { get; set; }
    public string? Destination { get; set; }
}

internal sealed class ListDirRequest
{
    public string? Path { get; set; }
    public uint? Depth { get; set; }
}

internal sealed class WatchDirRequest
{
    public string? Path { get; set; }
    public bool? Recursive { get; set; }
    public bool? IncludeEntry { get; set; }
    public bool? AllowNetworkMounts { get; set; }
}

internal sealed class WatcherRequest
{
    public string? WatcherId { get; set; }
}

internal sealed class EntryInfo
{
    public string Name { get; set; } = "";
    /// <summary>FILE_TYPE_FILE, FILE_TYPE_DIRECTORY, FILE_TYPE_SYMLINK or FILE_TYPE_UNSPECIFIED.</summary>
    public string Type { get; set; } = "FILE_TYPE_UNSPECIFIED";
    public string Path { get; set; } = "";
    /// <summary>int64: a string in protobuf's JSON.</summary>
    public string Size { get; set; } = "0";
    /// <summary>Go's os.FileMode bits, as envd reports them.</summary>
    public uint Mode { get; set; }
    public string Permissions { get; set; } = "";
    public string Owner { get; set; } = "";
    public string Group { get; set; } = "";
    /// <summary>RFC 3339.</summary>
    public string? ModifiedTime { get; set; }
    public string? SymlinkTarget { get; set; }
}

internal sealed class EntryResponse
{
    public EntryInfo? Entry { get; set; }
}

internal sealed class ListDirResponse
{
    public List<EntryInfo> Entries { get; set; } = [];
}

internal sealed class FilesystemEvent
{
    public string Name { get; set; } = "";
    /// <summary>EVENT_TYPE_CREATE, _WRITE, _REMOVE, _RENAME or _CHMOD.</summary>
    public string Type { get; set; } = "";
    public EntryInfo? Entry { get; set; }
}

internal sealed class WatchDirResponse
{
    public Empty? Start { get; set; }
    public FilesystemEvent? Filesystem { get; set; }
    public Empty? Keepalive { get; set; }
}

internal sealed class CreateWatcherResponse
{
    public string WatcherId { get; set; } = "";
}

internal sealed class GetWatcherEventsResponse
{
    public List<FilesystemEvent> Events { get; set; } = [];
}

// ---- envd REST ----

/// <summary>An uploaded file, as POST /files reports it.</summary>
internal sealed class UploadedEntry
{
    public string Path { get; set; } = "";
    public string Name { get; set; } = "";
    public string Type { get; set; } = "file";
}

/// <summary>Errors of envd's REST routes and of the code interpreter: the HTTP status and a message.</summary>
internal sealed record EnvdError(int Code, string Message);

/// <summary>envd's <c>GET /metrics</c> body (snake_case, as envd's REST API names it).</summary>
internal sealed class EnvdMetrics
{
    /// <summary>Unix time of the reading, seconds.</summary>
    [JsonPropertyName("ts")]
    public long Ts { get; set; }
    [JsonPropertyName("cpu_count")]
    public int CpuCount { get; set; }
    [JsonPropertyName("cpu_used_pct")]
    public double CpuUsedPct { get; set; }
    [JsonPropertyName("mem_total")]
    public long MemTotal { get; set; }
    [JsonPropertyName("mem_used")]
    public long MemUsed { get; set; }
    [JsonPropertyName("mem_total_mib")]
    public long MemTotalMib { get; set; }
    [JsonPropertyName("mem_used_mib")]
    public long MemUsedMib { get; set; }
    [JsonPropertyName("disk_used")]
    public long DiskUsed { get; set; }
    [JsonPropertyName("disk_total")]
    public long DiskTotal { get; set; }
}
