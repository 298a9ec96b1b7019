using System.CommandLine;
using Moat.Contracts;

namespace Moat.Cli.Remote;

/// <summary><c>moat key create|ls|revoke</c>: API keys of the caller's tenant (needs an admin key).</summary>
internal static class KeyVerbs
{
    public static Command Create()
    {
        var group = Connection.With(new Command("key", "API keys of your tenant: create, list, revoke (needs an admin key)"));
        group.Subcommands.Add(CreateVerb());
        group.Subcommands.Add(ListVerb());
        group.Subcommands.Add(RevokeVerb());
        return group;
    }

    private static Command CreateVerb()
    {
        var name = new Option<string?>("--name") { Description = "A label to recognise the key by" };
        var role = new Option<string?>("--role") { Description = "admin, member (default: sandboxes, files, commands) or read-only" };
        role.AcceptOnlyFromAmong("admin", "member", "read-only");
        var json = Output.JsonOption();
        var command = new Command("create", "Create an API key and print it. It is shown this once and only its hash is kept: store it now.\nExample: export MOAT_API_KEY=$(moat key create --name ci)")
        {
            name, role, json,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var key = await client.CreateKeyAsync(parse.GetValue(name), parse.GetValue(role), ct);
            if (parse.GetValue(json))
                Output.Json(key, j => j.ApiKeyDto);
            else
            {
                Console.Out.WriteLine(key.Key);
                if (!Console.IsErrorRedirected)
                    await Console.Error.WriteLineAsync($"moat: key {key.Id} ({key.Role}) created; it is not shown again");
            }
            return 0;
        }, ct));
        return command;
    }

    private static Command ListVerb()
    {
        var json = Output.JsonOption();
        var command = new Command("ls", "List the tenant's API keys (never their secrets): id, prefix, name, role, created, last used, revoked")
        {
            json,
        };
        command.Aliases.Add("list");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var keys = await client.ListKeysAsync(ct);
            if (parse.GetValue(json))
            {
                Output.Json(keys.ToList(), j => j.ListApiKeyDto);
                return 0;
            }
            var table = Output.Table("id", "prefix", "name", "role", "created", "last used", "revoked");
            foreach (var k in keys)
                Output.Row(table, k.Id, k.Prefix, k.Name is { Length: > 0 } n ? n : "-", k.Role, Output.Time(k.CreatedAt), Output.Time(k.LastUsedAt), Output.Time(k.RevokedAt));
            Output.Print(table);
            return 0;
        }, ct));
        return command;
    }

    private static Command RevokeVerb()
    {
        var id = new Argument<string>("id") { Description = "Key id (the ID column of `moat key ls`)" };
        var command = new Command("revoke", "Revoke an API key; requests with it fail from now on")
        {
            id,
        };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            await client.RevokeKeyAsync(parse.GetValue(id)!, ct);
            return 0;
        }, ct));
        return command;
    }
}
