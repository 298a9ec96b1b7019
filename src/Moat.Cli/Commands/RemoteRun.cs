using Moat.Client;
using Moat.Cli.Remote;

namespace Moat.Cli.Commands;

/// <summary>`moat run` against a server (MOAT_URL): create, stream the command, destroy.</summary>
internal static class RemoteRun
{
    public static async Task<int> RunAsync(RunCommand.RunArgs a, CancellationToken cancellationToken)
    {
        using var client = RemoteCommands.ClientFromEnvironment();
        Sandbox? sandbox = null;
        try
        {
            sandbox = await client.CreateSandboxAsync(new SandboxCreateOptions
            {
                Template = a.Template,
                Isolation = a.Isolation,
                MemoryMiB = a.MemoryMiB,
                Cpus = a.Cpus,
                DiskMiB = a.DiskMiB,
                Timeout = TimeSpan.FromSeconds(a.TimeoutSeconds + 10),
                Network = a.Network == "none" ? null : new Moat.Contracts.NetworkDto { Mode = a.Network.StartsWith("allow:", StringComparison.Ordinal) ? "allow" : a.Network, Allow = a.Network.StartsWith("allow:", StringComparison.Ordinal) ? RunCommand.Policy(a.Network).Allow : null },
            }, cancellationToken);
            return await RemoteCommands.StreamCommandAsync(sandbox, a.Command, new CommandOptions
            {
                User = a.User,
                Cwd = a.Workdir,
                Env = new Dictionary<string, string>(a.Env),
                Timeout = TimeSpan.FromSeconds(a.TimeoutSeconds),
            }, cancellationToken);
        }
        catch (MoatApiException ex) when (ex.StatusCode is 400 or 404 or 422 or 503)
        {
            await Console.Error.WriteLineAsync($"moat: {ex.Message}");
            return Program.UsageError;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            await Console.Error.WriteLineAsync("moat: interrupted; the sandbox was destroyed");
            return 130;
        }
        finally
        {
            if (sandbox is not null)
                await sandbox.DisposeAsync();
        }
    }
}
