using System.Text.Json;
using System.Text.Json.Serialization;

namespace Moat.Contracts;

/// <summary>The body of every error response: <c>{"error":{"code","message"}}</c>.</summary>
public sealed record ErrorResponse(ErrorBody Error);

/// <summary>A machine-readable code and a message a person can act on.</summary>
public sealed record ErrorBody(string Code, string Message);

/// <summary>GET /v1/capabilities.</summary>
public sealed record CapabilitiesResponse
{
    /// <summary>Server version.</summary>
    public required string Version { get; init; }
    /// <summary>Tier used when a request names none.</summary>
    public string? DefaultIsolation { get; init; }
    /// <summary>Every tier, with whether it can run here and why (not).</summary>
    public required IReadOnlyList<TierInfo> Tiers { get; init; }
    /// <summary>What one sandbox may ask for.</summary>
    public required LimitsInfo Limits { get; init; }
    /// <summary>What a sandbox gets when it asks for nothing.</summary>
    public required ResourcesDto Defaults { get; init; }
    /// <summary>Default lifetime in seconds.</summary>
    public int DefaultTimeoutSeconds { get; init; }
    /// <summary>Network modes this server enforces.</summary>
    public IReadOnlyList<string> NetworkModes { get; init; } = [];
}

/// <summary>One isolation tier on this host.</summary>
public sealed record TierInfo(string Name, bool Usable, string Reason, IReadOnlyDictionary<string, string> Details)
{
    /// <summary>Snapshot kinds this tier takes here (<c>filesystem</c>, <c>memory</c>); empty when it takes none.</summary>
    public IReadOnlyList<string> SnapshotKinds { get; init; } = [];
    /// <summary>Why memory snapshots are not available on this tier here, or null when they are.</summary>
    public string? MemorySnapshotProblem { get; init; }
}

/// <summary>Limits of one sandbox.</summary>
public sealed record LimitsInfo
{
    /// <summary>Largest CPU request.</summary>
    public double MaxCpus { get; init; }
    /// <summary>Memory range in MiB.</summary>
    public int MinMemoryMiB { get; init; }
    /// <summary>Memory range in MiB.</summary>
    public int MaxMemoryMiB { get; init; }
    /// <summary>Disk range in MiB.</summary>
    public int MinDiskMiB { get; init; }
    /// <summary>Disk range in MiB.</summary>
    public int MaxDiskMiB { get; init; }
    /// <summary>Largest pids request.</summary>
    public int MaxPids { get; init; }
    /// <summary>Longest lifetime, null when the platform sets none.</summary>
    public long? MaxTimeoutSeconds { get; init; }
    /// <summary>Largest file read or written through the API, in bytes.</summary>
    public long MaxFileBytes { get; init; }
    /// <summary>Output kept per stream by a buffered exec.</summary>
    public int MaxBufferedOutputBytes { get; init; }
}

/// <summary>Resources of a sandbox; in requests every field is optional.</summary>
public sealed record ResourcesDto
{
    /// <summary>CPUs (fractions allowed).</summary>
    public double? Cpus { get; init; }
    /// <summary>Memory in MiB.</summary>
    public int? MemoryMiB { get; init; }
    /// <summary>Writable disk in MiB.</summary>
    public int? DiskMiB { get; init; }
    /// <summary>Processes and threads.</summary>
    public int? Pids { get; init; }
    /// <summary>Open files per process.</summary>
    public int? OpenFiles { get; init; }
}

/// <summary>Network policy.</summary>
public sealed record NetworkDto
{
    /// <summary>none (default), allow or open.</summary>
    public string? Mode { get; init; }
    /// <summary>For allow: domains (with *. wildcards), IPs, CIDRs, optionally with :port.</summary>
    public IReadOnlyList<string>? Allow { get; init; }
}

