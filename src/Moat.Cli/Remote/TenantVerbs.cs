using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Moat.Contracts;

namespace Moat.Cli.Remote;

/// <summary><c>moat tenant ls|create|show|set|rm|key</c>: tenants, their quotas, rate limits and keys (needs the operator key).</summary>
internal static class TenantVerbs
{
    private static readonly TenancyJson Indented = new(new JsonSerializerOptions(TenancyJson.Default.Options) { WriteIndented = true });

    public static Command Create()
    {
        var group = Connection.With(new Command("tenant", "Tenants, their quotas, rate limits and keys (needs the operator key)"));
        group.Subcommands.Add(ListVerb());
        group.Subcommands.Add(CreateVerb());
        group.Subcommands.Add(ShowVerb());
        group.Subcommands.Add(SetVerb());
        group.Subcommands.Add(RemoveVerb());
        group.Subcommands.Add(KeyVerb());
        return group;
    }

    private sealed record QuotaOptions(Option<int?> Sandboxes, Option<double?> Vcpus, Option<long?> Memory, Option<long?> Disk, Option<long?> Lifetime, Option<string?> Tiers, Option<int?> Requests, Option<int?> Creates)
    {
        public static QuotaOptions Make() => new(
            new Option<int?>("--max-sandboxes") { Description = "Live sandboxes at once" },
            new Option<double?>("--max-vcpus") { Description = "vCPUs of all live sandboxes" },
            new Option<long?>("--max-memory") { Description = "Memory of all live sandboxes, MiB" },
            new Option<long?>("--max-disk") { Description = "Disk of all live sandboxes, MiB" },
            new Option<long?>("--max-lifetime") { Description = "Longest lifetime of a sandbox, seconds" },
            new Option<string?>("--tiers") { Description = "Allowed tiers, comma-separated (microvm,gvisor,container)" },
            new Option<int?>("--requests-per-minute") { Description = "API request rate" },
            new Option<int?>("--creates-per-minute") { Description = "Sandbox create rate" });

        public void AddTo(Command command)
        {
            command.Options.Add(Sandboxes);
            command.Options.Add(Vcpus);
            command.Options.Add(Memory);
            command.Options.Add(Disk);
            command.Options.Add(Lifetime);
            command.Options.Add(Tiers);
            command.Options.Add(Requests);
            command.Options.Add(Creates);
        }

        public bool AnyQuota(ParseResult p) => p.GetValue(Sandboxes) is not null || p.GetValue(Vcpus) is not null || p.GetValue(Memory) is not null || p.GetValue(Disk) is not null || p.GetValue(Lifetime) is not null || p.GetValue(Tiers) is not null;

        public bool AnyRate(ParseResult p) => p.GetValue(Requests) is not null || p.GetValue(Creates) is not null;

        public QuotasDto Quotas(ParseResult p, QuotasDto? current = null) => new()
        {
            MaxSandboxes = p.GetValue(Sandboxes) ?? current?.MaxSandboxes,
            MaxVcpus = p.GetValue(Vcpus) ?? current?.MaxVcpus,
            MaxMemoryMiB = p.GetValue(Memory) ?? current?.MaxMemoryMiB,
            MaxDiskMiB = p.GetValue(Disk) ?? current?.MaxDiskMiB,
            MaxLifetimeSeconds = p.GetValue(Lifetime) ?? current?.MaxLifetimeSeconds,
            AllowedTiers = p.GetValue(Tiers) is { } t ? t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : current?.AllowedTiers,
        };

        public RateLimitsDto Rates(ParseResult p, RateLimitsDto? current = null) => new()
        {
            RequestsPerMinute = p.GetValue(Requests) ?? current?.RequestsPerMinute,
            CreatesPerMinute = p.GetValue(Creates) ?? current?.CreatesPerMinute,
        };
    }

