using Moat.Core.Networking;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Prometheus;

namespace Moat.Server.Metrics;

/// <summary>
/// The server's Prometheus metrics, in a registry of its own (so nothing process-global leaks in
/// and two servers in one process do not share counters): sandboxes by state and tier (read from
/// the store at each scrape), create and exec latency, API errors by code, sandbox ends, warm
/// pools (sizes, hits, misses; read from the manager at each scrape), egress bytes and attempts,
/// agent failures.
/// </summary>
public sealed class MoatMetrics : ISandboxHook
{
    private static readonly double[] LatencyBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

    private readonly Gauge _sandboxes;
    private readonly Histogram _createSeconds;
    private readonly Histogram _execSeconds;
    private readonly Counter _errors;
    private readonly Counter _requests;
    private readonly Counter _ended;
    private readonly Gauge _poolReady;
    private readonly Gauge _poolTarget;
    private readonly Counter _poolHits;
    private readonly Counter _poolMisses;
    private readonly Counter _egressBytes;
    private readonly Counter _egressAttempts;
    private readonly Counter _agentFailures;

    /// <summary>The registry /metrics exports.</summary>
    public CollectorRegistry Registry { get; } = Prometheus.Metrics.NewCustomRegistry();

    /// <summary>Creates the metrics; the sandbox gauge is refreshed from <paramref name="store"/> before each scrape.</summary>
    public MoatMetrics(ISandboxStore store, IServiceProvider services)
    {
        var factory = Prometheus.Metrics.WithCustomRegistry(Registry);
        _sandboxes = factory.CreateGauge("moat_sandboxes", "Sandboxes on this node by state and isolation tier (live states only).", ["state", "tier"]);
        _createSeconds = factory.CreateHistogram("moat_sandbox_create_seconds", "Time from a create request to a running sandbox whose agent answers.", new HistogramConfiguration { LabelNames = ["tier"], Buckets = LatencyBuckets });
        _execSeconds = factory.CreateHistogram("moat_exec_seconds", "Duration of commands run in sandboxes, start to exit.", new HistogramConfiguration { LabelNames = ["tier"], Buckets = LatencyBuckets });
        _errors = factory.CreateCounter("moat_api_errors_total", "API error responses by error code and HTTP status.", ["code", "status"]);
        _requests = factory.CreateCounter("moat_api_requests_total", "API requests by method and status class.", ["method", "status"]);
        _ended = factory.CreateCounter("moat_sandboxes_ended_total", "Sandboxes that ended, by final state and tier (failed includes agents that died).", ["state", "tier"]);
        _poolReady = factory.CreateGauge("moat_pool_ready", "Ready sandboxes in each warm pool.", ["template", "tier"]);
        _poolTarget = factory.CreateGauge("moat_pool_target", "Configured size of each warm pool.", ["template", "tier"]);
        _poolHits = factory.CreateCounter("moat_pool_hits_total", "Creates served from a warm pool.", ["template", "tier"]);
        _poolMisses = factory.CreateCounter("moat_pool_misses_total", "Creates of a pool's shape that found it empty.", ["template", "tier"]);
        _egressBytes = factory.CreateCounter("moat_egress_bytes_total", "Bytes relayed by the egress proxy (out: sandbox to destination; in: back), counted as connections end.", ["direction"]);
        _egressAttempts = factory.CreateCounter("moat_egress_attempts_total", "Connection attempts and DNS questions of sandboxes by protocol and verdict.", ["protocol", "verdict"]);
        _agentFailures = factory.CreateCounter("moat_agent_failures_total", "Sandboxes that failed because their agent was lost, exited or never answered, by tier and reason.", ["tier", "reason"]);
        _egressBytes.WithLabels("out");
        _egressBytes.WithLabels("in");
        Registry.AddBeforeCollectCallback(() =>
        {
            if (services.GetService(typeof(SandboxManager)) is not SandboxManager manager)
                return;
            foreach (var pool in manager.PoolStatuses())
            {
                _poolReady.WithLabels(pool.Template, pool.Tier).Set(pool.Ready);
                _poolTarget.WithLabels(pool.Template, pool.Tier).Set(pool.Target);
                _poolHits.WithLabels(pool.Template, pool.Tier).IncTo(pool.Hits);
                _poolMisses.WithLabels(pool.Template, pool.Tier).IncTo(pool.Misses);
            }
        });
        Registry.AddBeforeCollectCallback(async cancellationToken =>
        {
            var live = await store.ListAsync(new SandboxQuery { States = SandboxStates.Alive, Limit = 1_000_000 }, cancellationToken).ConfigureAwait(false);
            foreach (var state in SandboxStates.Alive)
            {
                foreach (var tier in Enum.GetValues<IsolationTier>())
                    _sandboxes.WithLabels(state.Name(), tier.Name()).Set(live.Count(r => r.State == state && r.Spec.Tier == tier));
            }
        });
    }

    /// <summary>Counts an API response.</summary>
    public void Request(string method, int status, string? errorCode)
    {
        _requests.WithLabels(method, $"{status / 100}xx").Inc();
        if (status >= 400)
            _errors.WithLabels(errorCode ?? "none", status.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();
    }

    /// <inheritdoc />
    public void OnLifecycle(SandboxRecord record, string kind, HostUsage? usage)
    {
        var tier = record.Spec.Tier.Name();
        if (kind == SandboxEvents.Created && record.StartedAt is { } started)
            _createSeconds.WithLabels(tier).Observe(Math.Max(0, (started - record.CreatedAt).TotalSeconds));
        else if (kind == SandboxEvents.Ended)
        {
            _ended.WithLabels(record.State.Name(), tier).Inc();
            if (record.State == SandboxState.Failed && AgentFailure(record.StateReason) is { } reason)
                _agentFailures.WithLabels(tier, reason).Inc();
        }
    }

    /// <summary>The agent-related part of a failed sandbox's reason (its code before the colon), or null.</summary>
    private static string? AgentFailure(string? reason)
    {
        var code = reason?.Split(':', 2)[0];
        return code is "agent_lost" or "agent_exited" or "sandbox_start_timeout" or "agent_unavailable" ? code : null;
    }

    /// <inheritdoc />
    public void OnEgress(SandboxRecord record, EgressEvent attempt)
    {
        _egressAttempts.WithLabels(attempt.Protocol, attempt.Verdict).Inc();
        if (attempt.BytesOut > 0)
            _egressBytes.WithLabels("out").Inc(attempt.BytesOut);
        if (attempt.BytesIn > 0)
            _egressBytes.WithLabels("in").Inc(attempt.BytesIn);
    }

    /// <inheritdoc />
    public void OnCommand(SandboxRecord record, CommandAuditInfo command) =>
        _execSeconds.WithLabels(record.Spec.Tier.Name()).Observe(command.Duration.TotalSeconds);
}
