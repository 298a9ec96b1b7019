using System.CommandLine;
using Moat.Client;

namespace Moat.Cli.Remote;

/// <summary><c>moat exec ID [options] -- CMD ARGS...</c>: a command in a running sandbox, output streamed, exit code passed through.</summary>
internal static class ExecVerb
{
    public static Command Create()
    {
        var id = new Argument<string>("id") { Description = "Sandbox id" };
        var command = new Argument<string[]>("command") { Description = "The program and its arguments, after -- (no shell: use -- sh -c '...' for one)", Arity = ArgumentArity.OneOrMore };
        var user = new Option<string?>("--user") { Description = "User to run as (default: the template's, else user); root only when asked", HelpName = "USER" };
        var cwd = new Option<string?>("--cwd") { Description = "Working directory inside the sandbox", HelpName = "DIR" };
        var env = new Option<string[]>("--env") { Description = "Environment variable K=V (repeatable)", Arity = ArgumentArity.ZeroOrMore, HelpName = "K=V" };
        var timeout = new Option<double?>("--timeout") { Description = "Kill the command after SECONDS (moat then exits 124)", HelpName = "SECONDS" };
        var exec = Connection.With(new Command("exec",
            "Run a command in a running sandbox. Its stdout and stderr arrive on moat's as they are produced, moat exits with its exit code " +
            "(124 when its timeout killed it, 137 for the memory limit), and a redirected stdin is sent to it.\n" +
            "Example: echo 'print(6*7)' | moat exec sb... -- python3 -")
        {
            id, user, cwd, env, timeout, command,
        });
        exec.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            if (parse.GetValue(timeout) is { } t && !(t > 0))
                throw new UsageException($"--timeout must be a positive number of seconds, got {t}");
            if (parse.GetValue(cwd) is { } dir && !dir.StartsWith('/'))
                throw new UsageException($"--cwd must be an absolute path, got '{dir}'");
            var argv = parse.GetValue(command) ?? [];
            if (argv.Length == 0)
                throw new UsageException("no command given: moat exec ID [options] -- CMD [ARGS...]");
            var sandbox = await client.ConnectAsync(parse.GetValue(id)!, ct);
            sandbox.KillOnDispose = false;
            return await RemoteCommands.StreamCommandAsync(sandbox, argv, new CommandOptions
            {
                User = parse.GetValue(user),
                Cwd = parse.GetValue(cwd),
                Env = RemoteCommands.Pairs("--env", parse.GetValue(env)),
                Timeout = parse.GetValue(timeout) is { } s ? TimeSpan.FromSeconds(s) : null,
            }, ct);
        }, ct));
        return exec;
    }
}
