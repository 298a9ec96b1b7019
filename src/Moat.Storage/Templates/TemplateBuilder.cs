using System.Formats.Tar;
using System.IO.Pipelines;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Core.Templates;
using Moat.Storage.Oci;
using Moat.Storage.Rootfs;
using Moat.Storage.Sqlite;

namespace Moat.Storage.Templates;

/// <summary>A build to run.</summary>
public sealed record BuildRequest
{
    /// <summary>Name of the template made.</summary>
    public required string Name { get; init; }
    /// <summary>Tenant the template goes to (empty: public).</summary>
    public required string Owner { get; init; }
    /// <summary>Tenant the build acts for: FROM resolves its templates, RUN sandboxes are its own.</summary>
    public required string Tenant { get; init; }
    /// <summary>The Dockerfile's path in the context.</summary>
    public string Dockerfile { get; init; } = "Dockerfile";
    /// <summary>Tier RUN steps execute in (default: the node's default; microvm builds use gvisor).</summary>
    public string? Isolation { get; init; }
    /// <summary>Ignore the step cache.</summary>
    public bool NoCache { get; init; }
    /// <summary>How a FROM that names a registry image is pulled.</summary>
    public PullOptions Pull { get; init; } = new();
    /// <summary>Values of ARGs.</summary>
    public IReadOnlyDictionary<string, string> BuildArgs { get; init; } = new Dictionary<string, string>();
}

/// <summary>Resources of the sandboxes RUN steps execute in (section <c>Moat:Templates:Build</c>).</summary>
public sealed record BuildResources
{
    /// <summary>Memory of a RUN sandbox, MiB.</summary>
    public int MemoryMiB { get; init; } = 2048;
    /// <summary>Writable disk of a RUN sandbox (what one step may add), MiB.</summary>
    public int DiskMiB { get; init; } = 8192;
    /// <summary>CPUs of a RUN sandbox.</summary>
    public double Cpus { get; init; } = 2;
    /// <summary>Longest a RUN step may take, seconds.</summary>
    public int StepTimeoutSeconds { get; init; } = 3600;
}

/// <summary>
/// <c>moat template build</c>: a Dockerfile subset (see <see cref="Dockerfile"/>) built without a
/// Docker daemon. RUN executes in a sandbox of the chosen tier made from the image so far (no
/// network: the only mode Moat enforces today), and the sandbox's writable layer becomes the
/// step's layer; COPY and ADD read the build context without following its links; ENV, WORKDIR,
/// USER, CMD and ENTRYPOINT shape the config. Each layer step is cached under a key made of the
/// previous key, the instruction and (for COPY/ADD) the content it copies, so a rebuild of an
/// unchanged Dockerfile starts no sandbox at all.
/// </summary>
public sealed partial class TemplateBuilder(TemplateStore templates, TemplatePuller puller, SandboxManager manager, SqliteDatabase database, BuildResources resources, ILogger<TemplateBuilder> logger)
{
    private const string HiddenPrefix = "~build-";

