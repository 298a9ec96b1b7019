using System.CommandLine;
using System.CommandLine.Parsing;
using Microsoft.Extensions.DependencyInjection;
using Moat.Cli.Embedded;
using Moat.Core.Agent;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Node;
using Spectre.Console;

namespace Moat.Cli.Commands;

/// <summary>
/// `moat run`: an ephemeral sandbox for one command. Output is streamed as produced, the exit
/// code is the command's (124 for the timeout, 137 for memory), the sandbox is destroyed.
/// </summary>
internal static class RunCommand
{
    /// <summary>The options of `moat run`, parsed and checked; shared by the embedded and remote paths.</summary>
    internal sealed record RunArgs(string? Isolation, string Template, string Network, int? MemoryMiB, double? Cpus, int? DiskMiB, int TimeoutSeconds, IReadOnlyDictionary<string, string> Env, string? User, string? Workdir, IReadOnlyList<string> Command);

    public static Command Create()
    {
        var isolation = new Option<string?>("--isolation") { Description = "microvm, gvisor or container (default: the strongest tier this host runs)" };
        var template = new Option<string>("--template") { Description = "Template to run (default: base)", DefaultValueFactory = _ => "base" };
        var network = new Option<string>("--network") { Description = "none (default), open, or allow:HOST[,HOST...]", DefaultValueFactory = _ => "none" };
        var memory = new Option<int?>("--memory") { Description = "Memory limit in MiB" };
        var cpus = new Option<double?>("--cpus") { Description = "CPU limit (fractions allowed)" };
        var disk = new Option<int?>("--disk") { Description = "Writable disk in MiB" };
        var timeout = new Option<int>("--timeout") { Description = "Seconds before the sandbox is killed (exit 124)", DefaultValueFactory = _ => 300 };
        var env = new Option<string[]>("--env") { Description = "Environment variable K=V (repeatable)", AllowMultipleArgumentsPerToken = false, Arity = ArgumentArity.ZeroOrMore };
        var user = new Option<string?>("--user") { Description = "User to run as (default: user, uid 1000); root only when asked" };
        var workdir = new Option<string?>("--workdir") { Description = "Working directory inside the sandbox" };
        var command = new Argument<string[]>("command") { Description = "The command and its arguments, after --", Arity = ArgumentArity.OneOrMore };
        var run = new Command("run", "Run one command in a fresh sandbox and destroy it. Embedded (no server needed) unless MOAT_URL is set.\nExample: moat run --isolation container -- python3 -c 'print(42)'")
        {
            isolation, template, network, memory, cpus, disk, timeout, env, user, workdir, command,
        };
        run.SetAction(async (parse, cancellationToken) =>
        {
            RunArgs args;
            try
            {
                args = Check(new RunArgs(parse.GetValue(isolation), parse.GetValue(template)!, parse.GetValue(network)!, parse.GetValue(memory), parse.GetValue(cpus), parse.GetValue(disk), parse.GetValue(timeout), ParseEnv(parse.GetValue(env) ?? []), parse.GetValue(user), parse.GetValue(workdir), parse.GetValue(command) ?? []));
            }
            catch (UsageException ex)
            {
                await Console.Error.WriteLineAsync($"moat: {ex.Message}");
                return Program.UsageError;
            }
            if (UnknownOption(parse, command) is { } unknown)
            {
                await Console.Error.WriteLineAsync($"moat: unknown option '{unknown}' (see moat run --help; the command goes after --)");
                return Program.UsageError;
            }
            if (Environment.GetEnvironmentVariable("MOAT_URL") is { Length: > 0 })
                return await RemoteRun.RunAsync(args, cancellationToken);
            return await RunEmbeddedAsync(args, cancellationToken);
        });
        return run;
    }

    /// <summary>
    /// An option moat does not know, written before the <c>--</c>: System.CommandLine hands it to
    /// the command argument, which would run it in the sandbox. Everything after <c>--</c> is the
    /// command's own.
    /// </summary>
    private static string? UnknownOption(ParseResult parse, Argument<string[]> command)
    {
        var result = parse.GetResult(command);
        if (result is null)
            return null;
        foreach (var token in result.Tokens)
        {
            int index = parse.Tokens.ToList().IndexOf(token);
            bool afterDoubleDash = parse.Tokens.Take(index).Any(t => t.Type == TokenType.DoubleDash);
            if (afterDoubleDash)
                break;
            if (token.Value.StartsWith('-'))
                return token.Value;
        }
        return null;
    }

    /// <summary>A mistake in how moat was called: exit 2.</summary>
    internal sealed class UsageException(string message) : Exception(message);

