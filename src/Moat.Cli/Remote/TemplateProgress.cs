using Moat.Contracts;
using Spectre.Console;

namespace Moat.Cli.Remote;

/// <summary>
/// Shows an import, pull or build as it happens: on a terminal, a Spectre.Console progress bar per
/// layer (bytes downloaded, then unpacking); on a pipe, one line per layer state. Build output goes
/// to stdout line by line; everything else to stderr, so stdout stays the result.
/// </summary>
internal static class TemplateProgress
{
    /// <summary>Runs <paramref name="work"/>, showing the events it reports.</summary>
    public static async Task<TemplateDto> ShowAsync(string title, bool quiet, Func<Action<TemplateEventDto>, Task<TemplateDto>> work)
    {
        if (quiet || Console.IsErrorRedirected)
            return await work(evt => Plain(evt, quiet));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        TemplateDto? result = null;
        await console.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn())
            .StartAsync(async ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>(StringComparer.Ordinal);
                var gate = new object();
                result = await work(evt =>
                {
                    lock (gate)
                    {
                        if (evt.Log is { } line)
                        {
                            // Build output scrolls above the bars.
                            console.MarkupLine(Markup.Escape(line));
                            return;
                        }
                        if (evt.Progress is not { } p)
                            return;
                        if (!tasks.TryGetValue(p.Layer, out var task))
                        {
                            task = ctx.AddTask(Markup.Escape(Short(p.Layer)), maxValue: Math.Max(1, p.Total));
                            tasks[p.Layer] = task;
                        }
                        if (p.Total > 0)
                            task.MaxValue = p.Total;
                        task.Description = Markup.Escape($"{Short(p.Layer)} {p.Status}");
                        switch (p.Status)
                        {
                            case "downloading":
                                task.Value = p.Bytes;
                                break;
                            case "done" or "exists":
                                task.Value = task.MaxValue;
                                task.StopTask();
                                break;
                        }
                    }
                });
            });
        return result!;
    }

    private static void Plain(TemplateEventDto evt, bool quiet)
    {
        if (evt.Log is { } line)
        {
            if (!quiet)
                Console.Out.WriteLine(line);
            return;
        }
        if (quiet || evt.Progress is not { } p || p.Status == "downloading" && p.Bytes > 0)
            return;
        Console.Error.WriteLine($"{Short(p.Layer)}: {p.Status}{(p.Total > 0 ? $" ({p.Total} bytes)" : "")}");
    }

    private static string Short(string layer) => layer.StartsWith("sha256:", StringComparison.Ordinal) && layer.Length > 19 ? layer[7..19] : layer;
}
