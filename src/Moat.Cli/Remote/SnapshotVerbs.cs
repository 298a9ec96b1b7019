using System.CommandLine;
using Moat.Contracts;

namespace Moat.Cli.Remote;

/// <summary><c>moat snapshot create|fork|ls|rm</c>: filesystem snapshots of sandboxes, and forks.</summary>
internal static class SnapshotVerbs
{
    public static Command Create()
    {
        var group = Connection.With(new Command("snapshot", "Save a sandbox's files as a named snapshot (restore: moat sandbox create --template NAME), fork sandboxes, list and delete snapshots"));
        group.Subcommands.Add(CreateVerb());
        group.Subcommands.Add(ForkVerb());
        group.Subcommands.Add(ListVerb());
        group.Subcommands.Add(RemoveVerb());
        return group;
    }

    private static Argument<string> SandboxArgument() => new("sandbox") { Description = "Sandbox id (container or gvisor tier; running or paused)" };

    private static Command CreateVerb()
    {
        var sandbox = SandboxArgument();
        var name = new Argument<string>("name") { Description = "The snapshot's name (a new template of your tenant)" };
        var json = Output.JsonOption();
        var command = new Command("create", "Snapshot a sandbox's files (not /tmp, processes or memory); the sandbox goes on running.\nExample: moat snapshot create $id after-setup && moat sandbox create --template after-setup")
        {
            sandbox, name, json,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var snapshot = await client.SnapshotSandboxAsync(parse.GetValue(sandbox)!, parse.GetValue(name)!, ct);
            if (parse.GetValue(json))
                Output.Json(snapshot, j => j.SnapshotDto);
            else
                Console.Out.WriteLine($"{snapshot.Name}\t{snapshot.ChangedEntries} changed entries\t{Output.Bytes(snapshot.Template.SizeBytes ?? 0)}");
            return 0;
        }, ct));
        return command;
    }

    private static Command ForkVerb()
    {
        var sandbox = SandboxArgument();
        var count = new Option<int>("--count", "-n") { Description = "How many sandboxes to start (1-50)", DefaultValueFactory = _ => 1, HelpName = "N" };
        var json = Output.JsonOption();
        var command = new Command("fork", "Start sandboxes from a sandbox's files now, with its policy; prints their ids")
        {
            sandbox, count, json,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            int n = parse.GetValue(count);
            if (n is < 1 or > 50)
                throw new UsageException($"--count must be between 1 and 50, got {n}");
            var forks = await client.ForkSandboxAsync(parse.GetValue(sandbox)!, n, ct);
            if (parse.GetValue(json))
                Output.Json(new ForkResponse(forks.Select(f => f.Info).ToList()), j => j.ForkResponse);
            else
            {
                foreach (var fork in forks)
                    Console.Out.WriteLine(fork.Id);
            }
            return 0;
        }, ct));
        return command;
    }

    private static Command ListVerb()
    {
        var json = Output.JsonOption();
        var command = new Command("ls", "List your snapshots: name, source sandbox, size, age") { json };
        command.Aliases.Add("list");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var list = await client.ListSnapshotsAsync(ct);
            if (parse.GetValue(json))
            {
                Output.Json(new SnapshotListResponse(list), j => j.SnapshotListResponse);
                return 0;
            }
            var now = DateTimeOffset.UtcNow;
            var table = Output.Table("name", "from sandbox", "size", "age");
            foreach (var s in list)
                Output.Row(table, s.Name, s.SandboxId, Output.Bytes(s.Template.SizeBytes ?? 0), s.Template.CreatedAt is { } c ? Output.Age(c, now) : "-");
            Output.Print(table);
            return 0;
        }, ct));
        return command;
    }

    private static Command RemoveVerb()
    {
        var name = new Argument<string>("name") { Description = "Snapshot name" };
        var command = new Command("rm", "Delete a snapshot (refused while a sandbox restored from it runs)") { name };
        command.Aliases.Add("delete");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            await client.DeleteSnapshotAsync(parse.GetValue(name)!, ct);
            return 0;
        }, ct));
        return command;
    }
}
