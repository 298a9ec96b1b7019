using Moat.Client.Http;
using Moat.Contracts;

namespace Moat.Client;

public sealed partial class MoatClient
{
    /// <summary>
    /// Saves a sandbox's current files as a named snapshot: a template of the tenant that outlives
    /// the sandbox. Restore it with <see cref="SandboxCreateOptions.Template"/> set to its name.
    /// Processes and memory are not captured, nor /tmp.
    /// </summary>
    /// <param name="sandboxId">A running or paused container or gVisor sandbox.</param>
    /// <param name="name">The snapshot's (and template's) name.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The snapshot.</returns>
    /// <exception cref="MoatConflictException">The name is taken, or the sandbox is not running.</exception>
    public Task<SnapshotDto> SnapshotSandboxAsync(string sandboxId, string name, CancellationToken cancellationToken = default) =>
        SnapshotSandboxAsync(sandboxId, name, "filesystem", cancellationToken);

    /// <summary>
    /// Saves a sandbox as a named snapshot of the given kind: <c>filesystem</c> (its files) or
    /// <c>memory</c> (its running processes, memory and files, on tiers whose capabilities list it;
    /// a sandbox created from it resumes exactly where the source was, on the same tier).
    /// </summary>
    /// <param name="sandboxId">A running sandbox (a paused one too, for <c>filesystem</c>).</param>
    /// <param name="name">The snapshot's (and template's) name.</param>
    /// <param name="kind"><c>memory</c> or <c>filesystem</c>.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The snapshot.</returns>
    /// <exception cref="MoatConflictException">The name is taken, the sandbox is not running, or its tier cannot take this kind (<c>snapshot_kind_unsupported</c>).</exception>
    public Task<SnapshotDto> SnapshotSandboxAsync(string sandboxId, string name, string kind, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        var body = MoatTransport.Json(new CreateSnapshotRequest { Name = name, Kind = kind }, MoatJson.Default.CreateSnapshotRequest);
        return _transport.SendAsync(HttpMethod.Post, $"v1/sandboxes/{QueryString.Segment(sandboxId)}/snapshots", body, MoatJson.Default.SnapshotDto, bounded: true, cancellationToken);
    }

    /// <summary>Starts <paramref name="count"/> new sandboxes from a sandbox's current files, with its policy.</summary>
    /// <param name="sandboxId">The source: a running or paused container or gVisor sandbox (it keeps running).</param>
    /// <param name="count">How many (1-50).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The new sandboxes; disposing each kills it.</returns>
    public Task<IReadOnlyList<Sandbox>> ForkSandboxAsync(string sandboxId, int count = 1, CancellationToken cancellationToken = default) =>
        ForkSandboxAsync(sandboxId, count, "filesystem", cancellationToken);

    /// <summary>
    /// Starts <paramref name="count"/> new sandboxes from a sandbox's current state: its files
    /// (<c>filesystem</c>) or, with <c>memory</c>, its running processes too. Each fork has its own
    /// id, agent session and fresh kernel entropy.
    /// </summary>
    /// <param name="sandboxId">The source (it keeps running).</param>
    /// <param name="count">How many (1-50).</param>
    /// <param name="kind"><c>memory</c> or <c>filesystem</c>.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The new sandboxes; disposing each kills it.</returns>
    public async Task<IReadOnlyList<Sandbox>> ForkSandboxAsync(string sandboxId, int count, string kind, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        var body = MoatTransport.Json(new ForkRequest { Count = count, Kind = kind }, MoatJson.Default.ForkRequest);
        var forks = await _transport.SendAsync(HttpMethod.Post, $"v1/sandboxes/{QueryString.Segment(sandboxId)}/fork", body, MoatJson.Default.ForkResponse, bounded: true, cancellationToken).ConfigureAwait(false);
        return forks.Sandboxes.Select(info => new Sandbox(this, _transport, info)).ToList();
    }

    /// <summary>The tenant's snapshots.</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>Every snapshot, with its template.</returns>
    public async Task<IReadOnlyList<SnapshotDto>> ListSnapshotsAsync(CancellationToken cancellationToken = default) =>
        (await _transport.SendAsync(HttpMethod.Get, "v1/snapshots", null, MoatJson.Default.SnapshotListResponse, bounded: true, cancellationToken).ConfigureAwait(false)).Snapshots;

    /// <summary>Deletes a snapshot (refused while a sandbox restored from it lives).</summary>
    /// <param name="name">The snapshot's name.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once it is deleted.</returns>
    public Task DeleteSnapshotAsync(string name, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Delete, "v1/snapshots/" + NamePath(name), null, bounded: true, cancellationToken);
}
