using System.CommandLine;
using System.Net.Sockets;
using Moat.Client;

namespace Moat.Cli.Remote;

/// <summary>
/// The verbs that talk to a Moat server over its REST API (<c>moat sandbox|exec|files|template|key</c>),
/// through the C# SDK. The server is <c>--url</c>, else <c>MOAT_URL</c>, else http://127.0.0.1:8080;
/// the key is <c>--api-key</c>, else <c>MOAT_API_KEY</c>. Exit codes: 0 done, 1 the server refused or
/// failed, 2 bad usage; <c>moat exec</c> exits with the command's own code.
/// </summary>
public static class RemoteCommands
{
    /// <summary>Exit status when the server refused or failed the request.</summary>
    public const int ApiError = 1;

    /// <summary>Exit status for a mistake in how moat was called.</summary>
    public const int UsageError = 2;

    /// <summary>Exit status of a command its timeout killed (as timeout(1) does).</summary>
    public const int TimedOutExit = 124;

    /// <summary>Exit status of a command the memory limit killed (128 + SIGKILL).</summary>
    public const int OomExit = 137;

    /// <summary>Exit status after Ctrl+C.</summary>
    public const int InterruptedExit = 130;

    /// <summary>Adds the remote verbs to the command tree.</summary>
    /// <param name="root">The <c>moat</c> root command.</param>
    public static void AddTo(RootCommand root)
    {
        ArgumentNullException.ThrowIfNull(root);
        root.Subcommands.Add(NetworkVerbs.AddTo(SandboxVerbs.Create()));
        root.Subcommands.Add(ExecVerb.Create());
        root.Subcommands.Add(FilesVerbs.Create());
        root.Subcommands.Add(TemplateVerbs.Create());
        root.Subcommands.Add(SnapshotVerbs.Create());
        root.Subcommands.Add(KeyVerbs.Create());
        root.Subcommands.Add(TenantVerbs.Create());
        root.Subcommands.Add(AuditVerbs.Create());
        root.Subcommands.Add(UsageVerbs.Create());
    }

    /// <summary>A client for <c>MOAT_URL</c> / <c>MOAT_API_KEY</c>.</summary>
    /// <returns>The client; the caller disposes it.</returns>
    /// <exception cref="ArgumentException"><c>MOAT_URL</c> is not an http(s) URL.</exception>
    public static MoatClient ClientFromEnvironment() => new(Connection.Options(null, null));

    /// <summary>The sandbox's record once it has ended (polled briefly), or null if it keeps running.</summary>
    private static async Task<Moat.Contracts.SandboxDto?> EndedAsync(Sandbox sandbox, CancellationToken cancellationToken)
    {
        for (int i = 0; i < 100; i++)
        {
            var info = await sandbox.GetInfoAsync(cancellationToken).ConfigureAwait(false);
            if (info.State is "stopped" or "failed")
                return info;
            await Task.Delay(100, cancellationToken).ConfigureAwait(false);
        }
        return null;
    }