/// <summary>POST /v1/sandboxes.</summary>
public sealed record CreateSandboxRequest
{
    /// <summary>Template name (default: the server's default template).</summary>
    public string? Template { get; init; }
    /// <summary>microvm, gvisor or container (default: the strongest usable).</summary>
    public string? Isolation { get; init; }
    /// <summary>Resource limits.</summary>
    public ResourcesDto? Resources { get; init; }
    /// <summary>Lifetime in seconds from now.</summary>
    public long? TimeoutSeconds { get; init; }
    /// <summary>kill (default) or pause: what happens when the lifetime ends.</summary>
    public string? OnTimeout { get; init; }
    /// <summary>Network policy.</summary>
    public NetworkDto? Network { get; init; }
    /// <summary>Environment for every command.</summary>
    public Dictionary<string, string>? Env { get; init; }
    /// <summary>Labels to filter by.</summary>
    public Dictionary<string, string>? Metadata { get; init; }
}

/// <summary>A sandbox as the API shows it.</summary>
public sealed record SandboxDto
{
    /// <summary>Sandbox id.</summary>
    public required string Id { get; init; }
    /// <summary>creating, running, paused, stopping, stopped or failed.</summary>
    public required string State { get; init; }
    /// <summary>Why it stopped or failed (timeout, deleted, agent_lost: ...).</summary>
    public string? StateReason { get; init; }
    /// <summary>Template name.</summary>
    public required string Template { get; init; }
    /// <summary>Isolation tier.</summary>
    public required string Isolation { get; init; }
    /// <summary>Limits in force.</summary>
    public required ResourcesDto Resources { get; init; }
    /// <summary>Network policy in force.</summary>
    public required NetworkDto Network { get; init; }
    /// <summary>Lifetime requested, in seconds.</summary>
    public long TimeoutSeconds { get; init; }
    /// <summary>kill or pause: what happens when the lifetime ends.</summary>
    public string OnTimeout { get; init; } = "kill";
    /// <summary>When it was created.</summary>
    public DateTimeOffset CreatedAt { get; init; }
    /// <summary>When its agent first answered.</summary>
    public DateTimeOffset? StartedAt { get; init; }
    /// <summary>When it will be ended.</summary>
    public DateTimeOffset ExpiresAt { get; init; }
    /// <summary>When it ended.</summary>
    public DateTimeOffset? EndedAt { get; init; }
    /// <summary>Names of the sandbox-wide environment variables (values are not shown).</summary>
    public IReadOnlyList<string> EnvKeys { get; init; } = [];
    /// <summary>Labels.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; init; } = new Dictionary<string, string>();
    /// <summary>Resource use measured on the host (detail view of a running sandbox).</summary>
    public UsageDto? Usage { get; init; }
}

/// <summary>Resource use of a sandbox.</summary>
public sealed record UsageDto
{
    /// <summary>CPU time used, in seconds.</summary>
    public double CpuSeconds { get; init; }
    /// <summary>Memory in use.</summary>
    public long MemoryBytes { get; init; }
    /// <summary>Peak memory.</summary>
    public long MemoryPeakBytes { get; init; }
    /// <summary>Memory limit.</summary>
    public long MemoryLimitBytes { get; init; }
    /// <summary>Disk used on the writable layer.</summary>
    public long DiskUsedBytes { get; init; }
    /// <summary>Size of the writable layer.</summary>
    public long DiskLimitBytes { get; init; }
    /// <summary>Processes and threads now.</summary>
    public long Pids { get; init; }
    /// <summary>Processes the memory limit killed.</summary>
    public long OomKills { get; init; }
}

/// <summary>GET /v1/sandboxes.</summary>
public sealed record SandboxListResponse(IReadOnlyList<SandboxDto> Sandboxes);

/// <summary>POST /v1/sandboxes/{id}/timeout.</summary>
public sealed record SetTimeoutRequest
{
    /// <summary>New lifetime, counted from now (for a paused sandbox: from its resume).</summary>
    public long? TimeoutSeconds { get; init; }
    /// <summary>kill or pause; unchanged when absent.</summary>
    public string? OnTimeout { get; init; }
}