    private static RunArgs Check(RunArgs a)
    {
        if (a.Isolation is not null && IsolationTiers.TryParse(a.Isolation) is null)
            throw new UsageException($"--isolation must be microvm, gvisor or container, got '{a.Isolation}'");
        if (a.TimeoutSeconds <= 0)
            throw new UsageException($"--timeout must be a positive number of seconds, got {a.TimeoutSeconds}");
        if (a.MemoryMiB is <= 0)
            throw new UsageException($"--memory must be a positive number of MiB, got {a.MemoryMiB}");
        if (a.DiskMiB is <= 0)
            throw new UsageException($"--disk must be a positive number of MiB, got {a.DiskMiB}");
        if (a.Cpus is { } c && !(c > 0))
            throw new UsageException($"--cpus must be positive, got {c}");
        if (a.Network != "none" && a.Network != "open" && !a.Network.StartsWith("allow:", StringComparison.Ordinal))
            throw new UsageException($"--network must be none, open or allow:HOST[,HOST...], got '{a.Network}'");
        if (a.User is { } u && !CommandSpec.ValidUser(u))
            throw new UsageException($"--user '{u}' is not a valid user name or uid");
        if (a.Workdir is { } w && !w.StartsWith('/'))
            throw new UsageException($"--workdir must be an absolute path, got '{w}'");
        if (a.Command.Count == 0)
            throw new UsageException("no command given: moat run [options] -- CMD [ARGS...]");
        return a;
    }

    internal static Dictionary<string, string> ParseEnv(IEnumerable<string> pairs)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in pairs)
        {
            int eq = pair.IndexOf('=');
            if (eq <= 0)
                throw new UsageException($"--env takes K=V, got '{pair}'");
            env[pair[..eq]] = pair[(eq + 1)..];
        }
        return env;
    }

    /// <summary>The sandbox network policy a --network value asks for.</summary>
    internal static NetworkPolicy Policy(string network) => network switch
    {
        "none" => NetworkPolicy.None,
        "open" => new NetworkPolicy(NetworkMode.Open, []),
        _ => new NetworkPolicy(NetworkMode.Allow, network["allow:".Length..].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)),
    };

    private static async Task<int> RunEmbeddedAsync(RunArgs a, CancellationToken cancellationToken)
    {
        await using var node = EmbeddedNode.Create(quiet: true);
        var manager = node.Services.GetRequiredService<SandboxManager>();
        try
        {
            await ImportTemplatesAsync(node, cancellationToken);
            await manager.RecoverAsync(cancellationToken);
            var tier = a.Isolation is { } name ? IsolationTiers.TryParse(name)!.Value : await manager.Runtimes.DefaultTierAsync(cancellationToken);
            // An unavailable tier is a usage error (exit 2), not a failure of the command.
            await manager.Runtimes.ResolveAsync(tier, cancellationToken);
            var defaults = manager.Options.DefaultResources;
            var spec = new OneShotSpec
            {
                Sandbox = new SandboxSpec
                {
                    Template = a.Template,
                    Tier = tier,
                    Resources = defaults with
                    {
                        MemoryMiB = a.MemoryMiB ?? defaults.MemoryMiB,
                        Cpus = a.Cpus ?? defaults.Cpus,
                        DiskMiB = a.DiskMiB ?? defaults.DiskMiB,
                    },
                    Timeout = TimeSpan.FromSeconds(a.TimeoutSeconds),
                    Network = Policy(a.Network),
                },
                Command = new CommandSpec { Argv = a.Command, User = a.User, Cwd = a.Workdir, Env = a.Env },
                StdinStream = Console.IsInputRedirected ? Console.OpenStandardInput() : null,
            };
            using var stdout = Console.OpenStandardOutput();
            using var stderr = Console.OpenStandardError();
            var result = await manager.RunOnceAsync(spec, "default", async (chunk, ct) =>
            {
                var sink = chunk.Stream == OutputStream.Stdout ? stdout : stderr;
                await sink.WriteAsync(chunk.Data, ct);
                await sink.FlushAsync(ct);
            }, cancellationToken);
            if (result.Reason is { } reason)
                await Console.Error.WriteLineAsync($"moat: {reason}");
            return result.ExitCode;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            await Console.Error.WriteLineAsync("moat: interrupted; the sandbox was destroyed");
            return 130;
        }
        catch (MoatException ex) when (ex.Code is SandboxManager.CommandNotFound or SandboxManager.CommandNotExecutable)
        {
            // The command could not start: the shell's conventions (127 not found, 126 not runnable).
            await Console.Error.WriteLineAsync($"moat: {ex.Message}");
            return ex.Code == SandboxManager.CommandNotFound ? 127 : 126;
        }
        catch (MoatException ex) when (ex.Kind is ErrorKind.InvalidArgument or ErrorKind.Unavailable or ErrorKind.NotFound or ErrorKind.QuotaExceeded && ex.Code is not "sandbox_not_found")
        {
            await Console.Error.WriteLineAsync($"moat: {ex.Message}");
            return Program.UsageError;
        }
        catch (MoatException ex)
        {
            await Console.Error.WriteLineAsync($"moat: {ex.Message} ({ex.Code})");
            return 1;
        }
    }

    /// <summary>First use on a machine: import the built-in templates, with a spinner (it takes seconds).</summary>
    private static async Task ImportTemplatesAsync(EmbeddedNode node, CancellationToken cancellationToken)
    {
        var templates = node.Services.GetRequiredService<BuiltinTemplates>();
        var store = node.Services.GetRequiredService<Moat.Core.Templates.ITemplateStore>();
        bool missing = false;
        foreach (var name in BuiltinTemplates.Known.Keys)
            missing |= await store.ResolveAsync(name, "", cancellationToken) is null;
        if (!missing || Console.IsErrorRedirected)
        {
            await templates.EnsureAsync(cancellationToken);
            return;
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        await console.Status().StartAsync("Importing the built-in templates (first run only)…", _ => templates.EnsureAsync(cancellationToken));
    }
}
