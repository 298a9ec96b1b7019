using System.CommandLine;
using Moat.Cli.Commands;
using Moat.Cli.Remote;

namespace Moat.Cli;

/// <summary>The `moat` command line.</summary>
public static class Program
{
    /// <summary>Exit status for a bad option or an unavailable tier.</summary>
    public const int UsageError = 2;

    /// <summary>Entry point.</summary>
    public static async Task<int> Main(string[] args)
    {
        var root = BuildRoot();
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            await Console.Error.WriteLineAsync($"moat: {parse.Errors[0].Message} (see moat {string.Join(' ', parse.CommandResult.Command.Name == "moat" ? [] : new[] { parse.CommandResult.Command.Name })} --help)".Replace("  ", " ", StringComparison.Ordinal));
            return UsageError;
        }
        try
        {
            return await parse.InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // Never a stack trace for a user: one line that says what went wrong.
            await Console.Error.WriteLineAsync($"moat: {ex.Message}");
            return 1;
        }
    }

    /// <summary>The command tree.</summary>
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("Moat: run code nobody reviewed in sandboxes — hardened containers, gVisor or microVMs.\nEmbedded for `moat run` and `moat doctor`; every other verb talks to `moat serve` at MOAT_URL.");
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(RunCommand.Create());
        root.Subcommands.Add(DoctorCommand.Create());
        RemoteCommands.AddTo(root);
        return root;
    }
}
