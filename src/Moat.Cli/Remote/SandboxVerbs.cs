using System.CommandLine;
using Moat.Client;
using Moat.Contracts;
using Spectre.Console;

namespace Moat.Cli.Remote;

/// <summary><c>moat sandbox create|ls|get|kill|timeout|shell|metrics|logs</c>.</summary>
internal static class SandboxVerbs
{
    public static Command Create()
    {
        var group = Connection.With(new Command("sandbox", "Create, list, inspect, extend and kill sandboxes on a Moat server"));
        group.Subcommands.Add(CreateVerb());
        group.Subcommands.Add(ListVerb());
        group.Subcommands.Add(GetVerb());
        group.Subcommands.Add(KillVerb());
        group.Subcommands.Add(TimeoutVerb());
        group.Subcommands.Add(ShellVerb.Create());
        ObservabilityVerbs.AddTo(group);
        return group;
    }

    private static Command CreateVerb()
    {
        var template = new Option<string?>("--template") { Description = "Template to start from (default: the server's, usually base)" };
        var isolation = new Option<string?>("--isolation") { Description = "microvm, gvisor or container (default: the strongest tier the server can run)" };
        var memory = new Option<int?>("--memory") { Description = "Memory limit in MiB", HelpName = "MIB" };
        var cpus = new Option<double?>("--cpus") { Description = "CPU limit (fractions allowed)", HelpName = "N" };
        var disk = new Option<int?>("--disk") { Description = "Writable disk in MiB", HelpName = "MIB" };
        var timeout = new Option<long?>("--timeout") { Description = "Lifetime in seconds; the server kills the sandbox after it (extend with `moat sandbox timeout`)", HelpName = "SECONDS" };
        var env = new Option<string[]>("--env") { Description = "Environment variable for every command, K=V (repeatable)", Arity = ArgumentArity.ZeroOrMore, HelpName = "K=V" };
        var metadata = new Option<string[]>("--metadata") { Description = "Label to find the sandbox by, K=V (repeatable)", Arity = ArgumentArity.ZeroOrMore, HelpName = "K=V" };
        var json = Output.JsonOption();
        var command = new Command("create", "Create a sandbox and print its id once it is running.\nExample: id=$(moat sandbox create --isolation container --memory 512 --timeout 600)")
        {
            template, isolation, memory, cpus, disk, timeout, env, metadata, json,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            if (parse.GetValue(timeout) is <= 0)
                throw new UsageException($"--timeout must be a positive number of seconds, got {parse.GetValue(timeout)}");
            var options = new SandboxCreateOptions
            {
                Template = parse.GetValue(template),
                Isolation = parse.GetValue(isolation),
                MemoryMiB = parse.GetValue(memory),
                Cpus = parse.GetValue(cpus),
                DiskMiB = parse.GetValue(disk),
                Timeout = parse.GetValue(timeout) is { } s ? TimeSpan.FromSeconds(s) : null,
                Env = RemoteCommands.Pairs("--env", parse.GetValue(env)),
                Metadata = RemoteCommands.Pairs("--metadata", parse.GetValue(metadata)),
            };
            var sandbox = await client.CreateSandboxAsync(options, ct);
            sandbox.KillOnDispose = false;
            if (parse.GetValue(json))
                Output.Json(sandbox.Info, j => j.SandboxDto);
            else
                Console.Out.WriteLine(sandbox.Id);
            return 0;
        }, ct));
        return command;
    }

    private static Command ListVerb()
    {
        var state = new Option<string?>("--state") { Description = "Only sandboxes in these states, comma-separated: creating, running, paused, stopping, stopped, failed", HelpName = "STATES" };
        var metadata = new Option<string[]>("--metadata") { Description = "Only sandboxes with this label, K=V (repeatable)", Arity = ArgumentArity.ZeroOrMore, HelpName = "K=V" };
        var limit = new Option<int?>("--limit") { Description = "At most this many (default 1000)", HelpName = "N" };
        var json = Output.JsonOption();
        var command = new Command("ls", "List this tenant's sandboxes, newest first: id, state, tier, template, age, expiry")
        {
            state, metadata, limit, json,
        };
        command.Aliases.Add("list");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var list = await client.ListSandboxesAsync(parse.GetValue(state), RemoteCommands.Pairs("--metadata", parse.GetValue(metadata)), parse.GetValue(limit), ct);
            if (parse.GetValue(json))
            {
                Output.Json(new SandboxListResponse(list), j => j.SandboxListResponse);
                return 0;
            }
            var now = DateTimeOffset.UtcNow;
            var table = Output.Table("id", "state", "tier", "template", "age", "expires");
            foreach (var s in list)
                Output.Row(table, s.Id, s.StateReason is { } r && s.State != "running" ? $"{s.State} ({r})" : s.State, s.Isolation, s.Template, Output.Age(s.CreatedAt, now), Output.Expires(s, now));
            Output.Print(table);
            return 0;
        }, ct));
        return command;
    }

    private static Argument<string> IdArgument() => new("id") { Description = "Sandbox id (from `moat sandbox create` or `moat sandbox ls`)" };

    private static Command GetVerb()
    {
        var id = IdArgument();
        var json = Output.JsonOption();
        var command = new Command("get", "Show one sandbox: state, template, tier, limits, network, lifetime, labels and (while running) resource use")
        {
            id, json,
        };
        command.Aliases.Add("inspect");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var s = await client.GetSandboxAsync(parse.GetValue(id)!, ct);
            if (parse.GetValue(json))
            {
                Output.Json(s, j => j.SandboxDto);
                return 0;
            }
            var now = DateTimeOffset.UtcNow;
            var grid = new Grid().AddColumn(new GridColumn().NoWrap()).AddColumn();
            void Add(string name, string? value) => grid.AddRow(new Text(name), new Text(value ?? "-"));
            Add("id", s.Id);
            Add("state", s.StateReason is { } r ? $"{s.State} ({r})" : s.State);
            Add("template", s.Template);
            Add("isolation", s.Isolation);
            var res = s.Resources;
            Add("resources", $"cpus {res.Cpus?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-"}, memory {res.MemoryMiB?.ToString() ?? "-"} MiB, disk {res.DiskMiB?.ToString() ?? "-"} MiB, pids {res.Pids?.ToString() ?? "-"}");
            Add("network", s.Network.Allow is { Count: > 0 } allow ? $"{s.Network.Mode}: {string.Join(", ", allow)}" : s.Network.Mode);
            Add("created", $"{Output.Time(s.CreatedAt)} ({Output.Age(s.CreatedAt, now)} ago)");
            Add("started", Output.Time(s.StartedAt));
            Add("expires", s.EndedAt is null ? $"{Output.Time(s.ExpiresAt)} ({Output.Expires(s, now)})" : "-");
            Add("ended", Output.Time(s.EndedAt));
            Add("env", s.EnvKeys.Count > 0 ? string.Join(", ", s.EnvKeys) : "-");
            Add("metadata", s.Metadata.Count > 0 ? string.Join(", ", s.Metadata.Select(kv => $"{kv.Key}={kv.Value}")) : "-");
            if (s.Usage is { } u)
            {
                Add("cpu time", $"{u.CpuSeconds:0.###} s");
                Add("memory", $"{Output.Bytes(u.MemoryBytes)} of {Output.Bytes(u.MemoryLimitBytes)} (peak {Output.Bytes(u.MemoryPeakBytes)})");
                Add("disk", $"{Output.Bytes(u.DiskUsedBytes)} of {Output.Bytes(u.DiskLimitBytes)}");
                Add("processes", u.Pids.ToString(System.Globalization.CultureInfo.InvariantCulture));
                if (u.OomKills > 0)
                    Add("oom kills", u.OomKills.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }
            Output.Print(grid);
            return 0;
        }, ct));
        return command;
    }

    private static Command KillVerb()
    {
        var id = IdArgument();
        var command = new Command("kill", "End a sandbox now; everything in it is gone. Killing an ended sandbox is not an error")
        {
            id,
        };
        command.Aliases.Add("rm");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            await client.KillSandboxAsync(parse.GetValue(id)!, ct);
            return 0;
        }, ct));
        return command;
    }

    private static Command TimeoutVerb()
    {
        var id = IdArgument();
        var seconds = new Argument<long>("seconds") { Description = "New lifetime in seconds, counted from now (shorter or longer than before)" };
        var json = Output.JsonOption();
        var command = new Command("timeout", "Set when a running sandbox ends: SECONDS from now.\nExample: moat sandbox timeout sb... 3600")
        {
            id, seconds, json,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            long s = parse.GetValue(seconds);
            if (s <= 0)
                throw new UsageException($"SECONDS must be a positive number, got {s}");
            var sandbox = await client.SetSandboxTimeoutAsync(parse.GetValue(id)!, TimeSpan.FromSeconds(s), ct);
            if (parse.GetValue(json))
                Output.Json(sandbox, j => j.SandboxDto);
            else
                Console.Out.WriteLine($"{sandbox.Id} expires at {Output.Time(sandbox.ExpiresAt)}");
            return 0;
        }, ct));
        return command;
    }
}
