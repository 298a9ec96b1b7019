using Microsoft.Extensions.DependencyInjection;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Storage.Templates;

namespace Moat.Tests;

/// <summary>
/// Dockerfile builds without a Docker daemon: RUN in a sandbox, COPY from the context, ENV,
/// WORKDIR, USER, CMD; every layer step cached by its input; logs streamed; failures name the line.
/// </summary>
public sealed class TemplatesBuildTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>, IDisposable
{
    private readonly string _context = Path.Combine(Path.GetTempPath(), "moat-build-" + Guid.NewGuid().ToString("N")[..8]);

    private TemplateBuilder Builder => Node.Services.GetRequiredService<TemplateBuilder>();
    private TemplateStore Templates => Node.Services.GetRequiredService<TemplateStore>();

    public void Dispose()
    {
        if (Directory.Exists(_context))
            Directory.Delete(_context, recursive: true);
    }

    private async Task<(TemplateRecord Record, List<string> Log, TimeSpan Took)> BuildAsync(string dockerfile, string name, IsolationTier tier = IsolationTier.Container)
    {
        Directory.CreateDirectory(_context);
        await File.WriteAllTextAsync(Path.Combine(_context, "Dockerfile"), dockerfile);
        var log = new List<string>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var record = await Builder.BuildAsync(_context, new BuildRequest { Name = name, Owner = Tenant, Tenant = Tenant, Isolation = tier.Name() }, null, line => { lock (log) log.Add(line); }, CancellationToken.None);
        return (record, log, clock.Elapsed);
    }

    private const string ThreeSteps = """
        FROM base
        # step 1: a command, as root
        RUN echo built-by-run > /built.txt && echo 'builder:x:1001:1001::/nonexistent:/bin/sh' >> /etc/passwd && mkdir -p /srv/data && echo hello from the build
        # step 2: files from the context, owned by the image's user
        COPY --chown=user:user app/ /home/user/app/
        ENV GREETING="hi there" \
            MODE=test
        WORKDIR /home/user/app
        # step 3: a command that uses what was copied, as the image's user
        USER user
        RUN cat main.txt > copied.txt && echo "$GREETING" >> copied.txt && rm -f /home/user/app/remove-me
        CMD ["python3", "-m", "http.server"]
        """;

    private async Task WriteContextAsync(string main)
    {
        Directory.CreateDirectory(Path.Combine(_context, "app", "sub"));
        await File.WriteAllTextAsync(Path.Combine(_context, "app", "main.txt"), main);
        await File.WriteAllTextAsync(Path.Combine(_context, "app", "sub", "nested.txt"), "nested\n");
        await File.WriteAllTextAsync(Path.Combine(_context, "app", "remove-me"), "x");
    }

    [SkippableFact]
    public async Task A_three_step_build_caches_its_steps_on_rebuild()
    {
        await RequireAsync(IsolationTier.Container);
        await WriteContextAsync("version 1\n");

        var first = await BuildAsync(ThreeSteps, "built-app");
        Assert.Contains(first.Log, l => l == "hello from the build");
        Assert.DoesNotContain(first.Log, l => l.Contains("---> cached"));

        var second = await BuildAsync(ThreeSteps, "built-app");
        Assert.Equal(4, second.Log.Count(l => l.Contains("---> cached"))); // RUN, COPY, WORKDIR, RUN
        Assert.Equal(first.Record.Layers, second.Record.Layers);
        Assert.True(second.Took < TimeSpan.FromSeconds(1), $"the cached rebuild took {second.Took.TotalMilliseconds:0} ms");

        // A changed context file re-runs the COPY and what follows it, not the first RUN.
        await File.WriteAllTextAsync(Path.Combine(_context, "app", "main.txt"), "version 2\n");
        var third = await BuildAsync(ThreeSteps, "built-app");
        Assert.Equal(1, third.Log.Count(l => l.Contains("---> cached")));
        Assert.Equal(first.Record.Layers[1], third.Record.Layers[1]);
        Assert.NotEqual(first.Record.Layers[^1], third.Record.Layers[^1]);

        var sandbox = await Manager.CreateAsync(NodeFixture.Spec() with { Template = "built-app" }, Tenant, CancellationToken.None);
        try
        {
            var ran = await ShAsync(sandbox.Id, "cat /built.txt; id -un; pwd; cat copied.txt; cat sub/nested.txt; stat -c %U main.txt; test -e remove-me || echo removed; echo $MODE; getent passwd builder | cut -d: -f3; test -d /srv/data && echo dir");
            Assert.Equal("built-by-run\nuser\n/home/user/app\nversion 2\nhi there\nnested\nuser\nremoved\ntest\n1001\ndir\n", ran.Stdout);
        }
        finally
        {
            await Manager.DeleteAsync(sandbox.Id, Tenant, CancellationToken.None);
        }
        Assert.Equal(["python3", "-m", "http.server"], third.Record.Config.Cmd);
        Assert.Equal("user", third.Record.Config.User);
        // The build's own sandboxes and working templates are gone.
        Assert.DoesNotContain(await Manager.ListAsync(new Moat.Core.State.SandboxQuery { TenantId = Tenant, States = [SandboxState.Running, SandboxState.Creating] }, CancellationToken.None), s => s.Spec.Template.StartsWith('~'));
        Assert.DoesNotContain(await Templates.ListRecordsAsync(Tenant, CancellationToken.None), t => t.Name.StartsWith('~'));
    }

