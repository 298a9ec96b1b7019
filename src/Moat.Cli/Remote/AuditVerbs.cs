using System.CommandLine;
using System.Globalization;

namespace Moat.Cli.Remote;

/// <summary><c>moat audit [filters]</c> and <c>moat audit verify</c>: the hash-chained audit trail.</summary>
internal static class AuditVerbs
{
    public static Command Create()
    {
        var tenant = new Option<string?>("--tenant") { Description = "Only this tenant (operator key)" };
        var sandbox = new Option<string?>("--sandbox") { Description = "Only this sandbox" };
        var kind = new Option<string?>("--kind") { Description = "api, command, file, lifecycle or network" };
        kind.AcceptOnlyFromAmong("api", "command", "file", "lifecycle", "network");
        var since = new Option<string?>("--since") { Description = "From this time (ISO 8601 or Unix seconds)" };
        var until = new Option<string?>("--until") { Description = "Until this time" };
        var limit = new Option<int?>("--limit") { Description = "At most this many records (default 1000)" };
        var jsonl = new Option<bool>("--jsonl") { Description = "Export as JSON lines (every field, hashes included)" };
        var group = Connection.With(new Command("audit", "The audit trail: API actions, commands, file writes, lifecycle, network attempts (needs an admin key).\nExample: moat audit --kind command --sandbox sb... ; moat audit --jsonl > audit.jsonl")
        {
            tenant, sandbox, kind, since, until, limit, jsonl,
        });
        group.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var query = new Dictionary<string, string>();
            void Add(string name, string? value)
            {
                if (value is not null)
                    query[name] = value;
            }
            Add("tenant", parse.GetValue(tenant));
            Add("sandbox", parse.GetValue(sandbox));
            Add("kind", parse.GetValue(kind));
            Add("since", parse.GetValue(since));
            Add("until", parse.GetValue(until));
            Add("limit", parse.GetValue(limit)?.ToString(CultureInfo.InvariantCulture));
            if (parse.GetValue(jsonl))
            {
                Console.Out.Write(await client.ExportAuditAsync(query, ct));
                return 0;
            }
            var table = Output.Table("seq", "time", "kind", "tenant", "key", "sandbox", "action", "result", "data");
            foreach (var r in await client.QueryAuditAsync(query, ct))
                Output.Row(table, r.Seq.ToString(CultureInfo.InvariantCulture), Output.Time(r.Time), r.Kind, r.TenantId ?? "-", r.KeyId ?? "-", r.SandboxId ?? "-", r.Action, r.Result ?? "-", r.Data ?? "");
            Output.Print(table);
            return 0;
        }, ct));
        group.Subcommands.Add(VerifyVerb());
        return group;
    }

    private static Command VerifyVerb()
    {
        var command = new Command("verify", "Check the whole chain (operator key): exit 0 when intact, 1 naming the first edited or missing record");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var result = await client.VerifyAuditAsync(ct);
            if (result.Valid)
            {
                Console.Out.WriteLine($"audit chain intact: {result.Records} records");
                return 0;
            }
            await Console.Error.WriteLineAsync($"moat: audit chain broken at record {result.FirstBadSeq}: {result.Problem}");
            return 1;
        }, ct));
        return command;
    }
}