/// <summary>POST /v1/sandboxes/{id}/exec.</summary>
public sealed record ExecRequestDto
{
    /// <summary>Program and arguments.</summary>
    public IReadOnlyList<string>? Cmd { get; init; }
    /// <summary>Shell command line (run with /bin/sh -c).</summary>
    public string? Shell { get; init; }
    /// <summary>Working directory.</summary>
    public string? Cwd { get; init; }
    /// <summary>Extra environment.</summary>
    public Dictionary<string, string>? Env { get; init; }
    /// <summary>User (default: the template's, else "user"); "root" only when asked.</summary>
    public string? User { get; init; }
    /// <summary>Text written to stdin, then closed.</summary>
    public string? Stdin { get; init; }
    /// <summary>Bytes written to stdin, base64.</summary>
    public string? StdinBase64 { get; init; }
    /// <summary>Kill the command after this many seconds.</summary>
    public double? TimeoutSeconds { get; init; }
    /// <summary>Output encoding: "utf8" (default) or "base64".</summary>
    public string? Encoding { get; init; }
    /// <summary>Start it in the background and answer 202 with its pid at once; attach to it later.</summary>
    public bool Background { get; init; }
    /// <summary>A label to find it again.</summary>
    public string? Tag { get; init; }
}

/// <summary>A command the sandbox's agent tracks (running, or recently exited).</summary>
public sealed record ProcessDto
{
    /// <summary>Process id inside the sandbox.</summary>
    public int Pid { get; init; }
    /// <summary>Program and arguments.</summary>
    public IReadOnlyList<string> Cmd { get; init; } = [];
    /// <summary>Label.</summary>
    public string? Tag { get; init; }
    /// <summary>Still running.</summary>
    public bool Running { get; init; }
    /// <summary>User it runs as.</summary>
    public string? User { get; init; }
    /// <summary>Working directory.</summary>
    public string? Cwd { get; init; }
    /// <summary>When it started.</summary>
    public DateTimeOffset StartedAt { get; init; }
    /// <summary>How it ended, once it has.</summary>
    public ExecExitDto? Exit { get; init; }
}

/// <summary>GET /v1/sandboxes/{id}/processes.</summary>
public sealed record ProcessListResponse(IReadOnlyList<ProcessDto> Processes);

/// <summary>POST /v1/sandboxes/{id}/processes/{pid}/signal.</summary>
public sealed record SignalRequestDto
{
    /// <summary>Signal number (default 15, SIGTERM).</summary>
    public int? Signal { get; init; }
}

/// <summary>The result of a buffered exec.</summary>
public sealed record ExecResultDto
{
    /// <summary>Exit status (128 + signal when killed by one).</summary>
    public int ExitCode { get; init; }
    /// <summary>Terminating signal, if any.</summary>
    public int? Signal { get; init; }
    /// <summary>The command's timeout killed it.</summary>
    public bool TimedOut { get; init; }
    /// <summary>The memory limit killed it.</summary>
    public bool OomKilled { get; init; }
    /// <summary>Standard output (UTF-8, or base64 when asked).</summary>
    public string Stdout { get; init; } = "";
    /// <summary>Standard error.</summary>
    public string Stderr { get; init; } = "";
    /// <summary>More stdout was produced than the server keeps.</summary>
    public bool StdoutTruncated { get; init; }
    /// <summary>More stderr was produced than the server keeps.</summary>
    public bool StderrTruncated { get; init; }
    /// <summary>Wall time of the command.</summary>
    public long DurationMs { get; init; }
    /// <summary>Process id inside the sandbox.</summary>
    public int Pid { get; init; }
}

/// <summary>One line of a streamed exec (application/x-ndjson): exactly one field is set.</summary>
public sealed record ExecEvent
{
    /// <summary>The command started.</summary>
    public ExecStartDto? Start { get; init; }
    /// <summary>A chunk of stdout.</summary>
    public string? Stdout { get; init; }
    /// <summary>A chunk of stderr.</summary>
    public string? Stderr { get; init; }
    /// <summary>The command ended.</summary>
    public ExecExitDto? Exit { get; init; }
    /// <summary>The stream failed.</summary>
    public ErrorBody? Error { get; init; }
}

/// <summary>Start of a streamed command.</summary>
public sealed record ExecStartDto(int Pid);

/// <summary>End of a streamed command.</summary>
public sealed record ExecExitDto
{
    /// <summary>Exit status (128 + signal when killed by one).</summary>
    public int ExitCode { get; init; }
    /// <summary>Terminating signal, if any.</summary>
    public int? Signal { get; init; }
    /// <summary>The command's timeout killed it.</summary>
    public bool TimedOut { get; init; }
    /// <summary>The memory limit killed it.</summary>
    public bool OomKilled { get; init; }
    /// <summary>Wall time.</summary>
    public long DurationMs { get; init; }
}

