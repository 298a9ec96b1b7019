using System.CommandLine;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Cli.Embedded;
using Spectre.Console;

namespace Moat.Cli.Commands;

/// <summary>`moat doctor`: what this host can run, and why not.</summary>
internal static class DoctorCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var command = new Command("doctor", "Check what this host can run: each isolation tier with the reason it is or isn't usable, the agent, the templates.") { json };
        command.SetAction(async (parse, cancellationToken) =>
        {
            await using var node = EmbeddedNode.Create(quiet: true);
            var manager = node.Services.GetRequiredService<SandboxManager>();
            var tiers = await manager.Runtimes.StatusAsync(cancellationToken);
            var options = node.Services.GetRequiredService<IOptions<SandboxManagerOptions>>().Value;
            var checks = new List<(string Check, bool Ok, string Detail)>
            {
                ("running as root", Environment.UserName == "root", Environment.UserName == "root" ? "yes" : $"running as {Environment.UserName}: sandboxes need root"),
                ("agent", Moat.Runtimes.Oci.OciBundleRuntime.AgentProblem(options.AgentDirectory) is null, Moat.Runtimes.Oci.OciBundleRuntime.AgentProblem(options.AgentDirectory) ?? options.AgentDirectory),
                ("built-in template", node.BuiltinTemplatesPresent(), node.BuiltinTemplatesPresent() ? node.TemplatesDirectory : $"missing in {node.TemplatesDirectory}: run ./run.sh"),
                ("data directory", CanWrite(options.DataDirectory), options.DataDirectory),
            };
            if (parse.GetValue(json))
            {
                var result = new System.Text.Json.Nodes.JsonObject
                {
                    ["tiers"] = new System.Text.Json.Nodes.JsonArray([.. tiers.Select(t => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject { ["name"] = t.Tier.Name(), ["usable"] = t.Usable, ["reason"] = t.Reason })]),
                    ["checks"] = new System.Text.Json.Nodes.JsonArray([.. checks.Select(c => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject { ["check"] = c.Check, ["ok"] = c.Ok, ["detail"] = c.Detail })]),
                };
                Console.WriteLine(result.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            }
            else
            {
                var table = new Table().Title("Isolation tiers").AddColumn("tier").AddColumn("usable").AddColumn("why").AddColumn("details");
                foreach (var t in tiers)
                    table.AddRow(t.Tier.Name(), t.Usable ? "[green]yes[/]" : "[red]no[/]", Markup.Escape(t.Reason), Markup.Escape(string.Join(", ", t.Details.Select(kv => $"{kv.Key}={kv.Value}"))));
                AnsiConsole.Write(table);
                var host = new Table().Title("Host").AddColumn("check").AddColumn("ok").AddColumn("detail");
                foreach (var c in checks)
                    host.AddRow(c.Check, c.Ok ? "[green]yes[/]" : "[red]no[/]", Markup.Escape(c.Detail));
                AnsiConsole.Write(host);
            }
            return tiers.Any(t => t.Usable) && checks.All(c => c.Ok) ? 0 : 1;
        });
        return command;
    }

    private static bool CanWrite(string directory)
    {
        try
        {
            Directory.CreateDirectory(directory);
            var probe = Path.Combine(directory, $".doctor-{Environment.ProcessId}");
            File.WriteAllText(probe, "");
            File.Delete(probe);
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