    /// <summary>Builds from a context sent as a tar stream (unpacked safely into scratch space first).</summary>
    public async Task<TemplateRecord> BuildFromArchiveAsync(Stream context, BuildRequest request, IProgress<LayerProgress>? progress, Action<string> log, CancellationToken cancellationToken)
    {
        var scratch = templates.Images.NewTempDirectory("build");
        try
        {
            var root = Path.Combine(scratch, "context");
            await using (var tar = await LayerCompression.OpenAsync(context, cancellationToken).ConfigureAwait(false))
                await LayerUnpacker.UnpackAsync(tar, root, templates.Images.Limits, cancellationToken).ConfigureAwait(false);
            return await BuildAsync(root, request, progress, log, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ImageStore.RemoveQuietly(scratch);
        }
    }

    /// <summary>Builds from a context directory on this machine.</summary>
    public async Task<TemplateRecord> BuildAsync(string contextDirectory, BuildRequest request, IProgress<LayerProgress>? progress, Action<string> log, CancellationToken cancellationToken)
    {
        TemplateStore.ValidName(request.Name);
        using var context = ImageLayout.OpenFolder(Path.GetFullPath(contextDirectory));
        string text;
        try
        {
            text = Encoding.UTF8.GetString(context.ReadSmall(request.Dockerfile));
        }
        catch (MoatException ex) when (ex.Code == "invalid_image")
        {
            throw MoatException.Invalid("dockerfile_not_found", $"the build context has no {request.Dockerfile}");
        }
        var steps = Dockerfile.Parse(text);
        var state = new BuildState();
        foreach (var (k, v) in request.BuildArgs)
            state.Args[k] = v;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int n = 0;
        foreach (var step in steps)
        {
            cancellationToken.ThrowIfCancellationRequested();
            n++;
            log($"Step {n}/{steps.Count} : {step.Keyword} {step.Arguments}");
            await ApplyAsync(step, state, context, request, progress, log, cancellationToken).ConfigureAwait(false);
        }
        var configJson = JsonSerializer.Serialize(state.Config, StorageJson.Default.ImageConfig);
        var imageId = ImageAssembly.DigestOf(Encoding.UTF8.GetBytes(string.Join('\n', state.Layers) + "\n" + configJson));
        var record = await templates.SaveAsync(new TemplateRecord
        {
            Tenant = request.Owner,
            Name = request.Name,
            ImageId = imageId,
            Layers = state.Layers.ToList(),
            Config = state.Config,
            Source = "build",
        }, cancellationToken).ConfigureAwait(false);
        log($"Built {request.Name} ({imageId[..19]}) in {clock.Elapsed.TotalSeconds:0.00} s: {state.Layers.Count} layers, {state.Cached} of {state.LayerSteps} layer steps cached");
        return record;
    }

    private sealed class BuildState
    {
        public List<string> Layers { get; } = [];
        public ImageConfig Config { get; set; } = new() { Env = [] };
        public Dictionary<string, string> Args { get; } = new(StringComparer.Ordinal);
        public string Key { get; set; } = "";
        public int Cached { get; set; }
        public int LayerSteps { get; set; }
        public bool FromScratch { get; set; }

        public Dictionary<string, string> Variables()
        {
            var vars = new Dictionary<string, string>(Args, StringComparer.Ordinal);
            foreach (var e in Config.Env)
            {
                int eq = e.IndexOf('=');
                if (eq > 0)
                    vars[e[..eq]] = e[(eq + 1)..];
            }
            return vars;
        }
    }

    private async Task ApplyAsync(DockerInstruction step, BuildState state, ImageLayout context, BuildRequest request, IProgress<LayerProgress>? progress, Action<string> log, CancellationToken cancellationToken)
    {
        var vars = state.Variables();
        switch (step.Keyword)
        {
            case "ARG":
                foreach (var (k, v) in Dockerfile.Pairs(step.Arguments.Contains('=') ? step.Arguments : step.Arguments + "=", step.Line, "ARG"))
                {
                    if (!state.Args.ContainsKey(k))
                        state.Args[k] = Dockerfile.Expand(v, vars);
                }
                state.Key = Hash(state.Key, "ARG " + string.Join(',', state.Args.OrderBy(a => a.Key, StringComparer.Ordinal).Select(a => a.Key + "=" + a.Value)));
                return;
            case "FROM":
                await FromAsync(step, state, request, progress, log, cancellationToken).ConfigureAwait(false);
                return;
            case "ENV":
            {
                var env = state.Config.Env.ToList();
                foreach (var (k, v) in Dockerfile.Pairs(step.Arguments, step.Line, "ENV"))
                {
                    var value = Dockerfile.Expand(v, vars);
                    vars[k] = value;
                    env.RemoveAll(e => e.StartsWith(k + "=", StringComparison.Ordinal));
                    env.Add($"{k}={value}");
                }
                state.Config = state.Config with { Env = env };
                state.Key = Hash(state.Key, "ENV " + string.Join('\0', env));
                return;
            }
            case "USER":
                state.Config = state.Config with { User = Dockerfile.Expand(step.Arguments, vars).Trim() };
                state.Key = Hash(state.Key, "USER " + state.Config.User);
                return;
            case "CMD" or "ENTRYPOINT":
            {
                IReadOnlyList<string> argv = step.Exec ?? (step.Arguments.Length == 0 ? [] : ["/bin/sh", "-c", step.Arguments]);
                state.Config = step.Keyword == "CMD" ? state.Config with { Cmd = argv } : state.Config with { Entrypoint = argv, Cmd = [] };
                state.Key = Hash(state.Key, step.Keyword + " " + JsonSerializer.Serialize(argv.ToList(), StorageJson.Default.ListString));
                return;
            }
            case "LABEL" or "EXPOSE":
                return;
            case "WORKDIR":
            {
                var dir = Dockerfile.Expand(step.Arguments, vars).Trim();
                dir = dir.StartsWith('/') ? dir : Combine(state.Config.WorkingDir is { Length: > 0 } w ? w : "/", dir);
                dir = NormalizeAbsolute(dir, step);
                state.Config = state.Config with { WorkingDir = dir };
                var key = Hash(state.Key, "WORKDIR " + dir);
                await LayerStepAsync(state, key, request, log, async () =>
                {
                    if (ExistsInImage(state.Layers, dir))
                        return null;
                    return await AddTarAsync(tar => WriteDirectoriesAsync(tar, state.Layers, Ancestors(dir, includeSelf: true), cancellationToken), cancellationToken).ConfigureAwait(false);
                }).ConfigureAwait(false);
                return;
            }
            case "COPY" or "ADD":
                await CopyAsync(step, state, context, vars, request, log, cancellationToken).ConfigureAwait(false);
                return;
            case "RUN":
            {
                IReadOnlyList<string> argv = step.Exec ?? ["/bin/sh", "-c", step.Arguments];
                var key = Hash(state.Key, "RUN " + JsonSerializer.Serialize(argv.ToList(), StorageJson.Default.ListString) + " " + string.Join(',', state.Args.OrderBy(a => a.Key, StringComparer.Ordinal).Select(a => a.Key + "=" + a.Value)));
                await LayerStepAsync(state, key, request, log, () => RunAsync(step, argv, state, request, log, cancellationToken)).ConfigureAwait(false);
                return;
            }
        }
        throw MoatException.Invalid("unsupported_instruction", $"Dockerfile line {step.Line}: {step.Keyword} is not supported");
    }

    private async Task FromAsync(DockerInstruction step, BuildState state, BuildRequest request, IProgress<LayerProgress>? progress, Action<string> log, CancellationToken cancellationToken)
    {
        var words = Dockerfile.Words(Dockerfile.Expand(step.Arguments, state.Variables()));
        if (words.Count is not (1 or 3) || (words.Count == 3 && !words[1].Equals("AS", StringComparison.OrdinalIgnoreCase)))
            throw MoatException.Invalid("invalid_dockerfile", $"Dockerfile line {step.Line}: FROM takes an image and optionally AS NAME");
        var from = words[0];
        if (from == "scratch")
        {
            state.FromScratch = true;
            state.Key = Hash("", "FROM scratch");
            return;
        }
        if (await templates.GetAsync(from, request.Tenant, cancellationToken).ConfigureAwait(false) is { } template)
        {
            log($" ---> template {template.Name} ({template.ImageId[..19]})");
            state.Layers.AddRange(template.Layers);
            state.Config = template.Config;
            state.Key = Hash("", "FROM " + template.ImageId);
            return;
        }
        ImageReference reference;
        try
        {
            reference = ImageReference.Parse(from);
        }
        catch (MoatException)
        {
            throw new MoatException(ErrorKind.NotFound, "template_not_found", $"Dockerfile line {step.Line}: '{from}' is neither a template nor an image reference");
        }
        log($" ---> pulling {reference}");
        var image = await puller.FetchAsync(from, request.Tenant, request.Pull, progress, cancellationToken).ConfigureAwait(false);
        state.Layers.AddRange(image.Layers);
        state.Config = image.Config;
        state.Key = Hash("", "FROM " + image.ImageId);
    }

    /// <summary>A step that makes a layer: from the cache when its key is known, else made and remembered.</summary>
    private async Task LayerStepAsync(BuildState state, string key, BuildRequest request, Action<string> log, Func<Task<string?>> make)
    {
        state.Key = key;
        state.LayerSteps++;
        if (!request.NoCache && await CachedAsync(key).ConfigureAwait(false) is { } hit)
        {
            state.Cached++;
            log(" ---> cached");
            if (hit.Length > 0)
                state.Layers.Add(hit);
            return;
        }
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var layer = await make().ConfigureAwait(false);
        if (layer is not null)
            state.Layers.Add(layer);
        await RememberAsync(key, layer).ConfigureAwait(false);
        log($" ---> {(layer is null ? "no changes" : "layer " + layer[..12])} ({clock.Elapsed.TotalSeconds:0.0} s)");
    }

    private async Task<string?> CachedAsync(string key)
    {
        var hit = await database.ReadAsync(c =>
        {
            using var command = new SqliteCommand("SELECT ifnull(diff_id, '') FROM build_cache WHERE key = $key", c);
            command.Parameters.AddWithValue("$key", key);
            return command.ExecuteScalar() as string;
        }).ConfigureAwait(false);
        // A cached layer that is no longer on disk is made again.
        return hit is null || (hit.Length > 0 && !templates.Images.HasLayer(hit)) ? null : hit;
    }

    private Task RememberAsync(string key, string? layer) => database.WriteAsync(c =>
    {
        using var upsert = new SqliteCommand("INSERT OR REPLACE INTO build_cache (key, diff_id, config, created_at) VALUES ($key, $layer, '{}', $now)", c);
        upsert.Parameters.AddWithValue("$key", key);
        upsert.Parameters.AddWithValue("$layer", (object?)layer ?? DBNull.Value);
        upsert.Parameters.AddWithValue("$now", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        return upsert.ExecuteNonQuery();
    }, CancellationToken.None);

    /// <summary>RUN: a sandbox from the image so far runs the command; its writable layer is the step's layer.</summary>
    private async Task<string?> RunAsync(DockerInstruction step, IReadOnlyList<string> argv, BuildState state, BuildRequest request, Action<string> log, CancellationToken cancellationToken)
    {
        if (state.Layers.Count == 0)
            throw MoatException.Invalid("invalid_dockerfile", $"Dockerfile line {step.Line}: RUN needs a base image with the program it runs (FROM scratch has none)");
        var tier = await BuildTierAsync(request.Isolation, cancellationToken).ConfigureAwait(false);
        var hidden = HiddenPrefix + Guid.NewGuid().ToString("N")[..12];
        await templates.SaveHiddenAsync(new TemplateRecord { Tenant = request.Tenant, Name = hidden, ImageId = ImageAssembly.DigestOf(Encoding.UTF8.GetBytes(string.Join('\n', state.Layers) + JsonSerializer.Serialize(state.Config, StorageJson.Default.ImageConfig))), Layers = state.Layers.ToList(), Config = state.Config, Source = "build" }, cancellationToken).ConfigureAwait(false);
        string? sandboxId = null;
        try
        {
            var limits = manager.Options.Limits;
            var sandbox = await manager.CreateAsync(new SandboxSpec
            {
                Template = hidden,
                Tier = tier,
                Resources = new ResourceLimits
                {
                    Cpus = Math.Min(resources.Cpus, limits.MaxCpus),
                    MemoryMiB = Math.Min(resources.MemoryMiB, limits.MaxMemoryMiB),
                    DiskMiB = Math.Min(resources.DiskMiB, limits.MaxDiskMiB),
                    Pids = Math.Min(4096, limits.MaxPids),
                },
                Timeout = TimeSpan.FromSeconds(resources.StepTimeoutSeconds + 60),
                Metadata = new Dictionary<string, string> { ["moat.build"] = request.Name },
            }, request.Tenant, cancellationToken).ConfigureAwait(false);
            sandboxId = sandbox.Id;
            var upper = Path.Combine(OverlayRootfs.LayoutOf(Path.Combine(manager.Options.DataDirectory, "sandboxes", sandbox.Id)).ScratchMount, "upper");
            if (!Directory.Exists(upper))
                throw new MoatException(ErrorKind.Unavailable, "build_tier_unsupported", $"the {tier.Name()} tier keeps its writable layer where the builder cannot read it; build with --isolation container or gvisor");
            // What the platform itself wrote at start (accounts, mount points) is not the step's.
            var baseline = LayerDiff.Snapshot(upper);
            var env = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var e in state.Config.Env)
            {
                int eq = e.IndexOf('=');
                if (eq > 0)
                    env[e[..eq]] = e[(eq + 1)..];
            }
            foreach (var (k, v) in state.Args)
                env.TryAdd(k, v);
            var user = state.Config.User is { Length: > 0 } u ? u.Split(':')[0] : "root";
            await using (var command = await manager.StartCommandAsync(sandbox.Id, request.Tenant, new CommandSpec
            {
                Argv = argv,
                User = user,
                Cwd = state.Config.WorkingDir is { Length: > 0 } w ? w : "/",
                Env = env,
                Timeout = TimeSpan.FromSeconds(resources.StepTimeoutSeconds),
            }, cancellationToken).ConfigureAwait(false))
            {
                var decoders = new[] { Encoding.UTF8.GetDecoder(), Encoding.UTF8.GetDecoder() };
                var pending = new[] { new StringBuilder(), new StringBuilder() };
                await foreach (var chunk in command.ReadOutputAsync(cancellationToken).ConfigureAwait(false))
                {
                    int s = (int)chunk.Stream;
                    var chars = new char[decoders[s].GetCharCount(chunk.Data.Span, flush: false)];
                    decoders[s].GetChars(chunk.Data.Span, chars, flush: false);
                    pending[s].Append(chars);
                    EmitLines(pending[s], log, final: false);
                }
                foreach (var p in pending)
                    EmitLines(p, log, final: true);
                var exit = await command.WaitExitAsync(cancellationToken).ConfigureAwait(false);
                if (exit.ExitCode != 0 || exit.Signal != 0)
                {
                    var why = exit.TimedOut ? $"timed out after {resources.StepTimeoutSeconds} s" : exit.OomKilled ? $"ran out of memory ({resources.MemoryMiB} MiB)" : exit.Signal != 0 ? $"was killed by signal {exit.Signal}" : $"exited with {exit.ExitCode}";
                    throw new MoatException(ErrorKind.InvalidArgument, "build_step_failed", $"Dockerfile line {step.Line}: RUN {Shorten(step.Arguments)} {why}");
                }
            }
            try
            {
                // Frozen, nothing the step left running can change the tree while it is read.
                await manager.PauseAsync(sandbox.Id, request.Tenant, cancellationToken).ConfigureAwait(false);
            }
            catch (MoatException ex)
            {
                LogPauseFailed(logger, sandbox.Id, ex.Message);
            }
            return await AddTarAsync(tar => LayerDiff.WriteAsync(upper, baseline, LayerDiff.PlatformEntries, tar, templates.Images.Limits, cancellationToken), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (sandboxId is not null)
            {
                try
                {
                    await manager.DeleteAsync(sandboxId, request.Tenant, CancellationToken.None).ConfigureAwait(false);
                }
                catch (MoatException ex)
                {
                    LogPauseFailed(logger, sandboxId, ex.Message);
                }
            }
            await templates.DeleteAsync(hidden, request.Tenant, CancellationToken.None).ConfigureAwait(false);
        }
    }


    private async Task<IsolationTier> BuildTierAsync(string? isolation, CancellationToken cancellationToken)
    {
        IsolationTier tier;
        if (string.IsNullOrEmpty(isolation))
        {
            tier = await manager.Runtimes.DefaultTierAsync(cancellationToken).ConfigureAwait(false);
            if (tier == IsolationTier.Microvm)
                tier = IsolationTier.Gvisor;
        }
        else
            tier = IsolationTiers.TryParse(isolation) ?? throw MoatException.Invalid("invalid_isolation", $"isolation must be gvisor or container for builds, got '{isolation}'");
        if (tier == IsolationTier.Microvm)
            throw MoatException.Invalid("build_tier_unsupported", "RUN steps execute on the gvisor or container tier (the microVM's disk is not readable by the builder yet)");
        await manager.Runtimes.ResolveAsync(tier, cancellationToken).ConfigureAwait(false);
        return tier;
    }

    private static void EmitLines(StringBuilder pending, Action<string> log, bool final)
    {
        var text = pending.ToString();
        int start = 0;
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] == '\n')
            {
                log(text[start..i].TrimEnd('\r'));
                start = i + 1;
            }
        }
        pending.Clear();
        var rest = text[start..];
        if (final && rest.Length > 0)
            log(rest);
        else if (rest.Length > 8192)
            log(rest); // a line with no end is still shown
        else
            pending.Append(rest);
    }

    /// <summary>COPY / ADD from the context: a layer with the files at their destination, cached by their content.</summary>
    private async Task CopyAsync(DockerInstruction step, BuildState state, ImageLayout context, Dictionary<string, string> vars, BuildRequest request, Action<string> log, CancellationToken cancellationToken)
    {
        var words = step.Exec?.ToList() ?? Dockerfile.Words(step.Arguments);
        words = words.Select(w => Dockerfile.Expand(w, vars)).ToList();
        if (words.Count < 2)
            throw MoatException.Invalid("invalid_dockerfile", $"Dockerfile line {step.Line}: {step.Keyword} needs a source and a destination");
        if (step.Flags.ContainsKey("from"))
            throw MoatException.Invalid("unsupported_instruction", $"Dockerfile line {step.Line}: COPY --from needs multi-stage builds, which are not supported");
        var dest = words[^1];
        var sources = words[..^1];
        if (step.Keyword == "ADD" && sources.Any(s => s.Contains("://", StringComparison.Ordinal)))
            throw MoatException.Invalid("unsupported_instruction", $"Dockerfile line {step.Line}: ADD from a URL is not supported (builds have no network); download it into the context");
        var workdir = state.Config.WorkingDir is { Length: > 0 } w ? w : "/";
        bool destIsDir = dest.EndsWith('/') || sources.Count > 1 || sources.Any(s => s.Contains('*') || s.Contains('?'));
        dest = NormalizeAbsolute(dest.StartsWith('/') ? dest : Combine(workdir, dest), step);
        var (uid, gid) = step.Flags.TryGetValue("chown", out var chown) ? ResolveOwner(chown, state.Layers, step) : (0, 0);
        var items = new List<(string ContextPath, string Target, FileStatus Status)>();
        foreach (var source in sources)
        {
            var matches = context.Glob(source, step.Line);
            if (matches.Count == 0)
                throw MoatException.Invalid("copy_source_missing", $"Dockerfile line {step.Line}: {source} is not in the build context");
            foreach (var (path, status) in matches)
            {
                bool dirSource = status.IsDirectory;
                string target = dirSource ? dest : (destIsDir || matches.Count > 1 ? Combine(dest, Path.GetFileName(path)) : dest);
                if (dirSource)
                {
                    foreach (var (child, childStatus) in context.Tree(path))
                        items.Add((child, Combine(target, child[(path.Length == 0 ? 0 : path.Length + 1)..]), childStatus));
                    items.Add((path, target, status));
                }
                else
                    items.Add((path, target, status));
            }
        }
        // The cache key covers what is copied: names, modes, owners and every byte.
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes($"{step.Canonical}\n{dest}\n{uid}:{gid}\n"));
        foreach (var item in items.OrderBy(i => i.Target, StringComparer.Ordinal))
        {
            hash.AppendData(Encoding.UTF8.GetBytes($"{item.Target}\0{item.Status.Mode}\0{item.Status.Size}\0"));
            if (item.Status.IsRegular)
            {
                await using var file = context.Open(item.ContextPath);
                var buffer = new byte[1 << 16];
                int read;
                while ((read = await file.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                    hash.AppendData(buffer, 0, read);
            }
            else if (item.Status.IsSymlink)
                hash.AppendData(Encoding.UTF8.GetBytes(context.ReadLink(item.ContextPath)));
        }
        var key = Hash(state.Key, Convert.ToHexStringLower(hash.GetHashAndReset()));
        await LayerStepAsync(state, key, request, log, () => AddTarAsync(async tar =>
        {
            var targets = items.Select(i => i.Target).ToHashSet(StringComparer.Ordinal);
            // Directories on the way that the copy does not bring keep the image's owner and mode.
            var parents = items.SelectMany(i => Ancestors(i.Target, includeSelf: false)).Where(p => !targets.Contains(p)).Distinct(StringComparer.Ordinal).ToList();
            int written = await WriteDirectoriesAsync(tar, state.Layers, parents, cancellationToken).ConfigureAwait(false);
            foreach (var item in items.OrderBy(i => i.Status.IsDirectory ? 0 : 1).ThenBy(i => i.Target.Count(c => c == '/')).ThenBy(i => i.Target, StringComparer.Ordinal))
            {
                var name = item.Target.TrimStart('/');
                if (name.Length == 0)
                    continue;
                var s = item.Status;
                var mode = (UnixFileMode)(s.Mode & 0xFFF);
                if (s.IsDirectory)
                    await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.Directory, name + "/") { Mode = mode, Uid = uid, Gid = gid, ModificationTime = s.Mtime }, cancellationToken).ConfigureAwait(false);
                else if (s.IsSymlink)
                    await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.SymbolicLink, name) { LinkName = context.ReadLink(item.ContextPath), Uid = uid, Gid = gid, ModificationTime = s.Mtime }, cancellationToken).ConfigureAwait(false);
                else if (s.IsRegular)
                {
                    await using var data = context.Open(item.ContextPath);
                    await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, name) { Mode = mode, Uid = uid, Gid = gid, ModificationTime = s.Mtime, DataStream = data }, cancellationToken).ConfigureAwait(false);
                }
                else
                    continue;
                written++;
            }
            return written;
        }, cancellationToken)).ConfigureAwait(false);
    }

    /// <summary>Every directory above <paramref name="path"/> (and it, with <paramref name="includeSelf"/>), shallowest first, without the root.</summary>
    private static IEnumerable<string> Ancestors(string path, bool includeSelf)
    {
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        int count = includeSelf ? parts.Length : parts.Length - 1;
        for (int i = 0; i < count; i++)
            yield return "/" + string.Join('/', parts[..(i + 1)]);
    }

    /// <summary>Directory entries with the metadata the image gives them (root 0755 where it has none).</summary>
    private async Task<int> WriteDirectoriesAsync(TarWriter tar, IReadOnlyList<string> layers, IEnumerable<string> directories, CancellationToken cancellationToken)
    {
        int count = 0;
        foreach (var dir in directories.OrderBy(d => d.Count(c => c == '/')).ThenBy(d => d, StringComparer.Ordinal))
        {
            var sub = dir.Trim('/');
            var existing = StatInImage(layers, sub);
            var entry = new PaxTarEntry(TarEntryType.Directory, sub + "/")
            {
                Mode = existing is { IsDirectory: true } e ? (UnixFileMode)(e.Mode & 0xFFF) : (UnixFileMode)0x1ED,
                Uid = existing is { IsDirectory: true } o ? o.Uid : 0,
                Gid = existing is { IsDirectory: true } g ? g.Gid : 0,
                ModificationTime = existing?.Mtime ?? DateTimeOffset.UnixEpoch,
            };
            await tar.WriteEntryAsync(entry, cancellationToken).ConfigureAwait(false);
            count++;
        }
        return count;
    }

    private bool ExistsInImage(IReadOnlyList<string> layers, string path) => StatInImage(layers, path.Trim('/')) is { IsDirectory: true };

    /// <summary>What the image has at a path: the topmost layer that has it decides (a whiteout means none).</summary>
    private FileStatus? StatInImage(IReadOnlyList<string> layers, string relative)
    {
        if (relative.Length == 0)
            return null;
        var parts = relative.Split('/', StringSplitOptions.RemoveEmptyEntries);
        for (int i = layers.Count - 1; i >= 0; i--)
        {
            using var root = DirectoryHandle.OpenRoot(templates.Images.LayerPath(layers[i]));
            var dir = root.OpenDirectory(".");
            try
            {
                bool missing = false;
                foreach (var part in parts[..^1])
                {
                    DirectoryHandle? next;
                    try
                    {
                        next = dir!.OpenDirectory(part);
                    }
                    catch (NotADirectoryException)
                    {
                        next = null;
                    }
                    dir!.Dispose();
                    dir = next;
                    if (dir is null)
                    {
                        missing = true;
                        break;
                    }
                }
                if (missing)
                    continue;
                if (dir!.Stat(parts[^1]) is { } status)
                    return status.IsWhiteout ? null : status;
            }
            finally
            {
                dir?.Dispose();
            }
        }
        return null;
    }

    /// <summary>--chown=USER[:GROUP], numeric or looked up in the image's /etc/passwd and /etc/group.</summary>
    private (int Uid, int Gid) ResolveOwner(string spec, IReadOnlyList<string> layers, DockerInstruction step)
    {
        var parts = spec.Split(':', 2);
        int uid = Lookup(parts[0], "etc/passwd", layers, step);
        int gid = parts.Length > 1 ? Lookup(parts[1], "etc/group", layers, step) : (int.TryParse(parts[0], out _) ? uid : LookupPrimaryGroup(parts[0], layers) ?? uid);
        return (uid, gid);
    }

    private int Lookup(string name, string file, IReadOnlyList<string> layers, DockerInstruction step)
    {
        if (int.TryParse(name, out int id) && id >= 0)
            return id;
        foreach (var line in ReadImageFile(layers, file).Split('\n'))
        {
            var fields = line.Split(':');
            if (fields.Length >= 3 && fields[0] == name && int.TryParse(fields[2], out int found))
                return found;
        }
        throw MoatException.Invalid("invalid_dockerfile", $"Dockerfile line {step.Line}: --chown names '{name}', which the image's /{file} does not have");
    }

    private int? LookupPrimaryGroup(string user, IReadOnlyList<string> layers)
    {
        foreach (var line in ReadImageFile(layers, "etc/passwd").Split('\n'))
        {
            var fields = line.Split(':');
            if (fields.Length >= 4 && fields[0] == user && int.TryParse(fields[3], out int gid))
                return gid;
        }
        return null;
    }

    private string ReadImageFile(IReadOnlyList<string> layers, string relative)
    {
        var status = StatInImage(layers, relative);
        if (status is not { IsRegular: true })
            return "";
        for (int i = layers.Count - 1; i >= 0; i--)
        {
            using var layout = ImageLayout.OpenFolder(templates.Images.LayerPath(layers[i]));
            if (layout.Exists(relative))
                return Encoding.UTF8.GetString(layout.ReadSmall(relative));
        }
        return "";
    }

    private Task<string?> AddTarAsync(Func<TarWriter, Task<int>> write, CancellationToken cancellationToken) =>
        templates.AddTarLayerAsync(write, cancellationToken);

    private static string Hash(string previous, string step) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(previous + "\n" + step)));

    private static string Combine(string directory, string name) => directory.TrimEnd('/') + "/" + name.TrimStart('/');

    private static string Parent(string path)
    {
        int slash = path.TrimEnd('/').LastIndexOf('/');
        return slash <= 0 ? "/" : path[..slash];
    }

    private static string NormalizeAbsolute(string path, DockerInstruction step)
    {
        var stack = new List<string>();
        foreach (var part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            if (part == ".")
                continue;
            if (part == "..")
            {
                if (stack.Count > 0)
                    stack.RemoveAt(stack.Count - 1);
                continue;
            }
            stack.Add(part);
        }
        if (stack.Count > 128)
            throw MoatException.Invalid("invalid_dockerfile", $"Dockerfile line {step.Line}: the path is too deep");
        return "/" + string.Join('/', stack);
    }

    private static string Shorten(string s) => s.Length > 60 ? s[..60] + "…" : s;

    [LoggerMessage(Level = LogLevel.Warning, Message = "Build sandbox {SandboxId}: {Message}")]
    private static partial void LogPauseFailed(ILogger logger, string sandboxId, string message);
}
