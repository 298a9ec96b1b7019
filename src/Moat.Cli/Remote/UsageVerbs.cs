using System.CommandLine;
using System.Globalization;

namespace Moat.Cli.Remote;

/// <summary><c>moat usage</c>: vCPU-seconds, GiB-seconds, GiB-hours and cost per tenant per day.</summary>
internal static class UsageVerbs
{
    public static Command Create()
    {
        var from = new Option<string?>("--from") { Description = "First day, yyyy-MM-dd (default: 30 days ago)" };
        var to = new Option<string?>("--to") { Description = "Last day, yyyy-MM-dd (default: today)" };
        var tenant = new Option<string?>("--tenant") { Description = "Only this tenant (operator key)" };
        var csv = new Option<bool>("--csv") { Description = "Print CSV" };
        var command = Connection.With(new Command("usage", "Usage per tenant per day in billing units (UTC days)") { from, to, tenant, csv });
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            if (parse.GetValue(csv))
            {
                Console.Out.Write(await client.GetUsageCsvAsync(parse.GetValue(from), parse.GetValue(to), parse.GetValue(tenant), ct));
                return 0;
            }
            var table = Output.Table("tenant", "day", "vCPU-s", "memory GiB-s", "disk GiB-h", "sandbox-s", "cost");
            foreach (var d in await client.GetUsageAsync(parse.GetValue(from), parse.GetValue(to), parse.GetValue(tenant), ct))
            {
                Output.Row(table, d.TenantId, d.Day, F(d.VcpuSeconds), F(d.MemoryGiBSeconds), F(d.DiskGiBHours), F(d.SandboxSeconds), F(d.Cost) + " " + d.Currency);
            }
            Output.Print(table);
            return 0;
        }, ct));
        return command;
    }

    private static string F(double value) => value.ToString("0.###", CultureInfo.InvariantCulture);
}