    /// <summary>
    /// Runs <paramref name="command"/> in <paramref name="sandbox"/>, copying its stdout and stderr to
    /// this process's byte for byte as they are produced, and sending this process's stdin when it
    /// is redirected (and <paramref name="options"/> gives none). Returns the command's exit code:
    /// 124 when its timeout killed it and 137 for the memory limit, each with a one-line reason on stderr.
    /// </summary>
    /// <param name="sandbox">Where to run.</param>
    /// <param name="command">Program and arguments.</param>
    /// <param name="options">User, directory, environment, timeout (output settings are overridden).</param>
    /// <param name="cancellationToken">Stops the command (the server kills it).</param>
    /// <returns>The exit code moat should exit with.</returns>
    public static async Task<int> StreamCommandAsync(Sandbox sandbox, IReadOnlyList<string> command, CommandOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        ArgumentNullException.ThrowIfNull(options);
        options.RawOutput = true;
        options.OnStdout = null;
        options.OnStderr = null;
        if (options.Stdin is null && options.StdinBytes is null && Console.IsInputRedirected)
            options.StdinBytes = await ReadStdinAsync(cancellationToken).ConfigureAwait(false);
        await using var stdout = Console.OpenStandardOutput();
        await using var stderr = Console.OpenStandardError();
        CommandEvent.Exited? exit = null;
        try
        {
            await foreach (var e in sandbox.Commands.StreamAsync(command, options, cancellationToken).ConfigureAwait(false))
            {
                switch (e)
                {
                    case CommandEvent.StdoutBytes o:
                        await stdout.WriteAsync(o.Data, cancellationToken).ConfigureAwait(false);
                        await stdout.FlushAsync(cancellationToken).ConfigureAwait(false);
                        break;
                    case CommandEvent.StderrBytes o:
                        await stderr.WriteAsync(o.Data, cancellationToken).ConfigureAwait(false);
                        await stderr.FlushAsync(cancellationToken).ConfigureAwait(false);
                        break;
                    case CommandEvent.Exited x:
                        exit = x;
                        break;
                }
            }
        }
        catch (MoatApiException ex) when (ex.Code is "command_not_found" or "command_not_executable")
        {
            // The program could not start: the shell's conventions.
            await Console.Error.WriteLineAsync($"moat: {ex.Message}").ConfigureAwait(false);
            return ex.Code == "command_not_found" ? 127 : 126;
        }
        catch (MoatStreamException)
        {
            // The sandbox itself ended under the command (its lifetime, or gVisor's OOM): say why.
            if (await EndedAsync(sandbox, cancellationToken).ConfigureAwait(false) is { } ended)
            {
                if (ended.StateReason == "timeout")
                {
                    await Console.Error.WriteLineAsync($"moat: sandbox {sandbox.Id} reached its timeout").ConfigureAwait(false);
                    return TimedOutExit;
                }
                if (ended.StateReason?.StartsWith("oom", StringComparison.Ordinal) == true)
                {
                    await Console.Error.WriteLineAsync($"moat: sandbox {sandbox.Id} was killed for exceeding its memory limit ({ended.Resources.MemoryMiB} MiB)").ConfigureAwait(false);
                    return OomExit;
                }
                await Console.Error.WriteLineAsync($"moat: sandbox {sandbox.Id} failed: {ended.StateReason}").ConfigureAwait(false);
                return 255;
            }
            throw;
        }
        if (exit is null)
            throw new MoatStreamException("stream_incomplete", "the command's output ended before it exited");
        if (exit.TimedOut)
        {
            var limit = options.Timeout is { } t ? $" of {t.TotalSeconds:0.###} s" : "";
            await Console.Error.WriteLineAsync($"moat: the command was killed by its timeout{limit} in sandbox {sandbox.Id}").ConfigureAwait(false);
            return TimedOutExit;
        }
        if (exit.OomKilled)
        {
            var limit = sandbox.Info.Resources.MemoryMiB is { } m ? $" ({m} MiB)" : "";
            await Console.Error.WriteLineAsync($"moat: the command was killed for exceeding sandbox {sandbox.Id}'s memory limit{limit}").ConfigureAwait(false);
            return OomExit;
        }
        return exit.ExitCode;
    }

    private static async Task<byte[]> ReadStdinAsync(CancellationToken cancellationToken)
    {
        try
        {
            await using var stdin = Console.OpenStandardInput();
            using var buffer = new MemoryStream();
            await stdin.CopyToAsync(buffer, cancellationToken).ConfigureAwait(false);
            return buffer.ToArray();
        }
        catch (IOException)
        {
            // A closed stdin is an empty one.
            return [];
        }
    }