/// <summary>A file or directory in a sandbox.</summary>
public sealed record FileEntryDto
{
    /// <summary>Base name.</summary>
    public required string Name { get; init; }
    /// <summary>Absolute path inside the sandbox.</summary>
    public required string Path { get; init; }
    /// <summary>file, dir, symlink, fifo, socket, char, block or unknown.</summary>
    public required string Type { get; init; }
    /// <summary>Size in bytes.</summary>
    public long Size { get; init; }
    /// <summary>Permission bits, octal string (e.g. "0644").</summary>
    public required string Mode { get; init; }
    /// <summary>Modification time.</summary>
    public DateTimeOffset Mtime { get; init; }
    /// <summary>Owner name (or uid).</summary>
    public string? Owner { get; init; }
    /// <summary>Group name (or gid).</summary>
    public string? Group { get; init; }
    /// <summary>Target, for symlinks.</summary>
    public string? SymlinkTarget { get; init; }
}

/// <summary>GET /v1/sandboxes/{id}/files/list.</summary>
public sealed record FileListResponse(IReadOnlyList<FileEntryDto> Entries, bool Truncated);

/// <summary>A file to put into a one-shot run's sandbox before the command.</summary>
public sealed record RunFileDto
{
    /// <summary>Path (relative paths are under /home/user).</summary>
    public required string Path { get; init; }
    /// <summary>Text content.</summary>
    public string? Content { get; init; }
    /// <summary>Binary content, base64.</summary>
    public string? ContentBase64 { get; init; }
}

/// <summary>POST /v1/run: sandbox, command, result, teardown — in one request.</summary>
public sealed record RunRequest
{
    /// <summary>Template (default: the server's).</summary>
    public string? Template { get; init; }
    /// <summary>python, bash or node: run <see cref="Code"/> with that interpreter.</summary>
    public string? Language { get; init; }
    /// <summary>Source code for <see cref="Language"/>.</summary>
    public string? Code { get; init; }
    /// <summary>Program and arguments (instead of language + code).</summary>
    public IReadOnlyList<string>? Cmd { get; init; }
    /// <summary>Shell command line (instead of cmd).</summary>
    public string? Shell { get; init; }
    /// <summary>Files to create first.</summary>
    public IReadOnlyList<RunFileDto>? Files { get; init; }
    /// <summary>Text for stdin.</summary>
    public string? Stdin { get; init; }
    /// <summary>Isolation tier.</summary>
    public string? Isolation { get; init; }
    /// <summary>Resource limits.</summary>
    public ResourcesDto? Limits { get; init; }
    /// <summary>Wall-time limit in seconds for the whole run.</summary>
    public long? TimeoutSeconds { get; init; }
    /// <summary>Environment.</summary>
    public Dictionary<string, string>? Env { get; init; }
    /// <summary>Network policy.</summary>
    public NetworkDto? Network { get; init; }
    /// <summary>User to run as.</summary>
    public string? User { get; init; }
}

/// <summary>The result of a one-shot run.</summary>
public sealed record RunResponse
{
    /// <summary>The sandbox that ran it (already destroyed).</summary>
    public required string SandboxId { get; init; }
    /// <summary>Exit status: 124 for the timeout, 137 for the memory limit.</summary>
    public int ExitCode { get; init; }
    /// <summary>Standard output.</summary>
    public string Stdout { get; init; } = "";
    /// <summary>Standard error.</summary>
    public string Stderr { get; init; } = "";
    /// <summary>Output was cut at the server's limit.</summary>
    public bool StdoutTruncated { get; init; }
    /// <summary>Output was cut at the server's limit.</summary>
    public bool StderrTruncated { get; init; }
    /// <summary>The run's timeout ended it.</summary>
    public bool TimedOut { get; init; }
    /// <summary>The memory limit ended it.</summary>
    public bool OomKilled { get; init; }
    /// <summary>Terminating signal, if any.</summary>
    public int? Signal { get; init; }
    /// <summary>Time the command ran.</summary>
    public long DurationMs { get; init; }
    /// <summary>Time for the whole request, creation and teardown included.</summary>
    public long TotalMs { get; init; }
}

