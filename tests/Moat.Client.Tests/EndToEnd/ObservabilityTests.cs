using Microsoft.Extensions.DependencyInjection;
using Moat.Client.Tests.Infrastructure;
using Moat.Server.Observability;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>A sandbox's resource series and command output history, read through the API.</summary>
[Collection(ServerCollection.Name)]
public sealed class ObservabilityTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private readonly ITestOutputHelper _output = output;

    [SkippableFact]
    public async Task The_metrics_series_shows_a_busy_loop_burning_cpu_and_an_idle_sandbox_near_zero()
    {
        await using var busy = await CreateAsync();
        await using var idle = await CreateAsync();
        var sampler = Server.Services.GetRequiredService<SandboxMetricsSampler>();
        // Samples are taken explicitly here (the background sampler keeps running too): a baseline, then after 3 s of load.
        await busy.Commands.RunAsync("nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &", Timeout);
        await sampler.SampleAsync(Timeout);
        await Task.Delay(TimeSpan.FromSeconds(3), Timeout);
        await sampler.SampleAsync(Timeout);

        var busySeries = await busy.GetMetricsAsync(cancellationToken: Timeout);
        var idleSeries = await idle.GetMetricsAsync(cancellationToken: Timeout);
        _output.WriteLine($"busy: {string.Join(", ", busySeries.Samples.Select(s => s.CpuPercent))}; idle: {string.Join(", ", idleSeries.Samples.Select(s => s.CpuPercent))}");

        Assert.Equal(busy.Id, busySeries.SandboxId);
        Assert.True(busySeries.IntervalSeconds >= 1);
        Assert.True(busySeries.Samples.Count >= 2);
        // Sanity bounds, not timing: on a host shared by many busy processes a busy loop gets its share
        // of a core (26 % was seen at load 29 on 2 cores; ~100 % on a quiet host), an idle sandbox ~0.
        Assert.True(busySeries.Samples[^1].CpuPercent > 15, $"a busy loop should show clearly in the series, saw {busySeries.Samples[^1].CpuPercent} %");
        Assert.True(busySeries.Samples[^1].CpuPercent <= 110, "one busy loop cannot use more than one vCPU");
        Assert.True(busySeries.Samples[^1].MemoryBytes > 0);
        Assert.True(idleSeries.Samples.Count >= 2);
        Assert.True(idleSeries.Samples[^1].CpuPercent < 5, $"an idle sandbox should be near 0 %, saw {idleSeries.Samples[^1].CpuPercent} %");
        for (int i = 1; i < busySeries.Samples.Count; i++)
            Assert.True(busySeries.Samples[i].Time >= busySeries.Samples[i - 1].Time);

        var since = busySeries.Samples[^1].Time;
        var later = await busy.GetMetricsAsync(since, Timeout);
        Assert.All(later.Samples, s => Assert.True(s.Time >= since));
    }

    [SkippableFact]
    public async Task The_logs_hold_the_output_of_commands_in_order_with_exits_including_background()
    {
        await using var sandbox = await CreateAsync();
        await sandbox.Commands.RunAsync("echo first; echo oops >&2; exit 3", Timeout);
        await foreach (var _ in sandbox.Commands.StreamAsync("echo second", Timeout))
        {
        }
        // A background command's output reaches the history when it is read (attached to).
        using var http = TenancyKit.Http(Server, Server.AdminKey);
        var started = await http.PostAsync($"v1/sandboxes/{sandbox.Id}/exec", new StringContent("""{"shell":"sleep 0.5; echo third","background":true}""", System.Text.Encoding.UTF8, "application/json"), Timeout);
        Assert.Equal(System.Net.HttpStatusCode.Accepted, started.StatusCode);
        int background = System.Text.Json.JsonDocument.Parse(await started.Content.ReadAsStringAsync(Timeout)).RootElement.GetProperty("pid").GetInt32();
        var attached = await http.GetAsync($"v1/sandboxes/{sandbox.Id}/processes/{background}/output", Timeout);
        Assert.Equal(System.Net.HttpStatusCode.OK, attached.StatusCode);
        _output.WriteLine(await attached.Content.ReadAsStringAsync(Timeout));

        var logs = await sandbox.GetLogsAsync(cancellationToken: Timeout);
        foreach (var e in logs.Entries)
            _output.WriteLine($"{e.Seq} {e.Pid} [{e.Command}] {e.Stream}: {e.Data.TrimEnd()}");

        var text = logs.Entries.Where(e => e.Stream != "exit").Select(e => e.Data.Trim()).ToList();
        Assert.Equal(["first", "oops", "second", "third"], text.Where(t => t is "first" or "oops" or "second" or "third").ToList());
        Assert.Contains(logs.Entries, e => e.Stream == "stderr" && e.Data.Trim() == "oops");
        Assert.Contains(logs.Entries, e => e.Stream == "exit" && e.Data == "3" && e.Command.Contains("echo first", StringComparison.Ordinal));
        Assert.Contains(logs.Entries, e => e.Stream == "stdout" && e.Data.Trim() == "third" && e.Pid == background && e.Command.Contains("echo third", StringComparison.Ordinal));
        for (int i = 1; i < logs.Entries.Count; i++)
            Assert.Equal(logs.Entries[i - 1].Seq + 1, logs.Entries[i].Seq);
        Assert.Equal(logs.Entries[^1].Seq, logs.Next);

        var page = await sandbox.GetLogsAsync(after: logs.Entries[0].Seq, limit: 1, cancellationToken: Timeout);
        Assert.Single(page.Entries);
        Assert.Equal(logs.Entries[1].Seq, page.Entries[0].Seq);
    }
}
