using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Moat.Contracts;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Moat.Cli.Remote;

/// <summary>How the remote verbs print: Spectre tables for people, indented JSON (<c>--json</c>) for scripts.</summary>
internal static class Output
{
    private static readonly MoatJson Indented = new(new JsonSerializerOptions(MoatJson.Default.Options) { WriteIndented = true });

    /// <summary>The <c>--json</c> option.</summary>
    public static Option<bool> JsonOption() => new("--json") { Description = "Print the server's JSON instead of a table" };

    /// <summary>Prints a value as indented JSON on stdout.</summary>
    public static void Json<T>(T value, Func<MoatJson, JsonTypeInfo<T>> type) =>
        Console.Out.WriteLine(JsonSerializer.Serialize(value, type(Indented)));

    /// <summary>Prints a table or grid on stdout: colours and borders for a terminal, plain wide columns (no trailing blanks) for a pipe.</summary>
    public static void Print(IRenderable renderable)
    {
        if (!Console.IsOutputRedirected)
        {
            AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out), Interactive = InteractionSupport.No }).Write(renderable);
            return;
        }
        using var text = new StringWriter(CultureInfo.InvariantCulture);
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(text),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 512;
        console.Write(renderable);
        foreach (var line in text.ToString().Split('\n'))
        {
            var trimmed = line.TrimEnd();
            if (trimmed.Length > 0)
                Console.Out.WriteLine(trimmed);
        }
    }

    /// <summary>A table with the given column headers, bordered for a terminal and plain for a pipe.</summary>
    public static Table Table(params string[] headers)
    {
        var table = new Table().Border(Console.IsOutputRedirected ? TableBorder.None : TableBorder.Rounded);
        foreach (var header in headers)
            table.AddColumn(new TableColumn(new Text(header.ToUpperInvariant())).NoWrap());
        return table;
    }

    /// <summary>Adds a row of plain text cells (never parsed as markup).</summary>
    public static void Row(Table table, params string?[] cells) =>
        table.AddRow(cells.Select(c => (IRenderable)new Text(c ?? "")));

    /// <summary>"12s", "5m", "3h", "4d" since <paramref name="time"/>.</summary>
    public static string Age(DateTimeOffset time, DateTimeOffset now) => Span(now - time);

    /// <summary>"in 4m", "overdue" or "-" when the sandbox has ended.</summary>
    public static string Expires(SandboxDto sandbox, DateTimeOffset now)
    {
        if (sandbox.EndedAt is not null || sandbox.State is "stopped" or "failed")
            return "-";
        var left = sandbox.ExpiresAt - now;
        return left <= TimeSpan.Zero ? "overdue" : "in " + Span(left);
    }

    /// <summary>A duration, coarsely: the largest unit that fits.</summary>
    public static string Span(TimeSpan span)
    {
        if (span < TimeSpan.Zero)
            span = TimeSpan.Zero;
        return span.TotalSeconds < 60 ? $"{(int)span.TotalSeconds}s"
            : span.TotalMinutes < 60 ? $"{(int)span.TotalMinutes}m"
            : span.TotalHours < 48 ? $"{(int)span.TotalHours}h"
            : $"{(int)span.TotalDays}d";
    }

    /// <summary>A UTC time, to the second.</summary>
    public static string Time(DateTimeOffset? time) => time is { } t ? t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'", CultureInfo.InvariantCulture) : "-";

    /// <summary>A byte count, human-sized.</summary>
    public static string Bytes(long bytes) => bytes switch
    {
        < 1024 => $"{bytes} B",
        < 1024 * 1024 => $"{bytes / 1024.0:0.#} KiB",
        < 1024L * 1024 * 1024 => $"{bytes / (1024.0 * 1024):0.#} MiB",
        _ => $"{bytes / (1024.0 * 1024 * 1024):0.##} GiB",
    };
}