/// <summary>POST /v1/keys (admin).</summary>
public sealed record CreateKeyRequest
{
    /// <summary>Label.</summary>
    public string? Name { get; init; }
    /// <summary>admin, member or read-only.</summary>
    public string? Role { get; init; }
}

/// <summary>An API key; <see cref="Key"/> is only ever set in the response that created it.</summary>
public sealed record ApiKeyDto
{
    /// <summary>Key id.</summary>
    public required string Id { get; init; }
    /// <summary>Visible prefix.</summary>
    public required string Prefix { get; init; }
    /// <summary>Label.</summary>
    public string Name { get; init; } = "";
    /// <summary>Role.</summary>
    public required string Role { get; init; }
    /// <summary>Tenant.</summary>
    public required string TenantId { get; init; }
    /// <summary>Created.</summary>
    public DateTimeOffset CreatedAt { get; init; }
    /// <summary>Last used.</summary>
    public DateTimeOffset? LastUsedAt { get; init; }
    /// <summary>Revoked.</summary>
    public DateTimeOffset? RevokedAt { get; init; }
    /// <summary>The key itself — shown once.</summary>
    public string? Key { get; init; }
}

/// <summary>A template.</summary>
public sealed record TemplateDto(string Id, string Name, IReadOnlyList<string> Env, string WorkingDir, string User, IReadOnlyList<string> Cmd)
{
    /// <summary>Shared with every tenant by the operator (otherwise the caller's tenant owns it).</summary>
    public bool? Public { get; init; }
    /// <summary>Declared bytes of its layers' files.</summary>
    public long? SizeBytes { get; init; }
    /// <summary>Layer diff ids, lowest first.</summary>
    public IReadOnlyList<string>? Layers { get; init; }
    /// <summary>Where it came from: builtin, import:FILE, pull:REPO@DIGEST, build, tag:NAME.</summary>
    public string? Source { get; init; }
    /// <summary>When it was made.</summary>
    public DateTimeOffset? CreatedAt { get; init; }
    /// <summary>The image's Entrypoint (<see cref="Cmd"/> is Entrypoint followed by Cmd).</summary>
    public IReadOnlyList<string>? Entrypoint { get; init; }
    /// <summary>Started in the background of every sandbox of the template, if set.</summary>
    public TemplateStartDto? Start { get; init; }
}

/// <summary>A template's start command and ready check.</summary>
public sealed record TemplateStartDto
{
    /// <summary>The command (argv); empty: the image's Entrypoint + Cmd.</summary>
    public IReadOnlyList<string>? Command { get; init; }
    /// <summary>A shell command that exits 0 once the sandbox is ready.</summary>
    public string? ReadyCheck { get; init; }
    /// <summary>Seconds the ready check may take.</summary>
    public int? ReadyTimeoutSeconds { get; init; }
}

/// <summary>POST /v1/templates/pull.</summary>
public sealed record PullTemplateRequest
{
    /// <summary>Image reference: python:3.12-slim, ghcr.io/org/app:1, registry:5000/team/tool@sha256:...</summary>
    public string Image { get; init; } = "";
    /// <summary>Template name (default: the image's repository name and tag).</summary>
    public string? Name { get; init; }
    /// <summary>Public (operator only).</summary>
    public bool? Public { get; init; }
    /// <summary>A login for this pull only (otherwise the tenant's stored one, if any).</summary>
    public string? Username { get; init; }
    /// <summary>Password or token for <see cref="Username"/>.</summary>
    public string? Password { get; init; }
    /// <summary>Start command and ready check for the template's sandboxes.</summary>
    public TemplateStartDto? Start { get; init; }
}

/// <summary>POST /v1/templates/tag: another name for the same image.</summary>
public sealed record TagTemplateRequest
{
    /// <summary>The existing template.</summary>
    public string Source { get; init; } = "";
    /// <summary>The new name.</summary>
    public string Name { get; init; } = "";
    /// <summary>Make the new name public (operator only).</summary>
    public bool? Public { get; init; }
}

