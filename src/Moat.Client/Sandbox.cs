using Moat.Client.Http;
using Moat.Contracts;

namespace Moat.Client;

/// <summary>
/// A live sandbox: run commands in it (<see cref="Commands"/>), move files (<see cref="Files"/>),
/// extend or end its life. Disposing it kills it, unless <see cref="KillOnDispose"/> is cleared:
/// <code>
/// await using var sandbox = await client.CreateSandboxAsync(new() { Template = "base" });
/// var result = await sandbox.Commands.RunAsync("echo hi");
/// </code>
/// </summary>
public sealed class Sandbox : IAsyncDisposable
{
    private static readonly TimeSpan DisposeKillTimeout = TimeSpan.FromSeconds(30);
    private readonly MoatClient _client;
    private int _disposed;

    internal Sandbox(MoatClient client, MoatTransport transport, SandboxDto info)
    {
        _client = client;
        Info = info;
        Id = info.Id;
        Commands = new SandboxCommands(transport, info.Id);
        Files = new SandboxFiles(transport, info.Id);
    }

    /// <summary>The sandbox's id, e.g. <c>sb3k9x...</c>.</summary>
    public string Id { get; }

    /// <summary>What the server last said about the sandbox (refresh with <see cref="GetInfoAsync"/>).</summary>
    public SandboxDto Info { get; private set; }

    /// <summary>Commands: run and stream.</summary>
    public SandboxCommands Commands { get; }

    /// <summary>Files: read, write, list, remove.</summary>
    public SandboxFiles Files { get; }

    /// <summary>Whether <see cref="DisposeAsync"/> kills the sandbox (default true). Clear it to leave the sandbox running for later <see cref="MoatClient.ConnectAsync"/>.</summary>
    public bool KillOnDispose { get; set; } = true;

    /// <summary>Fetches the sandbox's current state, policy and resource use.</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The sandbox as the server sees it now; also stored in <see cref="Info"/>.</returns>
    public async Task<SandboxDto> GetInfoAsync(CancellationToken cancellationToken = default)
    {
        Info = await _client.GetSandboxAsync(Id, cancellationToken).ConfigureAwait(false);
        return Info;
    }

    /// <summary>Sets the sandbox to end <paramref name="timeout"/> from now (longer or shorter than before).</summary>
    /// <param name="timeout">The new lifetime, counted from now (whole seconds).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The sandbox with its new <see cref="SandboxDto.ExpiresAt"/>.</returns>
    /// <exception cref="MoatConflictException">The sandbox is no longer running.</exception>
    public async Task<SandboxDto> SetTimeoutAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        Info = await _client.SetSandboxTimeoutAsync(Id, timeout, cancellationToken).ConfigureAwait(false);
        return Info;
    }

    /// <summary>Saves the sandbox's current files as a named snapshot (see <see cref="MoatClient.SnapshotSandboxAsync(string, string, CancellationToken)"/>).</summary>
    /// <param name="name">The snapshot's name.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The snapshot.</returns>
    public Task<SnapshotDto> SnapshotAsync(string name, CancellationToken cancellationToken = default) => _client.SnapshotSandboxAsync(Id, name, cancellationToken);

    /// <summary>Starts <paramref name="count"/> sandboxes from this one's current files (see <see cref="MoatClient.ForkSandboxAsync(string, int, CancellationToken)"/>).</summary>
    /// <param name="count">How many (1-50).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The new sandboxes.</returns>
    public Task<IReadOnlyList<Sandbox>> ForkAsync(int count = 1, CancellationToken cancellationToken = default) => _client.ForkSandboxAsync(Id, count, cancellationToken);

    /// <summary>Saves the sandbox as a named snapshot of a kind, <c>memory</c> or <c>filesystem</c> (see <see cref="MoatClient.SnapshotSandboxAsync(string, string, string, CancellationToken)"/>).</summary>
    /// <param name="name">The snapshot's name.</param>
    /// <param name="kind"><c>memory</c> or <c>filesystem</c>.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The snapshot.</returns>
    public Task<SnapshotDto> SnapshotAsync(string name, string kind, CancellationToken cancellationToken = default) => _client.SnapshotSandboxAsync(Id, name, kind, cancellationToken);

    /// <summary>Starts <paramref name="count"/> sandboxes from this one's current state, <c>memory</c> or <c>filesystem</c> (see <see cref="MoatClient.ForkSandboxAsync(string, int, string, CancellationToken)"/>).</summary>
    /// <param name="count">How many (1-50).</param>
    /// <param name="kind"><c>memory</c> or <c>filesystem</c>.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The new sandboxes.</returns>
    public Task<IReadOnlyList<Sandbox>> ForkAsync(int count, string kind, CancellationToken cancellationToken = default) => _client.ForkSandboxAsync(Id, count, kind, cancellationToken);

    /// <summary>Ends the sandbox now. Killing one that already ended is not an error.</summary>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once the sandbox is gone.</returns>
    public Task KillAsync(CancellationToken cancellationToken = default) => _client.KillSandboxAsync(Id, cancellationToken);

    /// <summary>This sandbox's resource series (CPU %, memory, disk, network).</summary>
    public Task<SandboxMetricsResponse> GetMetricsAsync(DateTimeOffset? since = null, CancellationToken cancellationToken = default) => _client.GetSandboxMetricsAsync(Id, since, cancellationToken);

    /// <summary>This sandbox's command output history after sequence number <paramref name="after"/>.</summary>
    public Task<SandboxLogsResponse> GetLogsAsync(long after = 0, int? limit = null, CancellationToken cancellationToken = default) => _client.GetSandboxLogsAsync(Id, after, limit, cancellationToken);

    /// <summary>
    /// Kills the sandbox when <see cref="KillOnDispose"/> is set, ignoring that it may already be gone
    /// (404, 409). Other failures (the server unreachable) are thrown: the sandbox then lives until its timeout.
    /// </summary>
    /// <returns>A task that completes once the sandbox is gone.</returns>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0 || !KillOnDispose)
            return;
        using var timeout = new CancellationTokenSource(DisposeKillTimeout);
        try
        {
            await KillAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (MoatApiException ex) when (ex is MoatNotFoundException or MoatConflictException)
        {
            // Already gone: what disposal wanted.
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"sandbox {Id} ({Info.State})";
}
