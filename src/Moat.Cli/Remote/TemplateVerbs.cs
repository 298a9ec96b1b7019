using System.CommandLine;
using System.Formats.Tar;
using System.IO.Pipelines;
using Moat.Cli.Commands;
using Moat.Client;
using Moat.Contracts;
using Moat.Core.Errors;

namespace Moat.Cli.Remote;

/// <summary>What the template verbs do, against a server or this machine's own node.</summary>
internal interface ITemplateOperations : IAsyncDisposable
{
    Task<IReadOnlyList<TemplateDto>> ListAsync(CancellationToken cancellationToken);
    Task<TemplateDto> GetAsync(string name, CancellationToken cancellationToken);
    Task<TemplateDto> ImportAsync(string path, string name, bool makePublic, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken);
    Task<TemplateDto> PullAsync(PullTemplateRequest request, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken);
    Task<TemplateDto> BuildAsync(string context, string dockerfile, string name, string? isolation, bool noCache, bool makePublic, IReadOnlyDictionary<string, string> buildArgs, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken);
    Task<TemplateDto> TagAsync(string source, string name, bool makePublic, CancellationToken cancellationToken);
    Task DeleteAsync(string name, CancellationToken cancellationToken);
    Task LoginAsync(string registry, string username, string password, CancellationToken cancellationToken);
    Task LogoutAsync(string registry, CancellationToken cancellationToken);
    Task<IReadOnlyList<RegistryLoginDto>> LoginsAsync(CancellationToken cancellationToken);
}

/// <summary>
/// <c>moat template ls|inspect|import|pull|build|tag|rm|login|logout|logins</c>. With MOAT_URL (or
/// <c>--url</c>) they talk to that server as the API key's tenant; without, they work on this
/// machine's node directly (embedded, like <c>moat run</c>), as its operator.
/// </summary>
internal static class TemplateVerbs
{
    public static Command Create()
    {
        var group = Connection.With(new Command("template", "Templates: the images sandboxes start from (on the server at MOAT_URL, else on this machine)"));
        group.Subcommands.Add(ListVerb());
        group.Subcommands.Add(InspectVerb());
        group.Subcommands.Add(ImportVerb());
        group.Subcommands.Add(PullVerb());
        group.Subcommands.Add(BuildVerb());
        group.Subcommands.Add(TagVerb());
        group.Subcommands.Add(RemoveVerb());
        group.Subcommands.Add(LoginVerb());
        group.Subcommands.Add(LogoutVerb());
        group.Subcommands.Add(LoginsVerb());
        return group;
    }

    /// <summary>Runs a verb remotely (MOAT_URL or --url) or embedded, with one error convention: a line on stderr, exit 1 (2 for usage).</summary>
    private static Task<int> RunAsync(ParseResult parse, Func<ITemplateOperations, Task<int>> body, CancellationToken cancellationToken)
    {
        bool remote = !string.IsNullOrEmpty(parse.GetValue<string?>(Connection.UrlName)) || Environment.GetEnvironmentVariable("MOAT_URL") is { Length: > 0 };
        if (remote)
            return RemoteCommands.InvokeAsync(parse, async client =>
            {
                await using var ops = new RemoteTemplates(client);
                return await body(ops);
            }, cancellationToken);
        return EmbeddedAsync(body, cancellationToken);
    }

    private static async Task<int> EmbeddedAsync(Func<ITemplateOperations, Task<int>> body, CancellationToken cancellationToken)
    {
        try
        {
            await using var ops = EmbeddedTemplates.Create();
            return await body(ops);
        }
        catch (UsageException ex)
        {
            await Console.Error.WriteLineAsync("moat: " + ex.Message);
            return RemoteCommands.UsageError;
        }
        catch (MoatException ex)
        {
            await Console.Error.WriteLineAsync($"moat: {ex.Message.ReplaceLineEndings(" ")} ({ex.Code})");
            return RemoteCommands.ApiError;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            await Console.Error.WriteLineAsync("moat: interrupted");
            return RemoteCommands.InterruptedExit;
        }
        catch (IOException ex)
        {
            await Console.Error.WriteLineAsync("moat: " + ex.Message);
            return RemoteCommands.ApiError;
        }
    }

    private static Option<bool> PublicOption() => new("--public") { Description = "Share the template with every tenant (operator keys; always so without a server)" };

    private static Option<bool> QuietOption() => new("--quiet", "-q") { Description = "No progress or build output; print only the template name" };

    private static int Print(TemplateDto template, bool json)
    {
        if (json)
            Output.Json(template, j => j.TemplateDto);
        else
            Console.Out.WriteLine(template.Name);
        return 0;
    }

