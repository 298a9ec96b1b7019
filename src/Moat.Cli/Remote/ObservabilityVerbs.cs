using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Moat.Client;
using Moat.Contracts;

namespace Moat.Cli.Remote;

/// <summary><c>moat sandbox metrics|logs</c>: a sandbox's resource series and its command output history.</summary>
internal static class ObservabilityVerbs
{
    private const string Bars = "▁▂▃▄▅▆▇█";

    /// <summary>How long <c>logs --follow</c> waits between polls.</summary>
    private static readonly TimeSpan FollowInterval = TimeSpan.FromMilliseconds(500);

    /// <summary>Adds the verbs to the <c>sandbox</c> group.</summary>
    public static Command AddTo(Command sandbox)
    {
        sandbox.Subcommands.Add(MetricsVerb());
        sandbox.Subcommands.Add(LogsVerb());
        return sandbox;
    }

    private static Argument<string> IdArgument() => new("id") { Description = "Sandbox id (from `moat sandbox create` or `moat sandbox ls`)" };

    private static Command MetricsVerb()
    {
        var id = IdArgument();
        var last = new Option<int?>("--last") { Description = "Show only the newest N samples (default 20; the JSON has them all)", HelpName = "N" };
        var json = Output.JsonOption();
        var command = new Command("metrics", "Show a sandbox's resource samples (taken every few seconds): CPU %, memory, disk, bytes received and sent, with a CPU sparkline.\nExample: moat sandbox metrics sb... --last 10")
        {
            id, last, json,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            int count = parse.GetValue(last) ?? 20;
            if (count <= 0)
                throw new UsageException($"--last must be a positive number, got {count}");
            var metrics = await client.GetSandboxMetricsAsync(parse.GetValue(id)!, null, ct);
            if (parse.GetValue(json))
            {
                Output.Json(metrics, j => j.SandboxMetricsResponse);
                return 0;
            }
            var samples = metrics.Samples.Skip(Math.Max(0, metrics.Samples.Count - count)).ToList();
            if (samples.Count == 0)
            {
                Console.Out.WriteLine($"no samples yet (one every {metrics.IntervalSeconds}s)");
                return 0;
            }
            var table = Output.Table("time", "cpu %", "memory", "disk", "rx", "tx");
            foreach (var s in samples)
                Output.Row(table, Output.Time(s.Time), s.CpuPercent.ToString("0.0", CultureInfo.InvariantCulture), Output.Bytes(s.MemoryBytes), Output.Bytes(s.DiskBytes), Output.Bytes(s.RxBytes), Output.Bytes(s.TxBytes));
            Output.Print(table);
            Console.Out.WriteLine($"cpu {Sparkline(samples.Select(s => s.CpuPercent).ToList())} peak {samples.Max(s => s.CpuPercent).ToString("0.0", CultureInfo.InvariantCulture)}%, memory {Sparkline(samples.Select(s => (double)s.MemoryBytes).ToList())} peak {Output.Bytes(samples.Max(s => s.MemoryBytes))}");
            return 0;
        }, ct));
        return command;
    }

    /// <summary>One block character per value, scaled to the largest (all-low when everything is zero).</summary>
    internal static string Sparkline(IReadOnlyList<double> values)
    {
        double max = values.Count == 0 ? 0 : values.Max();
        var line = new StringBuilder(values.Count);
        foreach (var v in values)
            line.Append(Bars[max <= 0 ? 0 : (int)Math.Round(Math.Clamp(v / max, 0, 1) * (Bars.Length - 1))]);
        return line.ToString();
    }

    private static Command LogsVerb()
    {
        var id = IdArgument();
        var after = new Option<long>("--after") { Description = "Only entries after this sequence number (a previous answer's `next`)", HelpName = "SEQ" };
        var limit = new Option<int?>("--limit") { Description = "At most this many entries per request (server default otherwise)", HelpName = "N" };
        var follow = new Option<bool>("--follow", "-f") { Description = "Keep printing new output until the sandbox ends (or Ctrl+C)" };
        var json = new Option<bool>("--json") { Description = "Print the server's JSON instead (with --follow: one entry per line)" };
        var command = new Command("logs", "Print the output of the commands run in a sandbox: stdout to stdout, stderr to stderr, in order.\nExample: moat sandbox logs sb... --follow")
        {
            id, after, limit, follow, json,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            string sandboxId = parse.GetValue(id)!;
            long next = parse.GetValue(after);
            int? max = parse.GetValue(limit);
            if (next < 0)
                throw new UsageException($"--after must be 0 or more, got {next}");
            if (max is <= 0)
                throw new UsageException($"--limit must be a positive number, got {max}");
            bool asJson = parse.GetValue(json);
            if (!parse.GetValue(follow))
            {
                var page = await client.GetSandboxLogsAsync(sandboxId, next, max, ct);
                if (asJson)
                    Output.Json(page, j => j.SandboxLogsResponse);
                else
                    await WriteAsync(page.Entries, false, ct);
                return 0;
            }
            while (true)
            {
                var page = await client.GetSandboxLogsAsync(sandboxId, next, max, ct);
                await WriteAsync(page.Entries, asJson, ct);
                next = page.Next;
                if (page.Entries.Count > 0 && (max is null || page.Entries.Count >= max))
                    continue; // more may be waiting
                var info = await client.GetSandboxAsync(sandboxId, ct);
                if (info.State is "stopped" or "failed")
                {
                    // Whatever arrived between the read and the state check.
                    var rest = await client.GetSandboxLogsAsync(sandboxId, next, max, ct);
                    await WriteAsync(rest.Entries, asJson, ct);
                    return 0;
                }
                await Task.Delay(FollowInterval, ct);
            }
        }, ct));
        return command;
    }

    private static async Task WriteAsync(IReadOnlyList<LogEntryDto> entries, bool jsonLines, CancellationToken cancellationToken)
    {
        foreach (var e in entries)
        {
            if (jsonLines)
                await Console.Out.WriteLineAsync(JsonSerializer.Serialize(e, MoatJson.Default.LogEntryDto).AsMemory(), cancellationToken);
            else if (e.Stream == "stdout")
                await Console.Out.WriteAsync(e.Data.AsMemory(), cancellationToken);
            else if (e.Stream == "stderr")
                await Console.Error.WriteAsync(e.Data.AsMemory(), cancellationToken);
        }
        await Console.Out.FlushAsync(cancellationToken);
        await Console.Error.FlushAsync(cancellationToken);
    }
}
