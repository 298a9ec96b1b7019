using System.CommandLine;
using Microsoft.AspNetCore.Builder;
using Moat.Server;

namespace Moat.Cli.Commands;

/// <summary>`moat serve`: the control plane and this machine as a node.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var urls = new Option<string?>("--urls") { Description = "Addresses to listen on (default http://127.0.0.1:8080)" };
        var data = new Option<string?>("--data") { Description = "Data directory (default /var/lib/moat, or MOAT_DATA)" };
        var command = new Command("serve", "Run the Moat server: REST API, OpenAPI at /openapi/v1.json, sandboxes on this machine. Other settings: --Moat:Key=Value, Moat__Key env vars, or MOAT_CONFIG=moat.json.")
        {
            urls,
            data,
        };
        command.TreatUnmatchedTokensAsErrors = false;
        command.SetAction(async (parse, cancellationToken) =>
        {
            var args = new List<string>(parse.UnmatchedTokens);
            if (parse.GetValue(urls) is { } u)
                args.Add($"--urls={u}");
            if (parse.GetValue(data) is { } d)
                args.Add($"--Moat:DataDirectory={Path.GetFullPath(d)}");
            var app = MoatServer.Build([.. args]);
            await Microsoft.Extensions.Hosting.HostingAbstractionsHostExtensions.RunAsync(app, cancellationToken);
            return 0;
        });
        return command;
    }
}
