using Moat.Core.Sandboxes;

namespace Moat.Core.State;

/// <summary>Durable state of sandboxes. SQLite on one node, PostgreSQL for several.</summary>
public interface ISandboxStore
{
    /// <summary>Adds a new sandbox.</summary>
    Task InsertAsync(SandboxRecord record, CancellationToken cancellationToken);
    /// <summary>Replaces a sandbox's record.</summary>
    Task UpdateAsync(SandboxRecord record, CancellationToken cancellationToken);
    /// <summary>One sandbox, or null.</summary>
    Task<SandboxRecord?> GetAsync(string id, CancellationToken cancellationToken);
    /// <summary>Sandboxes matching a query, newest first.</summary>
    Task<IReadOnlyList<SandboxRecord>> ListAsync(SandboxQuery query, CancellationToken cancellationToken);
}

/// <summary>A filter over sandboxes.</summary>
public sealed record SandboxQuery
{
    /// <summary>Only this tenant's (null: all — for the server's own housekeeping).</summary>
    public string? TenantId { get; init; }
    /// <summary>Only these states (empty: any).</summary>
    public IReadOnlyCollection<SandboxState> States { get; init; } = [];
    /// <summary>Only sandboxes whose metadata has all of these.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; init; } = new Dictionary<string, string>();
    /// <summary>At most this many.</summary>
    public int Limit { get; init; } = 1000;
}
