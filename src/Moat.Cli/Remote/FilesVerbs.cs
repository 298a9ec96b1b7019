using System.CommandLine;
using Moat.Contracts;
using Spectre.Console;

namespace Moat.Cli.Remote;

/// <summary><c>moat files read|write|ls|rm|mkdir</c>: a sandbox's files, read and written from inside it.</summary>
internal static class FilesVerbs
{
    public static Command Create()
    {
        var group = Connection.With(new Command("files", "Read, write, list and remove files inside a sandbox"));
        group.Subcommands.Add(ReadVerb());
        group.Subcommands.Add(WriteVerb());
        group.Subcommands.Add(ListVerb());
        group.Subcommands.Add(RemoveVerb());
        group.Subcommands.Add(MakeDirVerb());
        return group;
    }

    private static Argument<string> Id() => new("id") { Description = "Sandbox id" };

    private static Argument<string> PathArgument(string description = "Path inside the sandbox") => new("path") { Description = description };

    private static Option<string?> UserOption() => new("--user") { Description = "Act as this user of the sandbox (default: its default user)", HelpName = "USER" };

    private static Command ReadVerb()
    {
        var id = Id();
        var path = PathArgument();
        var output = new Option<string?>("--output", "-o") { Description = "Write to this local file instead of stdout", HelpName = "FILE" };
        var user = UserOption();
        var command = new Command("read", "Copy a file out of a sandbox, byte for byte, to stdout or -o FILE.\nExample: moat files read sb... /home/user/out.png -o out.png")
        {
            id, path, output, user,
        };
        command.Aliases.Add("cat");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var sandbox = await client.ConnectAsync(parse.GetValue(id)!, ct);
            sandbox.KillOnDispose = false;
            var files = parse.GetValue(user) is { } u ? sandbox.Files.AsUser(u) : sandbox.Files;
            await using var source = await files.OpenReadAsync(parse.GetValue(path)!, ct);
            if (parse.GetValue(output) is { } local)
            {
                // Written next to the target and moved into place: a failed download leaves no half file.
                var full = Path.GetFullPath(local);
                var partial = full + ".moat-partial";
                try
                {
                    await using (var target = new FileStream(partial, FileMode.Create, FileAccess.Write, FileShare.None, 81920, useAsync: true))
                        await source.CopyToAsync(target, ct);
                    File.Move(partial, full, overwrite: true);
                }
                catch
                {
                    File.Delete(partial);
                    throw;
                }
            }
            else
            {
                await using var stdout = Console.OpenStandardOutput();
                await source.CopyToAsync(stdout, ct);
                await stdout.FlushAsync(ct);
            }
            return 0;
        }, ct));
        return command;
    }

    private static Command WriteVerb()
    {
        var id = Id();
        var path = PathArgument("Path inside the sandbox (parent directories are created; an existing file is replaced atomically)");
        var local = new Argument<string?>("local") { Description = "Local file to upload, or - (the default) for stdin", Arity = ArgumentArity.ZeroOrOne, HelpName = "LOCALFILE|-" };
        var mode = new Option<string?>("--mode") { Description = "Permission bits in octal, e.g. 0755 (default 0644)", HelpName = "MODE" };
        var user = UserOption();
        var command = new Command("write", "Copy a local file (or stdin) into a sandbox, streamed as it is read.\nExample: moat files write sb... /home/user/main.py main.py")
        {
            id, path, local, mode, user,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            UnixFileMode? bits = null;
            if (parse.GetValue(mode) is { } text)
            {
                try
                {
                    bits = (UnixFileMode)Convert.ToInt32(text, 8);
                }
                catch (Exception ex) when (ex is FormatException or OverflowException or ArgumentException)
                {
                    throw new UsageException($"--mode must be octal permission bits like 0644, got '{text}'");
                }
                if ((int)bits.Value is < 0 or > 0xFFF)
                    throw new UsageException($"--mode must be octal permission bits like 0644, got '{text}'");
            }
            var source = parse.GetValue(local);
            Stream input;
            if (source is null or "-")
                input = Console.OpenStandardInput();
            else
            {
                try
                {
                    input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read, 81920, useAsync: true);
                }
                catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException)
                {
                    throw new UsageException($"cannot read {source}: {ex.Message}");
                }
            }
            await using (input)
            {
                var sandbox = await client.ConnectAsync(parse.GetValue(id)!, ct);
                sandbox.KillOnDispose = false;
                var files = parse.GetValue(user) is { } u ? sandbox.Files.AsUser(u) : sandbox.Files;
                await files.WriteAsync(parse.GetValue(path)!, input, bits, ct);
            }
            return 0;
        }, ct));
        return command;
    }

    private static Command ListVerb()
    {
        var id = Id();
        var path = PathArgument("Directory inside the sandbox");
        var depth = new Option<int>("--depth") { Description = "Levels to descend (1: the directory's own entries)", DefaultValueFactory = _ => 1, HelpName = "N" };
        var json = Output.JsonOption();
        var user = UserOption();
        var command = new Command("ls", "List a directory inside a sandbox: name, type, size, mode, owner, modification time")
        {
            id, path, depth, json, user,
        };
        command.Aliases.Add("list");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            int levels = parse.GetValue(depth);
            if (levels < 1)
                throw new UsageException($"--depth must be at least 1, got {levels}");
            var sandbox = await client.ConnectAsync(parse.GetValue(id)!, ct);
            sandbox.KillOnDispose = false;
            var files = parse.GetValue(user) is { } u ? sandbox.Files.AsUser(u) : sandbox.Files;
            var entries = await files.ListAsync(parse.GetValue(path)!, levels, ct);
            if (parse.GetValue(json))
            {
                Output.Json(new FileListResponse(entries, false), j => j.FileListResponse);
                return 0;
            }
            var table = Output.Table(levels > 1 ? "path" : "name", "type", "size", "mode", "owner", "modified");
            table.Columns[2].RightAligned();
            foreach (var e in entries)
                Output.Row(table, (levels > 1 ? e.Path : e.Name) + (e.SymlinkTarget is { } target ? " -> " + target : ""), e.Type, e.Type == "dir" ? "-" : e.Size.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Mode, $"{e.Owner}:{e.Group}", Output.Time(e.Mtime));
            Output.Print(table);
            return 0;
        }, ct));
        return command;
    }

    private static Command RemoveVerb()
    {
        var id = Id();
        var path = PathArgument("File or directory inside the sandbox (a directory goes with everything in it)");
        var user = UserOption();
        var command = new Command("rm", "Remove a file or a directory tree inside a sandbox")
        {
            id, path, user,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var sandbox = await client.ConnectAsync(parse.GetValue(id)!, ct);
            sandbox.KillOnDispose = false;
            var files = parse.GetValue(user) is { } u ? sandbox.Files.AsUser(u) : sandbox.Files;
            await files.RemoveAsync(parse.GetValue(path)!, ct);
            return 0;
        }, ct));
        return command;
    }

    private static Command MakeDirVerb()
    {
        var id = Id();
        var path = PathArgument("Directory to create (missing parents are created too)");
        var user = UserOption();
        var command = new Command("mkdir", "Create a directory inside a sandbox, with its parents")
        {
            id, path, user,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var sandbox = await client.ConnectAsync(parse.GetValue(id)!, ct);
            sandbox.KillOnDispose = false;
            var files = parse.GetValue(user) is { } u ? sandbox.Files.AsUser(u) : sandbox.Files;
            await files.MakeDirAsync(parse.GetValue(path)!, ct);
            return 0;
        }, ct));
        return command;
    }
}
