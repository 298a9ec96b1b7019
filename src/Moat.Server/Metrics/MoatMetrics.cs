using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Prometheus;

namespace Moat.Server.Metrics;

/// <summary>
/// The server's Prometheus metrics, in a registry of its own (so nothing process-global leaks in
/// and two servers in one process do not share counters): sandboxes by state and tier (read from
/// the store at each scrape), create and exec latency, API errors by code, sandbox ends.
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

    /// <summary>The registry /metrics exports.</summary>
    public CollectorRegistry Registry { get; } = Prometheus.Metrics.NewCustomRegistry();

    /// <summary>Creates the metrics; the sandbox gauge is refreshed from <paramref name="store"/> before each scrape.</summary>
    public MoatMetrics(ISandboxStore store)
    {
        var factory = Prometheus.Metrics.WithCustomRegistry(Registry);
        _sandboxes = factory.CreateGauge("moat_sandboxes", "Sandboxes on this node by state and isolation tier (live states only).", ["state", "tier"]);
        _createSeconds = factory.CreateHistogram("moat_sandbox_create_seconds", "Time from a create request to a running sandbox whose agent answers.", new HistogramConfiguration { LabelNames = ["tier"], Buckets = LatencyBuckets });
        _execSeconds = factory.CreateHistogram("moat_exec_seconds", "Duration of commands run in sandboxes, start to exit.", new HistogramConfiguration { LabelNames = ["tier"], Buckets = LatencyBuckets });
        _errors = factory.CreateCounter("moat_api_errors_total", "API error responses by error code and HTTP status.", ["code", "status"]);
        _requests = factory.CreateCounter("moat_api_requests_total", "API requests by method and status class.", ["method", "status"]);
        _ended = factory.CreateCounter("moat_sandboxes_ended_total", "Sandboxes that ended, by final state and tier (failed includes agents that died).", ["state", "tier"]);
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
            _ended.WithLabels(record.State.Name(), tier).Inc();
    }

    /// <inheritdoc />
    public void OnCommand(SandboxRecord record, CommandAuditInfo command) =>
        _execSeconds.WithLabels(record.Spec.Tier.Name()).Observe(command.Duration.TotalSeconds);
}
