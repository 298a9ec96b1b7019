using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// Templates through a real server and the CLI: import an archive and a layout folder (the CLI
/// form <c>moat template import PATH --name NAME</c>, remote and embedded), pull from a registry on
/// loopback with progress, build with streamed logs, tag, delete (refused while in use), tenancy.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class TemplateTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output), IDisposable
{
    private readonly string _work = Path.Combine(Path.GetTempPath(), "moat-tpl-e2e-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly ITestOutputHelper _output = output;

    public void Dispose()
    {
        if (Directory.Exists(_work))
            Directory.Delete(_work, recursive: true);
    }

    private static string Sha(byte[] b) => "sha256:" + Convert.ToHexStringLower(SHA256.HashData(b));

    private static byte[] Layer(params (string Name, string Content)[] files)
    {
        using var buffer = new MemoryStream();
        using (var writer = new TarWriter(buffer, TarEntryFormat.Pax, leaveOpen: true))
        {
            foreach (var (name, content) in files)
                writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(Encoding.UTF8.GetBytes(content)), Mode = (UnixFileMode)0x1ED });
        }
        return buffer.ToArray();
    }

    /// <summary>An OCI layout: the built-in template's Debian rootfs plus a layer of the given files.</summary>
    private async Task<string> LayoutAsync(string name, params (string Name, string Content)[] files)
    {
        var dir = Path.Combine(_work, name);
        var blobs = Path.Combine(dir, "blobs", "sha256");
        Directory.CreateDirectory(blobs);
        var debian = await File.ReadAllBytesAsync(Path.Combine(Repo.Root, "artifacts", "templates", "base.tar"));
        var top = Layer(files);
        var descriptors = new JsonArray();
        foreach (var layer in new[] { debian, top })
        {
            using var gz = new MemoryStream();
            using (var z = new GZipStream(gz, CompressionLevel.Fastest, leaveOpen: true))
                z.Write(layer);
            var blob = gz.ToArray();
            await File.WriteAllBytesAsync(Path.Combine(blobs, Sha(blob)[7..]), blob);
            descriptors.Add(new JsonObject { ["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip", ["digest"] = Sha(blob), ["size"] = blob.Length });
        }
        var config = Encoding.UTF8.GetBytes(new JsonObject
        {
            ["architecture"] = "amd64",
            ["os"] = "linux",
            ["config"] = new JsonObject { ["Env"] = new JsonArray("PATH=/usr/bin:/bin", $"IMAGE={name}"), ["Cmd"] = new JsonArray("/bin/sh") },
            ["rootfs"] = new JsonObject { ["type"] = "layers", ["diff_ids"] = new JsonArray(Sha(debian), Sha(top)) },
        }.ToJsonString());
        await File.WriteAllBytesAsync(Path.Combine(blobs, Sha(config)[7..]), config);
        var manifest = Encoding.UTF8.GetBytes(new JsonObject
        {
            ["schemaVersion"] = 2,
            ["mediaType"] = "application/vnd.oci.image.manifest.v1+json",
            ["config"] = new JsonObject { ["mediaType"] = "application/vnd.oci.image.config.v1+json", ["digest"] = Sha(config), ["size"] = config.Length },
            ["layers"] = descriptors,
        }.ToJsonString());
        await File.WriteAllBytesAsync(Path.Combine(blobs, Sha(manifest)[7..]), manifest);
        await File.WriteAllTextAsync(Path.Combine(dir, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");
        await File.WriteAllTextAsync(Path.Combine(dir, "index.json"), new JsonObject
        {
            ["schemaVersion"] = 2,
            ["manifests"] = new JsonArray(new JsonObject { ["mediaType"] = "application/vnd.oci.image.manifest.v1+json", ["digest"] = Sha(manifest), ["size"] = manifest.Length, ["annotations"] = new JsonObject { ["org.opencontainers.image.ref.name"] = "latest" } }),
        }.ToJsonString());
        return dir;
    }

    private async Task<string> TarOfAsync(string directory)
    {
        var file = directory + ".tar";
        await TarFile.CreateFromDirectoryAsync(directory, file, includeBaseDirectory: false);
        return file;
    }

    private Task<CliResult> CliAsync(bool remote, params string[] args)
    {
        var env = new Dictionary<string, string>();
        if (remote)
        {
            env["MOAT_URL"] = Server.Url.AbsoluteUri;
            env["MOAT_API_KEY"] = Server.AdminKey;
        }
        else
        {
            // Embedded: the server's own data directory, as `moat run` on the same machine would use.
            env["MOAT_DATA"] = Server.DataDirectory;
            env["MOAT_ARTIFACTS"] = Path.Combine(Repo.Root, "artifacts");
        }
        return MoatCli.RunAsync(env, null, TimeSpan.FromMinutes(3), _output.WriteLine, args);
    }

    [SkippableFact]
    public async Task Cli_imports_an_archive_remotely_and_a_sandbox_runs_it()
    {
        var layout = await LayoutAsync("remote-import", ("srv/hello", "from an archive\n"));
        var archive = await TarOfAsync(layout);

        var imported = await CliAsync(remote: true, "template", "import", archive, "--name", "e2e-archive");

        Assert.Equal(0, imported.Exit);
        Assert.Equal("e2e-archive\n", imported.Stdout);
        var template = await Client.GetTemplateAsync("e2e-archive", Timeout);
        Assert.Equal(2, template.Layers!.Count);
        Assert.False(template.Public);
        await using var sandbox = await CreateAsync(o => o.Template = "e2e-archive");
        var ran = await sandbox.Commands.RunAsync(["sh", "-c", "cat /srv/hello; echo $IMAGE"], cancellationToken: Timeout);
        Assert.Equal("from an archive\nremote-import\n", ran.Stdout);
    }

    [SkippableFact]
    public async Task Cli_imports_a_layout_folder_remotely()
    {
        var layout = await LayoutAsync("remote-folder", ("x", "1"));

        var imported = await CliAsync(remote: true, "template", "import", layout, "--name", "e2e-folder", "--json");

        Assert.Equal(0, imported.Exit);
        Assert.Contains("\"name\": \"e2e-folder\"", imported.Stdout);
        Assert.Contains(await Client.ListTemplatesAsync(Timeout), t => t.Name == "e2e-folder");
    }

    [SkippableFact]
    public async Task Cli_imports_embedded_without_a_server_and_moat_run_uses_it()
    {
        var layout = await LayoutAsync("embedded", ("opt/marker", "embedded import\n"));

        var imported = await CliAsync(remote: false, "template", "import", layout, "--name", "e2e-embedded");
        Assert.Equal(0, imported.Exit);

        // Made on the node directly, it is public: the server lists it to every tenant, and `moat run` runs it.
        Assert.Contains(await Client.ListTemplatesAsync(Timeout), t => t.Name == "e2e-embedded" && t.Public == true);
        var ran = await CliAsync(remote: false, "run", "--isolation", "container", "--template", "e2e-embedded", "--", "cat", "/opt/marker");
        Assert.Equal(0, ran.Exit);
        Assert.Equal("embedded import\n", ran.Stdout);
        var removed = await CliAsync(remote: false, "template", "rm", "e2e-embedded");
        Assert.Equal(0, removed.Exit);
    }

    [SkippableFact]
    public async Task A_template_in_use_cannot_be_deleted_and_another_tenant_never_sees_it()
    {
        var layout = await LayoutAsync("in-use", ("y", "2"));
        await using (var archive = File.OpenRead(await TarOfAsync(layout)))
            await Client.ImportTemplateAsync(archive, "e2e-in-use", cancellationToken: Timeout);
        var tagged = await Client.TagTemplateAsync("e2e-in-use", "e2e-in-use-tag", cancellationToken: Timeout);
        Assert.Equal("tag:e2e-in-use", tagged.Source);

        // Another tenant: 404 on every verb.
        var other = await OtherTenantClientAsync();
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.GetTemplateAsync("e2e-in-use", Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.DeleteTemplateAsync("e2e-in-use", Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.TagTemplateAsync("e2e-in-use", "stolen", cancellationToken: Timeout));
        Assert.DoesNotContain(await other.ListTemplatesAsync(Timeout), t => t.Name.StartsWith("e2e-in-use", StringComparison.Ordinal));
        var create = await Assert.ThrowsAsync<MoatNotFoundException>(() => other.CreateSandboxAsync(new SandboxCreateOptions { Template = "e2e-in-use", Isolation = "container" }, Timeout));
        Assert.Equal("template_not_found", create.Code);

        var sandbox = await CreateAsync(o => o.Template = "e2e-in-use");
        var refused = await Assert.ThrowsAsync<MoatConflictException>(() => Client.DeleteTemplateAsync("e2e-in-use", Timeout));
        Assert.Equal("template_in_use", refused.Code);
        Assert.Contains(sandbox.Id, refused.Message);

        await sandbox.KillAsync(Timeout);
        await Client.DeleteTemplateAsync("e2e-in-use", Timeout);
        await Assert.ThrowsAsync<MoatNotFoundException>(() => Client.GetTemplateAsync("e2e-in-use", Timeout));
        // The tag still works: its layers were kept.
        await using var fromTag = await CreateAsync(o => o.Template = "e2e-in-use-tag");
        Assert.Equal("2", (await fromTag.Commands.RunAsync(["cat", "/y"], cancellationToken: Timeout)).Stdout);
    }

    [SkippableFact]
    public async Task Only_an_operator_makes_public_templates()
    {
        var layout = await LayoutAsync("public", ("p", "3"));
        await using var archive = File.OpenRead(await TarOfAsync(layout));
        var ex = await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => Client.ImportTemplateAsync(archive, "e2e-public", makePublic: true, cancellationToken: Timeout));
        Assert.Equal("operator_required", ex.Code);
        await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => Client.DeleteTemplateAsync("base", Timeout));
    }

    [SkippableFact]
    public async Task A_build_streams_its_log_and_caches_steps()
    {
        var context = Path.Combine(_work, "ctx");
        Directory.CreateDirectory(context);
        await File.WriteAllTextAsync(Path.Combine(context, "greeting.txt"), "hello\n");
        await File.WriteAllTextAsync(Path.Combine(context, "Dockerfile"), "FROM base\nRUN echo step-one-ran && echo one > /one.txt\nCOPY greeting.txt /srv/\nWORKDIR /srv\nRUN cat greeting.txt /one.txt > both.txt\nCMD [\"cat\", \"both.txt\"]\n");

        var first = await CliAsync(remote: true, "template", "build", "-f", Path.Combine(context, "Dockerfile"), context, "--name", "e2e-built", "--isolation", "container");
        Assert.Equal(0, first.Exit);
        Assert.Contains("step-one-ran", first.Stdout);
        Assert.EndsWith("e2e-built\n", first.Stdout);

        var events = new List<TemplateEventDto>();
        await using (var tar = File.OpenRead(await TarOfAsync(context)))
            await Client.BuildTemplateAsync(tar, "e2e-built", isolation: "container", onEvent: e => events.Add(e), cancellationToken: Timeout);
        Assert.Equal(4, events.Count(e => e.Log?.Contains("---> cached", StringComparison.Ordinal) == true));
        Assert.DoesNotContain(events, e => e.Log == "step-one-ran");

        await using var sandbox = await CreateAsync(o => o.Template = "e2e-built");
        Assert.Equal("hello\none\n", (await sandbox.Commands.RunAsync(["cat", "both.txt"], cancellationToken: Timeout)).Stdout);
    }

    [SkippableFact]
    public async Task Pull_from_a_loopback_registry_with_progress_and_a_stored_login()
    {
        Skip.IfNot(File.Exists("/usr/bin/docker-registry") && File.Exists("/usr/bin/skopeo"), "docker-registry and skopeo are needed (build/setup.sh installs them)");
        var layout = await LayoutAsync("pulled", ("pulled", "from the registry\n"));
        var port = LoopbackPorts.Free();
        var storage = Path.Combine(_work, "registry");
        Directory.CreateDirectory(storage);
        var config = Path.Combine(_work, "registry.yml");
        await File.WriteAllTextAsync(config, $"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {storage}\nhttp:\n  addr: 127.0.0.1:{port}\n");
        using var registry = Process.Start(new ProcessStartInfo("/usr/bin/docker-registry", ["serve", config]) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false })!;
        registry.BeginErrorReadLine();
        registry.BeginOutputReadLine();
        try
        {
            using (var http = new HttpClient())
            {
                for (int i = 0; i < 100; i++)
                {
                    try
                    {
                        (await http.GetAsync($"http://127.0.0.1:{port}/v2/")).Dispose();
                        break;
                    }
                    catch (HttpRequestException)
                    {
                        await Task.Delay(100);
                    }
                }
            }
            using (var skopeo = Process.Start(new ProcessStartInfo("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", $"oci:{layout}:latest", $"docker://127.0.0.1:{port}/e2e/app:1"]) { UseShellExecute = false })!)
            {
                await skopeo.WaitForExitAsync();
                Assert.Equal(0, skopeo.ExitCode);
            }

            var events = new List<TemplateEventDto>();
            var pulled = await Client.PullTemplateAsync(new PullTemplateRequest { Image = $"127.0.0.1:{port}/e2e/app:1" }, e => events.Add(e), Timeout);
            Assert.Equal("app:1", pulled.Name);
            Assert.Contains(events, e => e.Progress is { Status: "done" or "exists" });
            Assert.StartsWith($"pull:127.0.0.1:{port}/e2e/app@sha256:", pulled.Source);

            var cli = await CliAsync(remote: true, "template", "pull", $"127.0.0.1:{port}/e2e/app:1", "--name", "e2e-pulled-cli");
            Assert.Equal(0, cli.Exit);
            await using var sandbox = await CreateAsync(o => o.Template = "e2e-pulled-cli");
            Assert.Equal("from the registry\n", (await sandbox.Commands.RunAsync(["cat", "/pulled"], cancellationToken: Timeout)).Stdout);

            // Logins are per tenant and never shown.
            await Client.SaveRegistryLoginAsync($"127.0.0.1:{port}", "someone", "not-shown", Timeout);
            var logins = await Client.ListRegistryLoginsAsync(Timeout);
            Assert.Contains(logins, l => l.Registry == $"127.0.0.1:{port}" && l.Username == "someone");
            Assert.Empty(await (await OtherTenantClientAsync()).ListRegistryLoginsAsync(Timeout));
            await Client.DeleteRegistryLoginAsync($"127.0.0.1:{port}", Timeout);
        }
        finally
        {
            registry.Kill();
            await registry.WaitForExitAsync();
        }
    }

    private async Task<MoatClient> OtherTenantClientAsync()
    {
        var keys = (Moat.Server.Auth.ApiKeyService)Server.Services.GetService(typeof(Moat.Server.Auth.ApiKeyService))!;
        var (_, key) = await keys.CreateAsync("tenant-templates-other", "admin", "other", cancellationToken: Timeout);
        return Server.Client(key);
    }

}
