using System.Security.Cryptography;
using Microsoft.Extensions.DependencyInjection;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Storage.Oci;
using Moat.Storage.Templates;

namespace Moat.Tests;

/// <summary>
/// Pulls from a real registry (docker-registry on loopback), anonymous, behind Docker-Hub-style
/// tokens and behind Basic auth with stored per-tenant logins; manifest lists; gzip and zstd
/// layers; digests verified; interrupted downloads resumed; layers downloaded concurrently.
/// </summary>
public sealed class TemplatesPullTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    private static readonly PullOptions Loopback = new() { Access = new RegistryAccess { AllowPrivateAddresses = true } };

    private TemplatePuller Puller => Node.Services.GetRequiredService<TemplatePuller>();
    private TemplateStore Templates => Node.Services.GetRequiredService<TemplateStore>();
    private RegistryCredentialStore Credentials => Node.Services.GetRequiredService<RegistryCredentialStore>();

    private static byte[] RandomLayer(string name, int files, int bytes)
    {
        var tar = new LayerTar().Dir(name);
        for (int i = 0; i < files; i++)
            tar.File($"{name}/f{i}", RandomNumberGenerator.GetBytes(bytes));
        return tar.Bytes();
    }

    private static string Layout(IReadOnlyList<byte[]> layers, byte[]? config = null, bool zstd = false)
    {
        var dir = Path.Combine(Path.GetTempPath(), "moat-layout-" + Guid.NewGuid().ToString("N")[..8]);
        if (!zstd)
        {
            TestImages.WriteLayout(dir, layers, config);
            return dir;
        }
        // zstd layers: written by hand (TestImages writes gzip).
        var blobs = Path.Combine(dir, "blobs", "sha256");
        Directory.CreateDirectory(blobs);
        config ??= TestImages.Config(layers);
        var descriptors = new System.Text.Json.Nodes.JsonArray();
        foreach (var layer in layers)
        {
            using var compressor = new ZstdSharp.Compressor(3);
            var blob = compressor.Wrap(layer).ToArray();
            TestImages.WriteBlob(blobs, blob);
            descriptors.Add(new System.Text.Json.Nodes.JsonObject { ["mediaType"] = MediaTypes.OciLayerZstd, ["digest"] = TestImages.Sha(blob), ["size"] = blob.Length });
        }
        var manifest = TestImages.ManifestFor(config, descriptors);
        TestImages.WriteBlob(blobs, config);
        TestImages.WriteBlob(blobs, manifest);
        File.WriteAllText(Path.Combine(dir, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");
        var index = new System.Text.Json.Nodes.JsonObject { ["schemaVersion"] = 2, ["manifests"] = new System.Text.Json.Nodes.JsonArray(new System.Text.Json.Nodes.JsonObject { ["mediaType"] = MediaTypes.OciManifest, ["digest"] = TestImages.Sha(manifest), ["size"] = manifest.Length, ["annotations"] = new System.Text.Json.Nodes.JsonObject { ["org.opencontainers.image.ref.name"] = "latest" } }) };
        File.WriteAllText(Path.Combine(dir, "index.json"), index.ToJsonString());
        return dir;
    }

    private static void RemoveLayout(string dir) => Directory.Delete(dir, recursive: true);

    [SkippableFact]
    public async Task An_image_pulled_anonymously_runs_with_its_config()
    {
        Skip.If(LoopbackRegistry.Unavailable is not null, LoopbackRegistry.Unavailable);
        await using var registry = await LoopbackRegistry.StartAsync();
        var extra = new LayerTar().Dir("srv").File("srv/hello.txt", "pulled\n").Bytes();
        var baseLayer = await File.ReadAllBytesAsync(Path.Combine(Repo.TemplatesDirectory, "base.tar"));
        var config = TestImages.Config([baseLayer, extra], env: ["PATH=/usr/bin:/bin", "GREETING=from-the-image"], workdir: "/srv", user: "1000");
        var layout = Layout([baseLayer, extra], config);
        try
        {
            await registry.PushAsync(layout, "latest", "team/app:1.0");

            var record = await Puller.PullAsync($"{registry.Host}/team/app:1.0", "pulled-app", Tenant, null, Loopback, null, CancellationToken.None);

            Assert.Equal(2, record.Layers.Count);
            Assert.StartsWith($"pull:{registry.Host}/team/app@sha256:", record.Source);
            Assert.Contains("GREETING=from-the-image", record.Config.Env);
            Assert.Empty(Directory.EnumerateFileSystemEntries(Templates.Images.BlobsDirectory));
            await RequireAsync(IsolationTier.Container);
            var sandbox = await Manager.CreateAsync(NodeFixture.Spec() with { Template = "pulled-app" }, Tenant, CancellationToken.None);
            try
            {
                var ran = await ShAsync(sandbox.Id, "echo $GREETING; pwd; id -u; cat hello.txt");
                Assert.Equal("from-the-image\n/srv\n1000\npulled\n", ran.Stdout);
            }
            finally
            {
                await Manager.DeleteAsync(sandbox.Id, Tenant, CancellationToken.None);
            }
        }
        finally
        {
            RemoveLayout(layout);
        }
    }

    [SkippableFact]
    public async Task A_manifest_list_gives_its_linux_amd64_image()
    {
        Skip.If(LoopbackRegistry.Unavailable is not null, LoopbackRegistry.Unavailable);
        await using var registry = await LoopbackRegistry.StartAsync();
        var dir = Path.Combine(Path.GetTempPath(), "moat-layout-" + Guid.NewGuid().ToString("N")[..8]);
        MultiPlatformLayout.Write(dir, new LayerTar().File("arch", "amd64").Bytes(), new LayerTar().File("arch", "arm64").Bytes(), "multi");
        try
        {
            await registry.PushAsync(dir, "multi", "multi/arch:1", all: true);

            var record = await Puller.PullAsync($"{registry.Host}/multi/arch:1", "multi-arch", Tenant, null, Loopback, null, CancellationToken.None);

            Assert.Contains("ARCH=amd64", record.Config.Env);
            Assert.Equal("amd64", await File.ReadAllTextAsync(Path.Combine(Templates.Images.LayerPath(record.Layers[0]), "arch")));
        }
        finally
        {
            RemoveLayout(dir);
        }
    }

    [SkippableFact]
    public async Task Zstd_layers_are_pulled()
    {
        Skip.If(LoopbackRegistry.Unavailable is not null, LoopbackRegistry.Unavailable);
        await using var registry = await LoopbackRegistry.StartAsync();
        var layer = new LayerTar().File("z/compressed", "with zstd").Bytes();
        var layout = Layout([layer], zstd: true);
        try
        {
            await registry.PushAsync(layout, "latest", "zstd/img:1");

            var record = await Puller.PullAsync($"{registry.Host}/zstd/img:1", "zstd-img", Tenant, null, Loopback, null, CancellationToken.None);

            Assert.Equal("with zstd", await File.ReadAllTextAsync(Path.Combine(Templates.Images.LayerPath(record.Layers[0]), "z", "compressed")));
        }
        finally
        {
            RemoveLayout(layout);
        }
    }

    [SkippableFact]
    public async Task A_private_registry_needs_the_tenants_stored_login()
    {
        Skip.If(LoopbackRegistry.Unavailable is not null, LoopbackRegistry.Unavailable);
        await using var registry = await LoopbackRegistry.StartAsync("moat", "s3cret-pass");
        var layout = Layout([new LayerTar().File("private", "yes").Bytes()]);
        try
        {
            await registry.PushAsync(layout, "latest", "secret/app:1");
            var reference = $"{registry.Host}/secret/app:1";

            var refused = await Assert.ThrowsAsync<MoatException>(() => Puller.PullAsync(reference, "private-app", Tenant, null, Loopback, null, CancellationToken.None));
            Assert.Equal("registry_unauthorized", refused.Code);

            await Credentials.SaveAsync(Tenant, registry.Host, "moat", "s3cret-pass", CancellationToken.None);
            var record = await Puller.PullAsync(reference, "private-app", Tenant, null, Loopback, null, CancellationToken.None);
            Assert.Equal("yes", await File.ReadAllTextAsync(Path.Combine(Templates.Images.LayerPath(record.Layers[0]), "private")));

            // Another tenant's pulls do not use this tenant's login, and do not see its template.
            var other = await Assert.ThrowsAsync<MoatException>(() => Puller.PullAsync(reference, "private-app", "tenant-b", null, Loopback, null, CancellationToken.None));
            Assert.Equal("registry_unauthorized", other.Code);
            Assert.Null(await Templates.GetAsync("private-app", "tenant-b", CancellationToken.None));

            // The secret is sealed in the database, not stored as text.
            var dbBytes = await File.ReadAllBytesAsync(Path.Combine(Node.DataDirectory, "moat.db"));
            var wal = Path.Combine(Node.DataDirectory, "moat.db-wal");
            if (File.Exists(wal))
                dbBytes = [.. dbBytes, .. await File.ReadAllBytesAsync(wal)];
            Assert.DoesNotContain("s3cret-pass", System.Text.Encoding.UTF8.GetString(dbBytes));
        }
        finally
        {
            await Credentials.DeleteAsync(Tenant, registry.Host, CancellationToken.None);
            RemoveLayout(layout);
        }
    }

    [SkippableFact]
    public async Task Docker_hub_style_tokens_are_fetched_from_the_realm()
    {
        Skip.If(LoopbackRegistry.Unavailable is not null, LoopbackRegistry.Unavailable);
        await using var registry = await LoopbackRegistry.StartAsync();
        await using var proxy = await RegistryProxy.StartAsync(registry);
        var layout = Layout([new LayerTar().File("t", "token").Bytes()]);
        try
        {
            await registry.PushAsync(layout, "latest", "tok/app:1");

            await Puller.PullAsync($"{proxy.Host}/tok/app:1", "token-anon", Tenant, null, Loopback, null, CancellationToken.None);
            Assert.True(proxy.TokensIssued >= 1);

            proxy.RequireLogin = ("hub-user", "hub-token");
            var refused = await Assert.ThrowsAsync<MoatException>(() => Puller.PullAsync($"{proxy.Host}/tok/app:1", "token-login", Tenant, null, Loopback, null, CancellationToken.None));
            Assert.Equal("registry_unauthorized", refused.Code);
            var record = await Puller.PullAsync($"{proxy.Host}/tok/app:1", "token-login", Tenant, null, Loopback with { Credential = new RegistryCredential("hub-user", "hub-token") }, null, CancellationToken.None);
            Assert.Single(record.Layers);
        }
        finally
        {
            RemoveLayout(layout);
        }
    }

    [SkippableFact]
    public async Task A_corrupted_blob_is_refused_and_nothing_is_kept()
    {
        Skip.If(LoopbackRegistry.Unavailable is not null, LoopbackRegistry.Unavailable);
        await using var registry = await LoopbackRegistry.StartAsync();
        await using var proxy = await RegistryProxy.StartAsync(registry);
        var layer = RandomLayer("corrupt", 4, 50_000);
        var layout = Layout([layer]);
        try
        {
            await registry.PushAsync(layout, "latest", "bad/app:1");
            proxy.CorruptBlobs = true;

            var ex = await Assert.ThrowsAnyAsync<MoatException>(() => Puller.PullAsync($"{proxy.Host}/bad/app:1", "corrupt-app", Tenant, null, Loopback, null, CancellationToken.None));

            Assert.True(ex.Code is "digest_mismatch" or "invalid_layer" or "unsupported_layer_entry", ex.Code + ": " + ex.Message);
            Assert.False(Templates.Images.HasLayer(TestImages.Sha(layer)[7..]));
            Assert.Null(await Templates.GetAsync("corrupt-app", Tenant, CancellationToken.None));
            Assert.DoesNotContain(Directory.EnumerateFileSystemEntries(Templates.Images.LayersDirectory), p => Path.GetFileName(p).StartsWith(".partial", StringComparison.Ordinal));
            // A bad download is not kept to be resumed from.
            Assert.Empty(Directory.GetFiles(Templates.Images.BlobsDirectory, "*.partial"));
        }
        finally
        {
            RemoveLayout(layout);
        }
    }

    [SkippableFact]
    public async Task An_interrupted_download_resumes_where_it_stopped()
    {
        Skip.If(LoopbackRegistry.Unavailable is not null, LoopbackRegistry.Unavailable);
        await using var registry = await LoopbackRegistry.StartAsync();
        await using var proxy = await RegistryProxy.StartAsync(registry);
        var layer = RandomLayer("resume", 8, 256 * 1024);
        var layout = Layout([layer]);
        try
        {
            await registry.PushAsync(layout, "latest", "resume/app:1");
            proxy.CutNextBlobAfter = 700_000;

            await Assert.ThrowsAnyAsync<Exception>(() => Puller.PullAsync($"{proxy.Host}/resume/app:1", "resumed-app", Tenant, null, Loopback, null, CancellationToken.None));
            var partial = Assert.Single(Directory.GetFiles(Templates.Images.BlobsDirectory, "*.partial"));
            // What arrived before the cut was kept (the kernel may drop what was in flight when the connection was reset).
            Assert.True(new FileInfo(partial).Length > 0);

            var record = await Puller.PullAsync($"{proxy.Host}/resume/app:1", "resumed-app", Tenant, null, Loopback, null, CancellationToken.None);

            Assert.Contains(proxy.RangesSeen, r => r.StartsWith("bytes=", StringComparison.Ordinal) && !r.StartsWith("bytes=0-", StringComparison.Ordinal));
            Assert.Equal(TestImages.Sha(layer)[7..], record.Layers[0]);
            Assert.Empty(Directory.EnumerateFileSystemEntries(Templates.Images.BlobsDirectory));
        }
        finally
        {
            RemoveLayout(layout);
        }
    }

    [SkippableFact]
    public async Task Layers_download_concurrently_and_shared_layers_are_not_fetched_again()
    {
        Skip.If(LoopbackRegistry.Unavailable is not null, LoopbackRegistry.Unavailable);
        await using var registry = await LoopbackRegistry.StartAsync();
        await using var proxy = await RegistryProxy.StartAsync(registry);
        var layers = Enumerable.Range(0, 4).Select(i => RandomLayer($"l{i}", 4, 256 * 1024)).ToList();
        var layout = Layout(layers);
        var layout2 = Layout([layers[0], layers[1], new LayerTar().File("top", "2").Bytes()]);
        try
        {
            await registry.PushAsync(layout, "latest", "many/app:1");
            await registry.PushAsync(layout2, "latest", "many/app:2");
            var progress = new List<LayerProgress>();

            await Puller.PullAsync($"{proxy.Host}/many/app:1", "many-1", Tenant, null, Loopback, new SyncProgress<LayerProgress>(p => { lock (progress) progress.Add(p); }), CancellationToken.None);
            Assert.True(proxy.MaxConcurrentBlobs >= 2, $"at most {proxy.MaxConcurrentBlobs} blob downloads at once");
            Assert.Contains(progress, p => p.Status == "downloading" && p.Bytes > 0);
            Assert.Equal(4, progress.Count(p => p.Status == "done"));

            progress.Clear();
            await Puller.PullAsync($"{proxy.Host}/many/app:2", "many-2", Tenant, null, Loopback, new SyncProgress<LayerProgress>(p => { lock (progress) progress.Add(p); }), CancellationToken.None);
            Assert.Equal(2, progress.Count(p => p.Status == "exists"));
        }
        finally
        {
            RemoveLayout(layout);
            RemoveLayout(layout2);
        }
    }

    [Fact]
    public async Task A_server_does_not_pull_from_private_addresses_unless_allowed()
    {
        var ex = await Assert.ThrowsAsync<MoatException>(() => Puller.PullAsync("127.0.0.1:1/x/y:1", "nope", Tenant, null, new PullOptions(), null, CancellationToken.None));
        Assert.Equal("registry_unreachable", ex.Code);
        Assert.Contains("private", ex.Message);
    }

    [Theory]
    [InlineData("python:3.12-slim", "docker.io", "library/python", "3.12-slim")]
    [InlineData("ghcr.io/org/app", "ghcr.io", "org/app", "latest")]
    [InlineData("127.0.0.1:5000/team/tool:1", "127.0.0.1:5000", "team/tool", "1")]
    [InlineData("localhost/x", "localhost", "x", "latest")]
    [InlineData("user/repo:v2", "docker.io", "user/repo", "v2")]
    public void Image_references_are_parsed_with_docker_hub_defaults(string text, string registry, string repository, string tag)
    {
        var r = ImageReference.Parse(text);
        Assert.Equal((registry, repository, tag), (r.Registry, r.Repository, r.Reference));
    }

    [Theory]
    [InlineData("")]
    [InlineData("UPPER/case")]
    [InlineData("a/../b")]
    [InlineData("http://x/y")]
    [InlineData("x@sha256:123")]
    public void Bad_image_references_are_refused(string text) =>
        Assert.Contains(Assert.ThrowsAny<MoatException>(() => ImageReference.Parse(text)).Code, new[] { "invalid_image_reference", "invalid_digest" });

    private sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