    private static Command ListVerb()
    {
        var json = Output.JsonOption();
        var list = new Command("ls", "List the templates this tenant can create sandboxes from: name, id, size, source, user, working directory, command") { json };
        list.Aliases.Add("list");
        list.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            var templates = await ops.ListAsync(ct);
            if (parse.GetValue(json))
            {
                Output.Json(new TemplateListResponse(templates), j => j.TemplateListResponse);
                return 0;
            }
            var table = Output.Table("name", "id", "size", "public", "source", "user", "workdir", "cmd");
            foreach (var t in templates)
                Output.Row(table, t.Name, t.Id.StartsWith("sha256:", StringComparison.Ordinal) ? t.Id[7..19] : t.Id.Length > 19 ? t.Id[..19] : t.Id, Size(t.SizeBytes), t.Public == true ? "yes" : "no",
                    Shorten(t.Source ?? "-", 40), t.User is { Length: > 0 } u ? u : "-", t.WorkingDir is { Length: > 0 } w ? w : "-", t.Cmd.Count > 0 ? Shorten(string.Join(' ', t.Cmd), 40) : "-");
            Output.Print(table);
            return 0;
        }, ct));
        return list;
    }

    private static Command InspectVerb()
    {
        var name = new Argument<string>("name") { Description = "Template name" };
        var command = new Command("inspect", "Show a template as JSON: image id, layers, size, source, config, start command") { name };
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            Output.Json(await ops.GetAsync(parse.GetValue(name)!, ct), j => j.TemplateDto);
            return 0;
        }, ct));
        return command;
    }

    private static Command ImportVerb()
    {
        var path = new Argument<string>("path") { Description = "An OCI image layout folder, or an archive: docker save output, or the tar(.gz) of a layout" };
        var name = new Option<string>("--name") { Description = "Template name", Required = true };
        var makePublic = PublicOption();
        var quiet = QuietOption();
        var json = Output.JsonOption();
        var command = new Command("import", "Import an image as a template, without a registry.\nExample: docker save python:3.12-slim > py.tar && moat template import py.tar --name python")
        {
            path, name, makePublic, quiet, json,
        };
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            var source = Path.GetFullPath(parse.GetValue(path)!);
            if (!Directory.Exists(source) && !File.Exists(source))
                throw new UsageException($"{parse.GetValue(path)} does not exist");
            var template = await TemplateProgress.ShowAsync("import", parse.GetValue(quiet) || parse.GetValue(json), onEvent => ops.ImportAsync(source, parse.GetValue(name)!, parse.GetValue(makePublic), onEvent, ct));
            return Print(template, parse.GetValue(json));
        }, ct));
        return command;
    }

    private static Command PullVerb()
    {
        var image = new Argument<string>("image") { Description = "Image reference: python:3.12-slim, ghcr.io/org/app:1.0, registry:5000/team/tool@sha256:..." };
        var name = new Option<string?>("--name") { Description = "Template name (default: the repository's last part and the tag)" };
        var username = new Option<string?>("--username") { Description = "Registry user for this pull (otherwise the stored login, if any)" };
        var passwordStdin = new Option<bool>("--password-stdin") { Description = "Read the registry password or token from stdin" };
        var start = new Option<string?>("--start-cmd") { Description = "A command every sandbox of the template starts in the background (shell syntax)" };
        var ready = new Option<string?>("--ready-cmd") { Description = "A shell command that exits 0 once the start command is ready" };
        var makePublic = PublicOption();
        var quiet = QuietOption();
        var json = Output.JsonOption();
        var command = new Command("pull", "Pull an image from an OCI registry as a template (linux/amd64 of a multi-platform image); layers download in parallel and resume after an interruption.\nExample: moat template pull python:3.12-slim --name python")
        {
            image, name, username, passwordStdin, start, ready, makePublic, quiet, json,
        };
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            string? password = null;
            if (parse.GetValue(passwordStdin))
                password = (await Console.In.ReadToEndAsync(ct)).TrimEnd('\n', '\r');
            var request = new PullTemplateRequest
            {
                Image = parse.GetValue(image)!,
                Name = parse.GetValue(name),
                Public = parse.GetValue(makePublic) ? true : null,
                Username = parse.GetValue(username),
                Password = password,
                Start = parse.GetValue(start) is null && parse.GetValue(ready) is null ? null : new TemplateStartDto
                {
                    Command = parse.GetValue(start) is { } s ? ["/bin/sh", "-c", s] : null,
                    ReadyCheck = parse.GetValue(ready),
                },
            };
            var template = await TemplateProgress.ShowAsync("pull", parse.GetValue(quiet) || parse.GetValue(json), onEvent => ops.PullAsync(request, onEvent, ct));
            return Print(template, parse.GetValue(json));
        }, ct));
        return command;
    }

    private static Command BuildVerb()
    {
        var context = new Argument<string>("context") { Description = "The build context: the folder COPY and ADD read from" };
        var file = new Option<string?>("--file", "-f") { Description = "The Dockerfile (default: CONTEXT/Dockerfile); it must be inside the context" };
        var name = new Option<string>("--name") { Description = "Template name", Required = true };
        var isolation = new Option<string?>("--isolation") { Description = "Tier RUN steps execute in: gvisor or container (default: the node's; no network in either)" };
        var noCache = new Option<bool>("--no-cache") { Description = "Run every step again" };
        var buildArgs = new Option<string[]>("--build-arg") { Description = "ARG value K=V (repeatable)", Arity = ArgumentArity.ZeroOrMore };
        var makePublic = PublicOption();
        var quiet = QuietOption();
        var json = Output.JsonOption();
        var command = new Command("build", "Build a template from a Dockerfile without a Docker daemon: FROM a template or a registry image, RUN in a sandbox, COPY/ADD, ENV, WORKDIR, USER, CMD, ENTRYPOINT; each step cached.\nExample: moat template build -f Dockerfile . --name myapp")
        {
            context, file, name, isolation, noCache, buildArgs, makePublic, quiet, json,
        };
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            var root = Path.GetFullPath(parse.GetValue(context)!);
            if (!Directory.Exists(root))
                throw new UsageException($"the build context {parse.GetValue(context)} is not a folder");
            var dockerfile = Path.GetFullPath(parse.GetValue(file) ?? Path.Combine(root, "Dockerfile"));
            var relative = Path.GetRelativePath(root, dockerfile);
            if (relative.StartsWith("..", StringComparison.Ordinal) || Path.IsPathRooted(relative))
                throw new UsageException($"the Dockerfile {dockerfile} is outside the build context {root}");
            if (!File.Exists(dockerfile))
                throw new UsageException($"{dockerfile} does not exist");
            var args = RemoteCommands.Pairs("--build-arg", parse.GetValue(buildArgs));
            var template = await TemplateProgress.ShowAsync("build", parse.GetValue(quiet) || parse.GetValue(json),
                onEvent => ops.BuildAsync(root, relative, parse.GetValue(name)!, parse.GetValue(isolation), parse.GetValue(noCache), parse.GetValue(makePublic), args, onEvent, ct));
            return Print(template, parse.GetValue(json));
        }, ct));
        return command;
    }

    private static Command TagVerb()
    {
        var source = new Argument<string>("source") { Description = "An existing template" };
        var name = new Argument<string>("name") { Description = "The new name" };
        var makePublic = PublicOption();
        var command = new Command("tag", "Give a template's image another name") { source, name, makePublic };
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            await ops.TagAsync(parse.GetValue(source)!, parse.GetValue(name)!, parse.GetValue(makePublic), ct);
            return 0;
        }, ct));
        return command;
    }

    private static Command RemoveVerb()
    {
        var name = new Argument<string>("name") { Description = "Template name" };
        var command = new Command("rm", "Delete a template (refused while a sandbox uses it); layers nothing else uses are removed") { name };
        command.Aliases.Add("delete");
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            await ops.DeleteAsync(parse.GetValue(name)!, ct);
            return 0;
        }, ct));
        return command;
    }

    private static Command LoginVerb()
    {
        var registry = new Argument<string>("registry") { Description = "Registry host: docker.io, ghcr.io, registry.example.com:5000" };
        var username = new Option<string>("--username", "-u") { Description = "User name", Required = true };
        var passwordStdin = new Option<bool>("--password-stdin") { Description = "Read the password or token from stdin (recommended)" };
        var password = new Option<string?>("--password", "-p") { Description = "Password or token (visible in the process list: prefer --password-stdin)" };
        var command = new Command("login", "Store a registry login for this tenant's pulls; the secret is sealed and never shown again") { registry, username, passwordStdin, password };
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            var secret = parse.GetValue(passwordStdin) ? (await Console.In.ReadToEndAsync(ct)).TrimEnd('\n', '\r') : parse.GetValue(password);
            if (string.IsNullOrEmpty(secret))
                throw new UsageException("give the password with --password-stdin (or --password)");
            await ops.LoginAsync(parse.GetValue(registry)!, parse.GetValue(username)!, secret, ct);
            return 0;
        }, ct));
        return command;
    }

    private static Command LogoutVerb()
    {
        var registry = new Argument<string>("registry") { Description = "Registry host" };
        var command = new Command("logout", "Forget this tenant's login for a registry") { registry };
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            await ops.LogoutAsync(parse.GetValue(registry)!, ct);
            return 0;
        }, ct));
        return command;
    }

    private static Command LoginsVerb()
    {
        var json = Output.JsonOption();
        var command = new Command("logins", "List this tenant's registry logins (never their secrets)") { json };
        command.SetAction((parse, ct) => RunAsync(parse, async ops =>
        {
            var logins = await ops.LoginsAsync(ct);
            if (parse.GetValue(json))
            {
                Output.Json(new RegistryLoginListResponse(logins), j => j.RegistryLoginListResponse);
                return 0;
            }
            var table = Output.Table("registry", "username", "created");
            foreach (var l in logins)
                Output.Row(table, l.Registry, l.Username, Output.Time(l.CreatedAt));
            Output.Print(table);
            return 0;
        }, ct));
        return command;
    }

    private static string Size(long? bytes) => bytes switch
    {
        null => "-",
        < 1 << 20 => $"{bytes / 1024.0:0.#} KiB",
        < 1L << 30 => $"{bytes / (1024.0 * 1024):0.#} MiB",
        _ => $"{bytes / (1024.0 * 1024 * 1024):0.##} GiB",
    };

    private static string Shorten(string s, int max) => s.Length > max ? s[..(max - 1)] + "…" : s;

    /// <summary>The verbs against a server, through the SDK; folders and contexts are sent as tar streams made on the fly.</summary>
    private sealed class RemoteTemplates(MoatClient client) : ITemplateOperations
    {
        public Task<IReadOnlyList<TemplateDto>> ListAsync(CancellationToken cancellationToken) => client.ListTemplatesAsync(cancellationToken);

        public Task<TemplateDto> GetAsync(string name, CancellationToken cancellationToken) => client.GetTemplateAsync(name, cancellationToken);

        public async Task<TemplateDto> ImportAsync(string path, string name, bool makePublic, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken)
        {
            if (File.Exists(path))
            {
                await using var file = File.OpenRead(path);
                return await client.ImportTemplateAsync(file, name, makePublic, onEvent, cancellationToken);
            }
            return await WithTarAsync(path, stream => client.ImportTemplateAsync(stream, name, makePublic, onEvent, cancellationToken), cancellationToken);
        }

        public Task<TemplateDto> PullAsync(PullTemplateRequest request, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken) =>
            client.PullTemplateAsync(request, onEvent, cancellationToken);

        public Task<TemplateDto> BuildAsync(string context, string dockerfile, string name, string? isolation, bool noCache, bool makePublic, IReadOnlyDictionary<string, string> buildArgs, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken)
        {
            if (buildArgs.Count > 0)
                throw new UsageException("--build-arg is not sent to a server yet; set the values as ARG defaults in the Dockerfile");
            return WithTarAsync(context, stream => client.BuildTemplateAsync(stream, name, dockerfile, isolation, noCache, makePublic, onEvent, cancellationToken), cancellationToken);
        }

        public Task<TemplateDto> TagAsync(string source, string name, bool makePublic, CancellationToken cancellationToken) => client.TagTemplateAsync(source, name, makePublic, cancellationToken);

        public Task DeleteAsync(string name, CancellationToken cancellationToken) => client.DeleteTemplateAsync(name, cancellationToken);

        public Task LoginAsync(string registry, string username, string password, CancellationToken cancellationToken) => client.SaveRegistryLoginAsync(registry, username, password, cancellationToken);

        public Task LogoutAsync(string registry, CancellationToken cancellationToken) => client.DeleteRegistryLoginAsync(registry, cancellationToken);

        public Task<IReadOnlyList<RegistryLoginDto>> LoginsAsync(CancellationToken cancellationToken) => client.ListRegistryLoginsAsync(cancellationToken);

        /// <summary>Streams a folder as a tar (written while it is sent, never to disk).</summary>
        private static async Task<T> WithTarAsync<T>(string directory, Func<Stream, Task<T>> send, CancellationToken cancellationToken)
        {
            var pipe = new Pipe();
            var writing = Task.Run(async () =>
            {
                try
                {
                    await using var stream = pipe.Writer.AsStream();
                    await TarFile.CreateFromDirectoryAsync(directory, stream, includeBaseDirectory: false, cancellationToken);
                }
                catch (Exception ex)
                {
                    await pipe.Writer.CompleteAsync(ex);
                }
            }, cancellationToken);
            try
            {
                await using var reader = pipe.Reader.AsStream();
                return await send(reader);
            }
            finally
            {
                await writing;
            }
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