    [SkippableFact]
    public async Task A_failing_step_names_its_line_and_makes_no_template()
    {
        await RequireAsync(IsolationTier.Container);
        var ex = await Assert.ThrowsAsync<MoatException>(() => BuildAsync("FROM base\nRUN echo going to fail\nRUN echo oops >&2; exit 3\n", "broken"));

        Assert.Equal("build_step_failed", ex.Code);
        Assert.Contains("line 3", ex.Message);
        Assert.Contains("exited with 3", ex.Message);
        Assert.Null(await Templates.GetAsync("broken", Tenant, CancellationToken.None));
    }

    [SkippableFact]
    public async Task A_build_step_cannot_reach_the_network()
    {
        await RequireAsync(IsolationTier.Container);
        var (record, _, _) = await BuildAsync("FROM base\nRUN python3 -c \"import socket; s=socket.socket(); s.settimeout(2); r=s.connect_ex(('1.1.1.1', 80)); open('/net.txt','w').write(str(r != 0))\"\n", "no-net");

        var layer = Templates.Images.LayerPath(record.Layers[^1]);
        Assert.Equal("True", await File.ReadAllTextAsync(Path.Combine(layer, "net.txt")));
    }

    [Fact]
    public async Task Copy_from_outside_the_context_is_refused()
    {
        Directory.CreateDirectory(_context);
        var ex = await Assert.ThrowsAsync<MoatException>(() => BuildAsync("FROM base\nCOPY ../../etc/passwd /x\n", "escape"));
        Assert.Equal("copy_outside_context", ex.Code);
    }

    [Fact]
    public async Task Unsupported_instructions_are_refused_with_their_line()
    {
        var ex = Assert.Throws<MoatException>(() => Dockerfile.Parse("FROM base\nRUN true\nFROM other\n"));
        Assert.Contains("line 3", ex.Message);
        var unknown = Assert.Throws<MoatException>(() => Dockerfile.Parse("FROM base\nFROBNICATE x\n"));
        Assert.Equal("unsupported_instruction", unknown.Code);
        await Task.CompletedTask;
    }

    [Fact]
    public void The_parser_joins_continuations_and_expands_variables()
    {
        var steps = Dockerfile.Parse("ARG V=1\nFROM base\n# comment\nRUN echo a \\\n  # inner comment\n  && echo b\nENV A=1 B=\"two words\"\nCOPY --chown=1:2 [\"a b\", \"/c/\"]\n");

        Assert.Equal(["ARG", "FROM", "RUN", "ENV", "COPY"], steps.Select(s => s.Keyword));
        Assert.Equal("echo a    && echo b", steps[2].Arguments);
        Assert.Equal([new("A", "1"), new KeyValuePair<string, string>("B", "two words")], Dockerfile.Pairs(steps[3].Arguments, 1, "ENV"));
        Assert.Equal("1:2", steps[4].Flags["chown"]);
        Assert.Equal(["a b", "/c/"], steps[4].Exec!);
        Assert.Equal("x-1-y-d", Dockerfile.Expand("x-$V-${W:-y}-${D}", new Dictionary<string, string> { ["V"] = "1", ["D"] = "d" }));
    }
}