    /// <summary>
    /// Runs a verb's body with the one error convention of the remote verbs: a one-line
    /// <c>moat: message (code)</c> on stderr and exit 1 for what the server said, exit 2 for usage.
    /// </summary>
    internal static async Task<int> InvokeAsync(ParseResult parse, Func<MoatClient, Task<int>> body, CancellationToken cancellationToken)
    {
        MoatClient client;
        try
        {
            client = new MoatClient(Connection.Options(parse.GetValue<string?>(Connection.UrlName), parse.GetValue<string?>(Connection.ApiKeyName)));
        }
        catch (ArgumentException ex)
        {
            return await FailAsync(UsageError, WithoutParameter(ex)).ConfigureAwait(false);
        }
        using (client)
        {
            try
            {
                return await body(client).ConfigureAwait(false);
            }
            catch (UsageException ex)
            {
                return await FailAsync(UsageError, ex.Message).ConfigureAwait(false);
            }
            catch (ArgumentException ex)
            {
                return await FailAsync(UsageError, WithoutParameter(ex)).ConfigureAwait(false);
            }
            catch (MoatApiException ex)
            {
                return await FailAsync(ApiError, $"{ex.Message} ({ex.Code})").ConfigureAwait(false);
            }
            catch (CommandExitException ex)
            {
                return await FailAsync(ApiError, ex.Message).ConfigureAwait(false);
            }
            catch (HttpRequestException ex)
            {
                var why = ex.InnerException is SocketException s ? s.Message : ex.Message;
                return await FailAsync(ApiError, $"cannot reach the Moat server at {client.BaseUrl}: {why} (set --url or MOAT_URL)").ConfigureAwait(false);
            }
            catch (TimeoutException ex)
            {
                return await FailAsync(ApiError, ex.Message).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return await FailAsync(InterruptedExit, "interrupted").ConfigureAwait(false);
            }
        }
    }

    private static string WithoutParameter(ArgumentException ex) =>
        ex.ParamName is null ? ex.Message : ex.Message.Replace($" (Parameter '{ex.ParamName}')", "", StringComparison.Ordinal);

    private static async Task<int> FailAsync(int exitCode, string message)
    {
        await Console.Error.WriteLineAsync("moat: " + message.ReplaceLineEndings(" ")).ConfigureAwait(false);
        return exitCode;
    }

    /// <summary>Parses repeated <c>K=V</c> options.</summary>
    internal static Dictionary<string, string> Pairs(string option, IEnumerable<string>? values)
    {
        var pairs = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in values ?? [])
        {
            int eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
                throw new UsageException($"{option} takes K=V, got '{pair}'");
            pairs[pair[..eq]] = pair[(eq + 1)..];
        }
        return pairs;
    }
}

/// <summary>A mistake in how a remote verb was called (exit 2).</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>The <c>--url</c> and <c>--api-key</c> options every remote verb takes.</summary>
internal static class Connection
{
    public const string UrlName = "--url";
    public const string ApiKeyName = "--api-key";

    /// <summary>Adds the options to a verb or group (recursively, so every sub-verb has them).</summary>
    public static T With<T>(T command) where T : Command
    {
        command.Options.Add(new Option<string?>(UrlName) { Description = $"Moat server URL (default: $MOAT_URL, else {MoatClientOptions.DefaultBaseUrl.AbsoluteUri.TrimEnd('/')})", Recursive = true, HelpName = "URL" });
        command.Options.Add(new Option<string?>(ApiKeyName) { Description = "API key (default: $MOAT_API_KEY)", Recursive = true, HelpName = "KEY" });
        return command;
    }

    /// <summary>Client options: flags first, then the environment.</summary>
    public static MoatClientOptions Options(string? url, string? apiKey)
    {
        var options = MoatClientOptions.FromEnvironment();
        if (!string.IsNullOrWhiteSpace(url))
            options.BaseUrl = MoatClientOptions.ParseUrl(url, "--url");
        if (!string.IsNullOrWhiteSpace(apiKey))
            options.ApiKey = apiKey.Trim();
        return options;
    }
}
