using System.Diagnostics;
using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol.Messages;
using Xunit.Abstractions;

namespace Moat.Agent.Tests;

/// <summary>
/// The agent runs in thousands of sandboxes at once: its idle memory and the exec round trip are
/// measured here (numbers go to the test output). Bounds are generous so a loaded CI machine does
/// not flake; the measured values are what matters.
/// </summary>
public sealed class FootprintTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Idle_memory_after_a_few_commands_is_small()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        for (int i = 0; i < 5; i++)
            Assert.Equal(0, (await client.RunAsync("/bin/true")).Exit!.ExitCode);
        await Task.Delay(200);
        var (rss, anon) = Memory(agent.Pid);
        output.WriteLine($"right after Hello and 5 commands: Rss {rss} KiB, Anonymous {anon} KiB");
        // The agent trims itself a few seconds after the host goes quiet.
        await Task.Delay(3800);
        (rss, anon) = Memory(agent.Pid);
        output.WriteLine($"idle (connected): Rss {rss} KiB, Anonymous {anon} KiB");
        Assert.True(anon < 2048, $"idle anonymous memory {anon} KiB");

        for (int i = 0; i < 300; i++)
            await client.RunAsync("/bin/true");
        var (rss2, anon2) = Memory(agent.Pid);
        output.WriteLine($"right after 300 more commands: Rss {rss2} KiB, Anonymous {anon2} KiB");
        await Task.Delay(3800);
        (rss2, anon2) = Memory(agent.Pid);
        output.WriteLine($"idle again: Rss {rss2} KiB, Anonymous {anon2} KiB");
        Assert.True(anon2 < 2048, $"idle anonymous memory {anon2} KiB");
    }

    [Fact]
    public async Task Exec_round_trip_of_true_is_fast()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        var exec = new ExecRequest { User = "root" };
        exec.Argv.Add("/bin/true");
        for (int i = 0; i < 20; i++)
            await client.RunAsync(exec);
        var samples = new List<double>();
        for (int i = 0; i < 300; i++)
        {
            long t = Stopwatch.GetTimestamp();
            var r = await client.RunAsync(exec);
            samples.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
            Assert.Equal(0, r.Exit!.ExitCode);
        }
        samples.Sort();
        double p50 = samples[samples.Count / 2], p90 = samples[samples.Count * 9 / 10], p99 = samples[samples.Count * 99 / 100];
        output.WriteLine($"exec /bin/true round trip: p50 {p50:F3} ms, p90 {p90:F3} ms, p99 {p99:F3} ms");
        var pings = new List<double>();
        for (int i = 0; i < 300; i++)
        {
            long t = Stopwatch.GetTimestamp();
            await client.RequestAsync(new Request { Stat = new StatRequest { Path = "/" } });
            pings.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
        }
        pings.Sort();
        output.WriteLine($"stat / round trip (no process): p50 {pings[150]:F3} ms, p90 {pings[270]:F3} ms");
        var (rss, anon) = Memory(agent.Pid);
        output.WriteLine($"after 320 commands: Rss {rss} KiB, Anonymous {anon} KiB");
        Assert.True(p50 < 20, $"p50 {p50} ms");
    }

    [Fact]
    public async Task Output_streams_at_pipe_speed_with_bounded_memory()
    {
        await using var agent = await AgentProcess.StartAsync();
        await using var client = await agent.ConnectAsync();
        const long total = 512L << 20;
        var exec = new ExecRequest { User = "root" };
        exec.Argv.AddRange(["head", "-c", total.ToString(), "/dev/zero"]);
        var sw = Stopwatch.StartNew();
        var stream = await client.ExecAsync(exec);
        long received = 0, peakAnon = 0;
        int frames = 0;
        while (true)
        {
            var f = await stream.NextAsync(TimeSpan.FromSeconds(60));
            if (f is null || f.Type == Moat.Protocol.FrameType.Response && f.IsFinal)
                break;
            received += f.Type == Moat.Protocol.FrameType.Stdout ? f.Payload.Length : 0;
            if (++frames % 256 == 0)
                peakAnon = Math.Max(peakAnon, Memory(agent.Pid).AnonKiB);
        }
        double seconds = sw.Elapsed.TotalSeconds;
        output.WriteLine($"stdout throughput: {total / seconds / (1 << 20):F0} MiB/s ({received >> 20} MiB in {seconds:F2} s), agent peak anonymous memory {peakAnon} KiB");
        Assert.Equal(total, received);
        Assert.True(peakAnon < 16 * 1024, $"peak anonymous memory {peakAnon} KiB");
        Assert.Null(client.Violation);
    }

    internal static (long RssKiB, long AnonKiB) Memory(int pid)
    {
        long rss = 0, anon = 0;
        foreach (var line in File.ReadAllLines($"/proc/{pid}/smaps_rollup"))
        {
            if (line.StartsWith("Rss:"))
                rss = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
            else if (line.StartsWith("Anonymous:"))
                anon = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        }
        return (rss, anon);
    }
}