/// <summary>One event of a streamed import, pull or build (NDJSON): progress, a log line, the result, or an error.</summary>
public sealed record TemplateEventDto
{
    /// <summary>Layer progress.</summary>
    public LayerProgressDto? Progress { get; init; }
    /// <summary>A line of build output or a step announcement.</summary>
    public string? Log { get; init; }
    /// <summary>The finished template (last event of a success).</summary>
    public TemplateDto? Template { get; init; }
    /// <summary>Why it failed (last event of a failure).</summary>
    public ErrorBody? Error { get; init; }
}

/// <summary>Progress of one layer.</summary>
public sealed record LayerProgressDto(string Layer, string Status, long Bytes, long Total);

/// <summary>POST /v1/registry-logins.</summary>
public sealed record RegistryLoginRequest
{
    /// <summary>Registry host: docker.io, ghcr.io, registry.example.com:5000.</summary>
    public string Registry { get; init; } = "";
    /// <summary>User name.</summary>
    public string Username { get; init; } = "";
    /// <summary>Password or access token (stored sealed; never returned).</summary>
    public string Password { get; init; } = "";
}

/// <summary>A stored registry login (never its secret).</summary>
public sealed record RegistryLoginDto(string Registry, string Username, DateTimeOffset CreatedAt);

/// <summary>GET /v1/registry-logins.</summary>
public sealed record RegistryLoginListResponse(IReadOnlyList<RegistryLoginDto> Logins);

/// <summary>GET /v1/templates.</summary>
public sealed record TemplateListResponse(IReadOnlyList<TemplateDto> Templates);

/// <summary>Source-generated JSON for every API shape (camelCase, nulls omitted).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, MaxDepth = 32)]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(CapabilitiesResponse))]
[JsonSerializable(typeof(CreateSandboxRequest))]
[JsonSerializable(typeof(SandboxDto))]
[JsonSerializable(typeof(SandboxListResponse))]
[JsonSerializable(typeof(SetTimeoutRequest))]
[JsonSerializable(typeof(ExecRequestDto))]
[JsonSerializable(typeof(ExecResultDto))]
[JsonSerializable(typeof(ExecEvent))]
[JsonSerializable(typeof(FileEntryDto))]
[JsonSerializable(typeof(FileListResponse))]
[JsonSerializable(typeof(RunRequest))]
[JsonSerializable(typeof(RunResponse))]
[JsonSerializable(typeof(CreateKeyRequest))]
[JsonSerializable(typeof(ApiKeyDto))]
[JsonSerializable(typeof(List<ApiKeyDto>))]
[JsonSerializable(typeof(TemplateListResponse))]
[JsonSerializable(typeof(CreateSnapshotRequest))]
[JsonSerializable(typeof(SnapshotDto))]
[JsonSerializable(typeof(SnapshotListResponse))]
[JsonSerializable(typeof(ForkRequest))]
[JsonSerializable(typeof(ForkResponse))]
[JsonSerializable(typeof(TemplateDto))]
[JsonSerializable(typeof(PullTemplateRequest))]
[JsonSerializable(typeof(TagTemplateRequest))]
[JsonSerializable(typeof(TemplateEventDto))]
[JsonSerializable(typeof(RegistryLoginRequest))]
[JsonSerializable(typeof(RegistryLoginListResponse))]
[JsonSerializable(typeof(ProcessDto))]
[JsonSerializable(typeof(ProcessListResponse))]
[JsonSerializable(typeof(SignalRequestDto))]
[JsonSerializable(typeof(ExecStartDto))]
[JsonSerializable(typeof(CodeRequestDto))]
[JsonSerializable(typeof(CodeResultDto))]
[JsonSerializable(typeof(CodeEventDto))]
[JsonSerializable(typeof(CreateCodeContextRequest))]
[JsonSerializable(typeof(CodeContextDto))]
[JsonSerializable(typeof(CodeContextListResponse))]
[JsonSerializable(typeof(TerminalMessage))]
[JsonSerializable(typeof(SandboxMetricsResponse))]
[JsonSerializable(typeof(SandboxLogsResponse))]
public sealed partial class MoatJson : JsonSerializerContext;
