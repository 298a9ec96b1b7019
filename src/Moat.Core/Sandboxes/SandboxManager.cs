using System.Collections.Concurrent;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Core.Runtimes;
using Moat.Core.State;
using Moat.Core.Templates;

namespace Moat.Core.Sandboxes;

/// <summary>
/// Owns every sandbox on this node: creates them through a tier's runtime, keeps the agent
/// connection of each, enforces lifetimes, and tears them down without leaving anything behind.
/// Callers always pass the tenant they act for; another tenant's sandbox does not exist for them.
/// </summary>
public sealed partial class SandboxManager : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, LiveSandbox> _live = new();
    private readonly ISandboxStore _store;
    private readonly ITemplateStore _templates;
    private readonly RuntimeRegistry _runtimes;
    private readonly SandboxManagerOptions _options;
    private readonly ILogger<SandboxManager> _logger;
    private readonly ILoggerFactory _loggerFactory;
    private readonly TimeProvider _time;
    private readonly SemaphoreSlim _createGate;
    private readonly Networking.INetworkController? _network;
    private readonly CancellationTokenSource _shutdown = new();
    private int _creating;
    private readonly ISandboxHook[] _hooks;

    /// <summary>Creates the manager; call <see cref="RecoverAsync"/> before serving.</summary>
    public SandboxManager(ISandboxStore store, ITemplateStore templates, RuntimeRegistry runtimes, IOptions<SandboxManagerOptions> options, ILoggerFactory loggerFactory, TimeProvider? time = null, Networking.INetworkController? network = null, IEnumerable<ISandboxHook>? hooks = null)
    {
        _hooks = hooks?.ToArray() ?? [];
        _network = network;
        if (network is not null && _hooks.Length > 0)
            network.EgressRecorded += OnEgressRecorded;
        _store = store;
        _templates = templates;
        _runtimes = runtimes;
        _options = options.Value;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<SandboxManager>();
        _time = time ?? TimeProvider.System;
        _createGate = new SemaphoreSlim(Math.Max(1, _options.MaxConcurrentCreates));
        Directory.CreateDirectory(SandboxesDirectory);
    }

    /// <summary>The options in force.</summary>
    public SandboxManagerOptions Options => _options;

    /// <summary>The tiers of this node.</summary>
    public RuntimeRegistry Runtimes => _runtimes;

    private string SandboxesDirectory => Path.Combine(_options.DataDirectory, "sandboxes");

    /// <summary>The state reason of a sandbox the memory limit ended.</summary>
    public const string OomReason = "oom";

    /// <summary>The state reason of a sandbox that died at its process limit (gVisor: the Sentry shares it).</summary>
    public const string PidsReason = "pids_limit";

    /// <summary>Sandboxes alive on this node now.</summary>
    public int LiveCount => _live.Count;

    /// <summary>Creates a sandbox and returns once its agent answers.</summary>
    public async Task<SandboxRecord> CreateAsync(SandboxSpec spec, string tenantId, CancellationToken cancellationToken)
    {
        _options.Limits.Validate(spec);
        RequireNetworkMode(spec.Network.Mode);
        using var admission = await AdmitAsync(spec, tenantId, cancellationToken).ConfigureAwait(false);
        var runtime = await _runtimes.ResolveAsync(spec.Tier, cancellationToken).ConfigureAwait(false);
        RequireTierNetwork(runtime, spec.Network.Mode);
        var template = await _templates.ResolveAsync(spec.Template, tenantId, cancellationToken).ConfigureAwait(false)
            ?? throw new MoatException(ErrorKind.NotFound, "template_not_found", $"template '{spec.Template}' does not exist");
        if (template.CheckpointTier is { } savedTier && savedTier != spec.Tier)
            throw new MoatException(ErrorKind.Conflict, "snapshot_tier_mismatch", $"'{spec.Template}' is a memory snapshot of a {savedTier.Name()} sandbox: it resumes only on that tier (ask for isolation \"{savedTier.Name()}\")");
        if (template.CheckpointTier is null && await TryClaimAsync(spec, template, tenantId, cancellationToken).ConfigureAwait(false) is { } claimed)
            return claimed;
        if (_live.Count + Volatile.Read(ref _creating) >= _options.MaxSandboxes)
            throw new MoatException(ErrorKind.Unavailable, "node_full", $"this node already runs {_live.Count} sandboxes (limit {_options.MaxSandboxes}); delete some or add capacity");

        Interlocked.Increment(ref _creating);
        try
        {
            await _createGate.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                // Waiting for the tier's admission is queueing, not a slow start: it happens before the create's deadline.
                using var bootSlot = await runtime.AdmitStartAsync(cancellationToken).ConfigureAwait(false);
                return await CreateCoreAsync(spec, tenantId, runtime, template, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                _createGate.Release();
            }
        }
        finally
        {
            Interlocked.Decrement(ref _creating);
        }
    }

    private async Task<SandboxRecord> CreateCoreAsync(SandboxSpec spec, string tenantId, ISandboxRuntime runtime, TemplateImage template, CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        var record = new SandboxRecord
        {
            Id = NewId(),
            TenantId = tenantId,
            Owner = _options.Owner,
            Spec = spec,
            State = SandboxState.Creating,
            CreatedAt = now,
            ExpiresAt = now + spec.Timeout,
        };
        // Record first, directory second: a directory without a record is then always stray.
        await _store.InsertAsync(record, cancellationToken).ConfigureAwait(false);
        var directory = Path.Combine(SandboxesDirectory, record.Id);
        Directory.CreateDirectory(directory);
        var live = new LiveSandbox(record, runtime, template);
        _live[record.Id] = live;
        LogCreating(_logger, record.Id, spec.Tier.Name(), spec.Template, tenantId);

        // Creation is not abandoned half-way when the caller goes away: a half-made sandbox
        // would leak. It finishes (or fails and cleans up) under the server's own token.
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(_shutdown.Token);
        linked.CancelAfter(TimeSpan.FromSeconds(_options.AgentStartTimeoutSeconds + 30));
        try
        {
            // The network first: the runtime starts the sandbox inside the namespace it made.
            var network = _network is null ? null : await _network.AttachAsync(record.Id, spec.Network, linked.Token).ConfigureAwait(false);
            var tap = network is not null && runtime.NeedsTapDevice ? await _network!.CreateTapAsync(record.Id, linked.Token).ConfigureAwait(false) : null;
            var instance = await runtime.StartAsync(new SandboxLaunch
            {
                Id = record.Id,
                Directory = directory,
                Template = template,
                Resources = spec.Resources,
                Network = network,
                Tap = tap,
                RestoreFrom = template.CheckpointTier is null ? null : CheckpointDirectory(template.Id),
            }, linked.Token).ConfigureAwait(false);
            live.Record = record with { Instance = instance };
            await _store.UpdateAsync(live.Record, linked.Token).ConfigureAwait(false);

            using var agentDeadline = CancellationTokenSource.CreateLinkedTokenSource(linked.Token);
            agentDeadline.CancelAfter(TimeSpan.FromSeconds(_options.AgentStartTimeoutSeconds));
            AgentClient agent;
            try
            {
                agent = await AgentClient.ConnectAsync(instance.AgentSocket, new AgentClientOptions(), _loggerFactory.CreateLogger<AgentClient>(), null, instance.AgentPid, agentDeadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (agentDeadline.IsCancellationRequested && !_shutdown.IsCancellationRequested)
            {
                throw new MoatException(ErrorKind.Timeout, "sandbox_start_timeout", $"the agent of sandbox {record.Id} did not answer within {_options.AgentStartTimeoutSeconds} s");
            }
            var started = _time.GetUtcNow();
            live.Record = live.Record with
            {
                State = SandboxState.Running,
                StartedAt = started,
                // The lifetime counts from when the sandbox became usable.
                ExpiresAt = started + spec.Timeout,
            };
            live.Attach(agent);
            await _store.UpdateAsync(live.Record, linked.Token).ConfigureAwait(false);
            Watch(live, agent);
            if (template.CheckpointTier is not null)
                await ReseedAsync(live, agent, linked.Token).ConfigureAwait(false);
            LogCreated(_logger, record.Id, (started - now).TotalMilliseconds);
            Notify(h => h.OnLifecycle(live.Record, SandboxEvents.Created, null));
            return live.Record;
        }
        catch (Exception ex)
        {
            string reason = ex is MoatException me ? $"{me.Code}: {me.Message}" : $"create_failed: {ex.Message}";
            LogCreateFailed(_logger, record.Id, ex);
            await EndAsync(live, SandboxState.Failed, reason, CancellationToken.None).ConfigureAwait(false);
            if (ex is MoatException)
                throw;
            throw new MoatException(ErrorKind.Internal, "sandbox_create_failed", $"could not create the sandbox: {ex.Message}", ex);
        }
    }

    /// <summary>A sandbox of this tenant (alive or ended), or a not-found error.</summary>
    public async Task<SandboxRecord> GetAsync(string id, string tenantId, CancellationToken cancellationToken)
    {
        if (_live.TryGetValue(id, out var live) && live.Record.TenantId == tenantId)
            return live.Record;
        if (!ValidId(id))
            throw MoatException.SandboxNotFound(id);
        var record = await _store.GetAsync(id, cancellationToken).ConfigureAwait(false);
        if (record is null || record.TenantId != tenantId)
            throw MoatException.SandboxNotFound(id);
        return record;
    }

    /// <summary>Sandboxes of a tenant.</summary>
    public async Task<IReadOnlyList<SandboxRecord>> ListAsync(SandboxQuery query, CancellationToken cancellationToken)
    {
        var stored = await _store.ListAsync(query, cancellationToken).ConfigureAwait(false);
        // The live copy is fresher than the stored one.
        return stored.Select(r => _live.TryGetValue(r.Id, out var live) ? live.Record : r)
            .Where(r => query.States.Count == 0 || query.States.Contains(r.State))
            .ToList();
    }

    /// <summary>Ends a sandbox. Idempotent: deleting an ended sandbox is not an error.</summary>
    public async Task DeleteAsync(string id, string tenantId, CancellationToken cancellationToken)
    {
        var record = await GetAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        if (_live.TryGetValue(record.Id, out var live))
            await EndAsync(live, SandboxState.Stopped, "deleted", cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sets the sandbox's lifetime to end <paramref name="timeout"/> from now.</summary>
    public async Task<SandboxRecord> SetTimeoutAsync(string id, string tenantId, TimeSpan timeout, CancellationToken cancellationToken, TimeoutAction? onTimeout = null)
    {
        // A paused sandbox takes a new lifetime too: it counts from its resume.
        var live = await LiveOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        if (timeout <= TimeSpan.Zero || timeout > TimeSpan.FromDays(3650))
            throw MoatException.Invalid("invalid_timeout", $"timeoutSeconds must be positive, got {timeout.TotalSeconds}");
        if (_options.Limits.MaxTimeout is { } max && timeout > max)
            throw new MoatException(ErrorKind.QuotaExceeded, "timeout_over_limit", $"timeoutSeconds {timeout.TotalSeconds} exceeds the limit of {max.TotalSeconds}");
        await live.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (live.Record.State.IsTerminal() || live.Record.State == SandboxState.Stopping)
                throw NotRunning(live.Record);
            if (live.Record.State is not (SandboxState.Running or SandboxState.Paused))
                throw NotRunning(live.Record);
            foreach (var hook in _hooks)
                hook.AdmitTimeout(live.Record, _time.GetUtcNow() + timeout);
            var spec = onTimeout is { } action ? live.Record.Spec with { OnTimeout = action } : live.Record.Spec;
            live.Record = live.Record.State == SandboxState.Paused
                ? live.Record with { Spec = spec, RemainingWhenPaused = timeout, ExpiresAt = _time.GetUtcNow() + timeout }
                : live.Record with { Spec = spec, ExpiresAt = _time.GetUtcNow() + timeout };
            await _store.UpdateAsync(live.Record, cancellationToken).ConfigureAwait(false);
            return live.Record;
        }
        finally
        {
            live.Gate.Release();
        }
    }

    /// <summary>
    /// Resource use of a running sandbox, measured on the host; for a sandbox with a kernel of its
    /// own (a microVM) completed with what its agent sees inside (memory, processes, OOM kills).
    /// </summary>
    public async Task<HostUsage?> GetUsageAsync(string id, string tenantId, CancellationToken cancellationToken)
    {
        var live = await RunningAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        if (live.Record.Instance is not { } instance || live.Runtime is not { } runtime)
            return null;
        var host = await runtime.ReadUsageAsync(instance, cancellationToken).ConfigureAwait(false);
        // A paused guest cannot answer; the host's readings (the VMM's, frozen) are all there is.
        if (host is null || !runtime.UsageNeedsGuest || live.Record.State != SandboxState.Running || live.Agent is not { } agent)
            return host;
        try
        {
            using var bounded = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            bounded.CancelAfter(TimeSpan.FromSeconds(10));
            return runtime.CombineUsage(instance, host, await agent.UsageAsync(bounded.Token).ConfigureAwait(false));
        }
        catch (Exception ex) when (ex is MoatException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            // The guest's own figures are unavailable (its agent is busy or gone): the host's readings stand.
            LogGuestUsageFailed(_logger, id, ex.Message);
            return host;
        }
    }

    /// <summary>Ends every sandbox whose lifetime is over. Called by the reaper.</summary>
    public async Task ReapExpiredAsync(CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        var expired = _live.Values.Where(l => l.Record.State == SandboxState.Running && l.Record.ExpiresAt <= now).ToList();
        await Parallel.ForEachAsync(expired, new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = cancellationToken }, async (live, ct) =>
        {
            if (live.Record.Spec.OnTimeout == TimeoutAction.Pause && await PauseForTimeoutAsync(live, ct).ConfigureAwait(false))
                return;
            LogExpired(_logger, live.Record.Id);
            await EndAsync(live, SandboxState.Stopped, "timeout", ct).ConfigureAwait(false);
        }).ConfigureAwait(false);
    }

    /// <summary>
    /// After a restart: re-adopt every sandbox the store says is alive and whose agent still
    /// answers; end and clean every other one. Nothing is left half-alive.
    /// </summary>
    public async Task RecoverAsync(CancellationToken cancellationToken)
    {
        var records = (await _store.ListAsync(new SandboxQuery { States = [SandboxState.Creating, SandboxState.Running, SandboxState.Paused, SandboxState.Stopping], Limit = int.MaxValue }, cancellationToken).ConfigureAwait(false))
            .Where(r => r.Owner == _options.Owner || !OwnerAlive(r.Owner))
            .ToList();
        await Parallel.ForEachAsync(records, new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = cancellationToken }, async (record, ct) =>
        {
            await RecoverOneAsync(record, ct).ConfigureAwait(false);
        }).ConfigureAwait(false);
        await CleanStrayDirectoriesAsync(cancellationToken).ConfigureAwait(false);
        if (_network is not null)
            await _network.PruneAsync(_live.Keys.ToHashSet(), cancellationToken).ConfigureAwait(false);
        RebuildPools();
    }

    private async Task RecoverOneAsync(SandboxRecord record, CancellationToken cancellationToken)
    {
        ISandboxRuntime? runtime = _runtimes.Find(record.Spec.Tier);
        var template = await _templates.ResolveAsync(record.Spec.Template, record.TenantId, cancellationToken).ConfigureAwait(false);
        var live = new LiveSandbox(record, runtime, template);
        _live[record.Id] = live;
        string reason = "server_restart: the sandbox was not running";
        if (record.State is SandboxState.Running or SandboxState.Paused && record.Instance is { } instance && runtime is not null)
        {
            try
            {
                var status = await runtime.InspectAsync(instance, cancellationToken).ConfigureAwait(false);
                if (status == InstanceStatus.Paused && record.State == SandboxState.Paused)
                {
                    // Frozen: its agent cannot answer until it is resumed, which connects to it.
                    await RestoreNetworkAsync(record, cancellationToken).ConfigureAwait(false);
                    LogReadopted(_logger, record.Id);
                    return;
                }
                if (status == InstanceStatus.Running && record.State == SandboxState.Running)
                {
                    using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                    deadline.CancelAfter(TimeSpan.FromSeconds(10));
                    var agent = await AgentClient.ConnectAsync(instance.AgentSocket, new AgentClientOptions(), _loggerFactory.CreateLogger<AgentClient>(), null, instance.AgentPid, deadline.Token).ConfigureAwait(false);
                    live.Attach(agent);
                    Watch(live, agent);
                    await RestoreNetworkAsync(record, cancellationToken).ConfigureAwait(false);
                    LogReadopted(_logger, record.Id);
                    return;
                }
                reason = $"server_restart: the sandbox was {status.ToString().ToLowerInvariant()}";
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                reason = $"server_restart: its agent could not be reached again ({ex.Message})";
            }
        }
        await EndAsync(live, SandboxState.Failed, reason, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Whether the process named by an owner string still runs (a "run:PID:START" owner).</summary>
    public static bool OwnerAlive(string owner)
    {
        var parts = owner.Split(':');
        if (parts.Length != 3 || parts[0] != "run" || !int.TryParse(parts[1], out int pid))
            return owner == "serve"; // the server's records belong to whichever server runs
        return ProcessStartTime(pid) is { } start && start.ToString() == parts[2];
    }

    /// <summary>The owner string of this process, for one-shot managers.</summary>
    public static string RunOwner() => $"run:{Environment.ProcessId}:{ProcessStartTime(Environment.ProcessId)}";

    private static long? ProcessStartTime(int pid)
    {
        try
        {
            // Field 22 of /proc/PID/stat: start time in clock ticks since boot; it tells a pid reused.
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[19]);
        }
        catch (Exception ex) when (ex is IOException or FormatException or IndexOutOfRangeException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private async Task CleanStrayDirectoriesAsync(CancellationToken cancellationToken)
    {
        foreach (var dir in Directory.EnumerateDirectories(SandboxesDirectory))
        {
            var id = Path.GetFileName(dir);
            if (_live.ContainsKey(id))
                continue;
            var record = ValidId(id) ? await _store.GetAsync(id, cancellationToken).ConfigureAwait(false) : null;
            // Another live process (a one-shot run, or the server) owns it.
            if (record is not null && !record.State.IsTerminal() && record.Owner != _options.Owner && OwnerAlive(record.Owner))
                continue;
            // Left from a crash between mkdir and insert, or a teardown that did not finish.
            // Only a runtime can know what may still be mounted inside; ask each.
            LogStray(_logger, id);
            foreach (var runtime in _runtimes.All)
            {
                try
                {
                    await runtime.DestroyAsync(new RuntimeInstance { Tier = runtime.Tier, ContainerId = id, Directory = dir, AgentSocket = "" }, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogCleanupFailed(_logger, id, ex);
                }
            }
            if (_network is not null && ValidId(id))
            {
                try
                {
                    await _network.DetachAsync(id, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogCleanupFailed(_logger, id, ex);
                }
            }
            TryDeleteDirectory(dir);
        }
    }

    private void Watch(LiveSandbox live, AgentClient agent)
    {
        _ = agent.Completion.ContinueWith(async t =>
        {
            if (live.Agent != agent || live.Record.State != SandboxState.Running)
                return;
            string why = t.Result?.Message ?? "the agent connection closed";
            string reason = $"agent_lost: {why}";
            if (live.Record.Instance is { } instance)
            {
                try
                {
                    var status = await live.Runtime!.InspectAsync(instance, CancellationToken.None).ConfigureAwait(false);
                    if (status != InstanceStatus.Running)
                        reason = $"agent_exited: the sandbox's init is gone ({why})";
                    // Where the kernel's OOM killer took the sandbox itself (gVisor's Sentry is one
                    // host process), the memory limit is the reason, not the agent.
                    var usage = await live.Runtime.ReadUsageAsync(instance, CancellationToken.None).ConfigureAwait(false);
                    if (usage?.OomKills > 0)
                        reason = $"{OomReason}: the sandbox exceeded its memory limit of {live.Record.Spec.Resources.MemoryMiB} MiB";
                    else if (usage?.PidsLimitHits > 0)
                        reason = $"{PidsReason}: the sandbox hit its limit of {live.Record.Spec.Resources.Pids} processes";
                }
                catch (Exception ex)
                {
                    LogCleanupFailed(_logger, live.Record.Id, ex);
                }
            }
            LogAgentLost(_logger, live.Record.Id, reason);
            await EndAsync(live, SandboxState.Failed, reason, CancellationToken.None).ConfigureAwait(false);
        }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default).Unwrap();
    }

    /// <summary>The one teardown path: closes the agent, destroys the instance, records the end.</summary>
    private async Task EndAsync(LiveSandbox live, SandboxState final, string reason, CancellationToken cancellationToken)
    {
        await live.Gate.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            if (live.Ended)
                return;
            var lastUsage = await LastUsageAsync(live).ConfigureAwait(false);
            live.Record = live.Record with { State = SandboxState.Stopping };
            var agent = live.Detach();
            if (agent is not null)
                await agent.DisposeAsync().ConfigureAwait(false);
            var directory = Path.Combine(SandboxesDirectory, live.Record.Id);
            var instance = live.Record.Instance ?? (live.Runtime is { } rt
                ? new RuntimeInstance { Tier = rt.Tier, ContainerId = live.Record.Id, Directory = directory, AgentSocket = "" }
                : null);
            if (instance is not null && live.Runtime is not null)
            {
                try
                {
                    await live.Runtime.DestroyAsync(instance, CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    LogCleanupFailed(_logger, live.Record.Id, ex);
                    reason += $"; cleanup failed: {ex.Message}";
                    final = SandboxState.Failed;
                }
            }
            if (_network is not null)
            {
                // After the sandbox's processes are gone: its namespace, link, rules and address.
                try
                {
                    await _network.DetachAsync(live.Record.Id, CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    LogCleanupFailed(_logger, live.Record.Id, ex);
                    reason += $"; network cleanup failed: {ex.Message}";
                    final = SandboxState.Failed;
                }
            }
            TryDeleteDirectory(directory);
            live.Record = live.Record with { State = final, StateReason = reason, EndedAt = _time.GetUtcNow() };
            live.Ended = true;
            _live.TryRemove(live.Record.Id, out _);
            try
            {
                await _store.UpdateAsync(live.Record, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                LogCleanupFailed(_logger, live.Record.Id, ex);
            }
            LogEnded(_logger, live.Record.Id, final.Name(), reason);
            Notify(h => h.OnLifecycle(live.Record, SandboxEvents.Ended, lastUsage));
        }
        finally
        {
            live.Gate.Release();
        }
    }

    private void TryDeleteDirectory(string directory)
    {
        try
        {
            // Never recurse into a mount: whatever is still mounted there is not ours to delete.
            foreach (var mount in Host.Linux.MountsUnder(directory))
                Host.Linux.Unmount(mount);
            if (Host.Linux.MountsUnder(directory).Count > 0)
            {
                LogCleanupFailed(_logger, Path.GetFileName(directory), new IOException($"{directory} still has mounts; leaving it"));
                return;
            }
            if (Directory.Exists(directory))
                Directory.Delete(directory, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            LogCleanupFailed(_logger, Path.GetFileName(directory), ex);
        }
    }

    private async Task<LiveSandbox> RunningAsync(string id, string tenantId, CancellationToken cancellationToken)
    {
        if (_live.TryGetValue(id, out var live) && live.Record.TenantId == tenantId)
        {
            if (live.Record.State != SandboxState.Running)
                throw NotRunning(live.Record);
            return live;
        }
        // Not live: either not ours (404) or ended (409).
        var record = await GetAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        throw NotRunning(record);
    }

    private static MoatException NotRunning(SandboxRecord record) => new(ErrorKind.Conflict, "sandbox_not_running",
        $"sandbox {record.Id} is {record.State.Name()}" + (record.StateReason is { } r ? $" ({r})" : ""));

    /// <summary>Whether a string can be a sandbox id (anything else is not looked up).</summary>
    public static bool ValidId(string id) => id.Length == 20 && id.StartsWith("sb", StringComparison.Ordinal) && id.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c));

    private static string NewId()
    {
        const string alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
        Span<char> id = stackalloc char[20];
        id[0] = 's';
        id[1] = 'b';
        for (int i = 2; i < id.Length; i++)
            id[i] = alphabet[RandomNumberGenerator.GetInt32(alphabet.Length)];
        return new string(id);
    }

    /// <summary>Ends every sandbox (server shutdown with cleanup) or just lets go of them (restart: they are re-adopted).</summary>
    public async Task ShutdownAsync(bool destroySandboxes, CancellationToken cancellationToken)
    {
        _shutdown.Cancel();
        if (destroySandboxes)
        {
            await Parallel.ForEachAsync(_live.Values.ToList(), new ParallelOptions { MaxDegreeOfParallelism = 16, CancellationToken = cancellationToken }, async (live, ct) =>
                await EndAsync(live, SandboxState.Stopped, "server_shutdown", ct).ConfigureAwait(false)).ConfigureAwait(false);
        }
        else
        {
            foreach (var live in _live.Values)
            {
                var agent = live.Detach();
                if (agent is not null)
                    await agent.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (!_shutdown.IsCancellationRequested)
            await ShutdownAsync(destroySandboxes: false, CancellationToken.None).ConfigureAwait(false);
        _createGate.Dispose();
        _shutdown.Dispose();
    }
}

/// <summary>A sandbox alive on this node: its record, runtime, and agent connection.</summary>
internal sealed class LiveSandbox(SandboxRecord record, ISandboxRuntime? runtime, TemplateImage? template)
{
    private AgentClient? _agent;

    public SandboxRecord Record { get; set; } = record;
    public ISandboxRuntime? Runtime { get; } = runtime;
    public TemplateImage? Template { get; } = template;
    public SemaphoreSlim Gate { get; } = new(1, 1);
    public bool Ended { get; set; }

    /// <summary>Command lines of background commands started through the host, by pid (for the history of a later attach).</summary>
    public ConcurrentDictionary<int, IReadOnlyList<string>> BackgroundArgv { get; } = new();

    public AgentClient? Agent => Volatile.Read(ref _agent);

    public void Attach(AgentClient agent) => Volatile.Write(ref _agent, agent);

    public AgentClient? Detach() => Interlocked.Exchange(ref _agent, null);
}
