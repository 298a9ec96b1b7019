using System.Text.Json;
using System.Text.Json.Serialization;

namespace Moat.Contracts;

/// <summary>What a tenant may hold at once; a null field is unlimited (only the node's own limits apply).</summary>
public sealed record QuotasDto
{
    /// <summary>Sandboxes alive at once (creating, running or paused).</summary>
    public int? MaxSandboxes { get; init; }
    /// <summary>vCPUs of all its live sandboxes together.</summary>
    public double? MaxVcpus { get; init; }
    /// <summary>Memory of all its live sandboxes together, MiB.</summary>
    public long? MaxMemoryMiB { get; init; }
    /// <summary>Disk of all its live sandboxes together, MiB.</summary>
    public long? MaxDiskMiB { get; init; }
    /// <summary>Longest lifetime of one sandbox, seconds (also caps extensions).</summary>
    public long? MaxLifetimeSeconds { get; init; }
    /// <summary>Isolation tiers it may use (null: every tier).</summary>
    public IReadOnlyList<string>? AllowedTiers { get; init; }
}

/// <summary>Request rates of a tenant; a null field is unlimited.</summary>
public sealed record RateLimitsDto
{
    /// <summary>API requests per minute (a bucket of this size refilled evenly).</summary>
    public int? RequestsPerMinute { get; init; }
    /// <summary>Sandbox creations per minute.</summary>
    public int? CreatesPerMinute { get; init; }
}

/// <summary>A tenant.</summary>
public sealed record TenantDto
{
    /// <summary>Tenant id.</summary>
    public required string Id { get; init; }
    /// <summary>Human name.</summary>
    public string Name { get; init; } = "";
    /// <summary>When it was made.</summary>
    public DateTimeOffset CreatedAt { get; init; }
    /// <summary>Quotas.</summary>
    public QuotasDto Quotas { get; init; } = new();
    /// <summary>Rate limits.</summary>
    public RateLimitsDto RateLimits { get; init; } = new();
}

/// <summary>POST /v1/tenants.</summary>
public sealed record CreateTenantRequest
{
    /// <summary>Id (lowercase letters, digits and '-', 1-63); generated when absent.</summary>
    public string? Id { get; init; }
    /// <summary>Human name.</summary>
    public string? Name { get; init; }
    /// <summary>Quotas.</summary>
    public QuotasDto? Quotas { get; init; }
    /// <summary>Rate limits.</summary>
    public RateLimitsDto? RateLimits { get; init; }
}

/// <summary>PATCH /v1/tenants/{id}: the fields given replace the stored ones.</summary>
public sealed record UpdateTenantRequest
{
    /// <summary>Human name.</summary>
    public string? Name { get; init; }
    /// <summary>Quotas (replaced as a whole).</summary>
    public QuotasDto? Quotas { get; init; }
    /// <summary>Rate limits (replaced as a whole).</summary>
    public RateLimitsDto? RateLimits { get; init; }
}

/// <summary>GET /v1/tenants.</summary>
public sealed record TenantListResponse(IReadOnlyList<TenantDto> Tenants);

/// <summary>One audit record.</summary>
public sealed record AuditRecordDto
{
    /// <summary>Position in the chain (1, 2, ...).</summary>
    public long Seq { get; init; }
    /// <summary>When it happened.</summary>
    public DateTimeOffset Time { get; init; }
    /// <summary>api, command, file, lifecycle or network.</summary>
    public required string Kind { get; init; }
    /// <summary>Tenant.</summary>
    public string? TenantId { get; init; }
    /// <summary>Key that acted (null for the platform itself).</summary>
    public string? KeyId { get; init; }
    /// <summary>Sandbox concerned.</summary>
    public string? SandboxId { get; init; }
    /// <summary>What was done (e.g. "POST /v1/sandboxes", "exec", "file.write", "sandbox.created").</summary>
    public required string Action { get; init; }
    /// <summary>Outcome (HTTP status and error code, exit code, state).</summary>
    public string? Result { get; init; }
    /// <summary>Details as JSON (argv, cwd, path, sha256, ...).</summary>
    public string? Data { get; init; }
    /// <summary>SHA-256 (hex) of the record before this one.</summary>
    public required string PrevHash { get; init; }
    /// <summary>SHA-256 (hex) of this record, its fields and <see cref="PrevHash"/>.</summary>
    public required string Hash { get; init; }
}

/// <summary>GET /v1/audit.</summary>
public sealed record AuditListResponse(IReadOnlyList<AuditRecordDto> Records);

/// <summary>GET /v1/audit/verify.</summary>
public sealed record AuditVerifyResponse
{
    /// <summary>Whether the whole chain is intact.</summary>
    public bool Valid { get; init; }
    /// <summary>Records checked.</summary>
    public long Records { get; init; }
    /// <summary>First bad record (null when valid).</summary>
    public long? FirstBadSeq { get; init; }
    /// <summary>What is wrong.</summary>
    public string? Problem { get; init; }
}

/// <summary>Usage of one tenant on one UTC day.</summary>
public sealed record UsageDayDto
{
    /// <summary>Tenant.</summary>
    public required string TenantId { get; init; }
    /// <summary>Day (UTC), yyyy-MM-dd.</summary>
    public required string Day { get; init; }
    /// <summary>CPU time used, seconds of one vCPU (from the sandboxes' cgroups).</summary>
    public double VcpuSeconds { get; init; }
    /// <summary>Memory limit × time alive, GiB-seconds.</summary>
    public double MemoryGiBSeconds { get; init; }
    /// <summary>Disk limit × time alive, GiB-hours.</summary>
    public double DiskGiBHours { get; init; }
    /// <summary>Sandbox time alive, seconds.</summary>
    public double SandboxSeconds { get; init; }
    /// <summary>Cost by the configured price table (0 when none is configured).</summary>
    public double Cost { get; init; }
    /// <summary>Currency of <see cref="Cost"/>.</summary>
    public string Currency { get; init; } = "";
}

/// <summary>GET /v1/usage.</summary>
public sealed record UsageResponse(IReadOnlyList<UsageDayDto> Days);

/// <summary>Source-generated JSON of the tenancy, audit and usage API.</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, MaxDepth = 32)]
[JsonSerializable(typeof(QuotasDto))]
[JsonSerializable(typeof(RateLimitsDto))]
[JsonSerializable(typeof(TenantDto))]
[JsonSerializable(typeof(CreateTenantRequest))]
[JsonSerializable(typeof(UpdateTenantRequest))]
[JsonSerializable(typeof(TenantListResponse))]
[JsonSerializable(typeof(AuditRecordDto))]
[JsonSerializable(typeof(AuditListResponse))]
[JsonSerializable(typeof(AuditVerifyResponse))]
[JsonSerializable(typeof(UsageDayDto))]
[JsonSerializable(typeof(UsageResponse))]
[JsonSerializable(typeof(Dictionary<string, string>))]
[JsonSerializable(typeof(List<string>))]
public sealed partial class TenancyJson : JsonSerializerContext;
