namespace Moat.Core.State;

/// <summary>A tenant as stored; its quotas and rate limits are one JSON document the server interprets.</summary>
public sealed record TenantRecord(string Id, string Name, DateTimeOffset CreatedAt, string Settings);

/// <summary>Durable tenants.</summary>
public interface ITenantStore
{
    /// <summary>Adds a tenant; false when the id is taken.</summary>
    Task<bool> InsertAsync(TenantRecord tenant, CancellationToken cancellationToken);
    /// <summary>A tenant, or null.</summary>
    Task<TenantRecord?> GetAsync(string id, CancellationToken cancellationToken);
    /// <summary>Every tenant.</summary>
    Task<IReadOnlyList<TenantRecord>> ListAsync(CancellationToken cancellationToken);
    /// <summary>Replaces name and settings; false when there is no such tenant.</summary>
    Task<bool> UpdateAsync(TenantRecord tenant, CancellationToken cancellationToken);
    /// <summary>Removes a tenant and revokes its keys; false when there is no such tenant.</summary>
    Task<bool> DeleteAsync(string id, DateTimeOffset when, CancellationToken cancellationToken);
}

/// <summary>One record of the audit chain as stored.</summary>
public sealed record AuditEntry
{
    /// <summary>Position in the chain, from 1.</summary>
    public long Seq { get; init; }
    /// <summary>When.</summary>
    public DateTimeOffset Time { get; init; }
    /// <summary>api, command, file, lifecycle.</summary>
    public required string Kind { get; init; }
    /// <summary>Tenant.</summary>
    public string? TenantId { get; init; }
    /// <summary>Acting key.</summary>
    public string? KeyId { get; init; }
    /// <summary>Sandbox.</summary>
    public string? SandboxId { get; init; }
    /// <summary>What.</summary>
    public required string Action { get; init; }
    /// <summary>Outcome.</summary>
    public string? Result { get; init; }
    /// <summary>Details (JSON).</summary>
    public string? Data { get; init; }
    /// <summary>Hash of the previous record (hex).</summary>
    public string PrevHash { get; init; } = "";
    /// <summary>Hash of this record (hex).</summary>
    public string Hash { get; init; } = "";
}

/// <summary>Filter of an audit query.</summary>
public sealed record AuditQuery
{
    /// <summary>Only this tenant (null: all).</summary>
    public string? TenantId { get; init; }
    /// <summary>Only this sandbox.</summary>
    public string? SandboxId { get; init; }
    /// <summary>Only this kind.</summary>
    public string? Kind { get; init; }
    /// <summary>From (inclusive).</summary>
    public DateTimeOffset? Since { get; init; }
    /// <summary>Until (exclusive).</summary>
    public DateTimeOffset? Until { get; init; }
    /// <summary>Only records after this sequence number (paging).</summary>
    public long AfterSeq { get; init; }
    /// <summary>At most this many.</summary>
    public int Limit { get; init; } = 1000;
}

/// <summary>The append-only audit chain.</summary>
public interface IAuditStore
{
    /// <summary>Appends records (already chained) in one transaction and moves the head to the last.</summary>
    Task AppendAsync(IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken);
    /// <summary>The head (last seq and hash), or null for an empty chain.</summary>
    Task<(long Seq, string Hash)?> HeadAsync(CancellationToken cancellationToken);
    /// <summary>Records matching a query, in chain order.</summary>
    Task<IReadOnlyList<AuditEntry>> QueryAsync(AuditQuery query, CancellationToken cancellationToken);
    /// <summary>Every record in chain order, for verification.</summary>
    IAsyncEnumerable<AuditEntry> ReadAllAsync(CancellationToken cancellationToken);
}

/// <summary>Usage of a tenant on a day, in billing units.</summary>
public sealed record UsageAmounts(double VcpuSeconds, double MemoryGiBSeconds, double DiskGiBHours, double SandboxSeconds);

/// <summary>Usage per tenant per UTC day.</summary>
public interface IUsageStore
{
    /// <summary>Adds amounts to a tenant's day.</summary>
    Task AddAsync(string tenantId, DateOnly day, UsageAmounts amounts, CancellationToken cancellationToken);
    /// <summary>Days of a tenant (all tenants when null) between two days, inclusive.</summary>
    Task<IReadOnlyList<(string TenantId, DateOnly Day, UsageAmounts Amounts)>> QueryAsync(string? tenantId, DateOnly from, DateOnly to, CancellationToken cancellationToken);
}