    private static Command ListVerb()
    {
        var json = Output.JsonOption();
        var command = new Command("ls", "List tenants with their quotas and rate limits") { json };
        command.Aliases.Add("list");
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var tenants = await client.ListTenantsAsync(ct);
            if (parse.GetValue(json))
            {
                Console.Out.WriteLine(JsonSerializer.Serialize(new TenantListResponse(tenants), Indented.TenantListResponse));
                return 0;
            }
            var table = Output.Table("id", "name", "created", "quotas", "rate limits");
            foreach (var t in tenants)
                Output.Row(table, t.Id, t.Name, Output.Time(t.CreatedAt), Describe(t.Quotas), Describe(t.RateLimits));
            Output.Print(table);
            return 0;
        }, ct));
        return command;
    }

    private static Command CreateVerb()
    {
        var id = new Argument<string?>("id") { Description = "Tenant id (lowercase letters, digits, '-'); generated when absent", Arity = ArgumentArity.ZeroOrOne };
        var name = new Option<string?>("--name") { Description = "Human name" };
        var json = Output.JsonOption();
        var quotas = QuotaOptions.Make();
        var command = new Command("create", "Create a tenant.\nExample: moat tenant create acme --max-sandboxes 10 --max-vcpus 8 --tiers gvisor,microvm") { id, name, json };
        quotas.AddTo(command);
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var tenant = await client.CreateTenantAsync(new CreateTenantRequest { Id = parse.GetValue(id), Name = parse.GetValue(name), Quotas = quotas.Quotas(parse), RateLimits = quotas.Rates(parse) }, ct);
            Print(tenant, parse.GetValue(json));
            return 0;
        }, ct));
        return command;
    }

    private static Command ShowVerb()
    {
        var id = new Argument<string>("id") { Description = "Tenant id" };
        var json = Output.JsonOption();
        var command = new Command("show", "Show a tenant") { id, json };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            Print(await client.GetTenantAsync(parse.GetValue(id)!, ct), parse.GetValue(json));
            return 0;
        }, ct));
        return command;
    }

    private static Command SetVerb()
    {
        var id = new Argument<string>("id") { Description = "Tenant id" };
        var name = new Option<string?>("--name") { Description = "Human name" };
        var json = Output.JsonOption();
        var quotas = QuotaOptions.Make();
        var command = new Command("set", "Change a tenant's name, quotas or rate limits (options not given keep their value)") { id, name, json };
        quotas.AddTo(command);
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var current = await client.GetTenantAsync(parse.GetValue(id)!, ct);
            var tenant = await client.UpdateTenantAsync(current.Id, new UpdateTenantRequest
            {
                Name = parse.GetValue(name),
                Quotas = quotas.AnyQuota(parse) ? quotas.Quotas(parse, current.Quotas) : null,
                RateLimits = quotas.AnyRate(parse) ? quotas.Rates(parse, current.RateLimits) : null,
            }, ct);
            Print(tenant, parse.GetValue(json));
            return 0;
        }, ct));
        return command;
    }

    private static Command RemoveVerb()
    {
        var id = new Argument<string>("id") { Description = "Tenant id" };
        var command = new Command("rm", "Delete a tenant (it must have no live sandboxes); its keys stop working at once") { id };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            await client.DeleteTenantAsync(parse.GetValue(id)!, ct);
            return 0;
        }, ct));
        return command;
    }

    private static Command KeyVerb()
    {
        var group = new Command("key", "Keys of a tenant");
        var tenant = new Argument<string>("tenant") { Description = "Tenant id" };
        var name = new Option<string?>("--name") { Description = "A label" };
        var role = new Option<string?>("--role") { Description = "admin (default), member or read-only" };
        role.AcceptOnlyFromAmong("admin", "member", "read-only");
        var create = new Command("create", "Mint a key for a tenant and print it (shown this once)") { tenant, name, role };
        create.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var key = await client.CreateTenantKeyAsync(parse.GetValue(tenant)!, parse.GetValue(name), parse.GetValue(role), ct);
            Console.Out.WriteLine(key.Key);
            return 0;
        }, ct));
        var listTenant = new Argument<string>("tenant") { Description = "Tenant id" };
        var list = new Command("ls", "List a tenant's keys by prefix, with last use") { listTenant };
        list.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var table = Output.Table("id", "prefix", "name", "role", "created", "last used", "revoked");
            foreach (var k in await client.ListTenantKeysAsync(parse.GetValue(listTenant)!, ct))
                Output.Row(table, k.Id, k.Prefix, k.Name is { Length: > 0 } n ? n : "-", k.Role, Output.Time(k.CreatedAt), Output.Time(k.LastUsedAt), Output.Time(k.RevokedAt));
            Output.Print(table);
            return 0;
        }, ct));
        group.Subcommands.Add(create);
        group.Subcommands.Add(list);
        return group;
    }

    private static void Print(TenantDto tenant, bool json)
    {
        if (json)
        {
            Console.Out.WriteLine(JsonSerializer.Serialize(tenant, Indented.TenantDto));
            return;
        }
        Console.Out.WriteLine($"{tenant.Id}\t{tenant.Name}\tquotas: {Describe(tenant.Quotas)}\trate limits: {Describe(tenant.RateLimits)}");
    }

    private static string Describe(QuotasDto q)
    {
        var parts = new List<string>();
        if (q.MaxSandboxes is { } s)
            parts.Add($"sandboxes {s}");
        if (q.MaxVcpus is { } v)
            parts.Add(string.Create(CultureInfo.InvariantCulture, $"vcpus {v}"));
        if (q.MaxMemoryMiB is { } m)
            parts.Add($"memory {m} MiB");
        if (q.MaxDiskMiB is { } d)
            parts.Add($"disk {d} MiB");
        if (q.MaxLifetimeSeconds is { } l)
            parts.Add($"lifetime {l} s");
        if (q.AllowedTiers is { } t)
            parts.Add("tiers " + string.Join(',', t));
        return parts.Count == 0 ? "unlimited" : string.Join(", ", parts);
    }

    private static string Describe(RateLimitsDto r)
    {
        var parts = new List<string>();
        if (r.RequestsPerMinute is { } q)
            parts.Add($"{q} req/min");
        if (r.CreatesPerMinute is { } c)
            parts.Add($"{c} creates/min");
        return parts.Count == 0 ? "unlimited" : string.Join(", ", parts);
    }
}
