using Microsoft.Extensions.DependencyInjection;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Storage.Templates;

namespace Moat.Tests;

/// <summary>
/// Sandboxes from imported images: a glibc one (Debian), a musl one and a distroless-style one with
/// no shell — the agent brings its own loader and libc, so it runs in all. Whiteouts of an upper
/// layer hide lower files; the image config is honoured; imports are an OCI layout folder or a
/// docker-save archive; a template in use cannot be deleted.
/// </summary>
public sealed class TemplatesImageTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    private TemplateImporter Importer => Node.Services.GetRequiredService<TemplateImporter>();
    private TemplateStore Templates => Node.Services.GetRequiredService<TemplateStore>();

    private static readonly SemaphoreSlim Gate = new(1, 1);
    private static bool _imported;

    private const string HelloC = """
        #include <stdio.h>
        int main(int argc, char **argv) { printf("hello from %s\n", argc > 1 ? argv[1] : "nowhere"); return 0; }
        """;

    /// <summary>Imports the three test images once per class.</summary>
    private async Task EnsureImagesAsync()
    {
        await Gate.WaitAsync();
        try
        {
            if (_imported)
                return;
            var work = Path.Combine(Path.GetTempPath(), "moat-images-" + Guid.NewGuid().ToString("N")[..8]);
            Directory.CreateDirectory(work);
            try
            {
                // glibc: Debian's base rootfs, then a layer that deletes and hides things.
                var debian = await File.ReadAllBytesAsync(Path.Combine(Repo.TemplatesDirectory, "base.tar"));
                var top = new LayerTar()
                    .Dir("etc").File("etc/.wh.debian_version", "")
                    .Dir("usr/share/doc", 0x1ED).File("usr/share/doc/.wh..wh..opq", "").File("usr/share/doc/only-this", "new\n")
                    .Dir("opt/app").File("opt/app/run.sh", "#!/bin/sh\necho app-ran\n", 0x1ED)
                    .Bytes();
                var config = TestImages.Config([debian, top], env: ["PATH=/usr/local/bin:/usr/bin:/bin", "APP_MODE=test"], workdir: "/opt/app", user: "", cmd: ["/opt/app/run.sh"]);
                var layout = Path.Combine(work, "debian-layout");
                TestImages.WriteLayout(layout, [debian, top], config);
                await Importer.ImportPathAsync(layout, "img-glibc", Tenant, null, null, CancellationToken.None);

                // musl: a dynamically linked program with musl's loader, and busybox as the shell.
                var musl = new LayerTar()
                    .Dir("lib").File("lib/ld-musl-x86_64.so.1", await File.ReadAllBytesAsync("/lib/x86_64-linux-musl/libc.so"), 0x1ED)
                    .Dir("bin").File("bin/busybox", await File.ReadAllBytesAsync("/bin/busybox"), 0x1ED).Symlink("bin/sh", "busybox").Symlink("bin/cat", "busybox").Symlink("bin/id", "busybox")
                    .Dir("usr/bin").File("usr/bin/hello", await CompileAsync(work, "musl-gcc", "hello-musl"), 0x1ED)
                    .Bytes();
                await File.WriteAllBytesAsync(Path.Combine(work, "musl.tar"), TestImages.DockerSave([musl], TestImages.Config([musl], env: ["PATH=/usr/bin:/bin"])));
                await Importer.ImportPathAsync(Path.Combine(work, "musl.tar"), "img-musl", Tenant, null, null, CancellationToken.None);

                // distroless: one static binary, nothing else — no shell, no libc, no /etc.
                var distroless = new LayerTar().File("hello", await CompileAsync(work, "musl-gcc", "hello-static", "-static"), 0x1ED).Bytes();
                var archive = Path.Combine(work, "distroless-layout.tar.gz");
                var distrolessLayout = Path.Combine(work, "distroless");
                TestImages.WriteLayout(distrolessLayout, [distroless], TestImages.Config([distroless], entrypoint: ["/hello"]));
                await LoopbackRegistry.RunAsync("tar", ["-czf", archive, "-C", distrolessLayout, "."]);
                await Importer.ImportPathAsync(archive, "img-distroless", Tenant, null, null, CancellationToken.None);
                _imported = true;
            }
            finally
            {
                Directory.Delete(work, recursive: true);
            }
        }
        finally
        {
            Gate.Release();
        }
    }

    private static async Task<byte[]> CompileAsync(string work, string compiler, string name, params string[] flags)
    {
        Skip.IfNot(File.Exists("/usr/bin/" + compiler), $"{compiler} is not installed (build/setup.sh installs musl-tools)");
        var source = Path.Combine(work, "hello.c");
        await File.WriteAllTextAsync(source, HelloC);
        var output = Path.Combine(work, name);
        await LoopbackRegistry.RunAsync(compiler, [.. flags, "-O2", "-o", output, source]);
        return await File.ReadAllBytesAsync(output);
    }

    private async Task<SandboxRecord> CreateFromAsync(IsolationTier tier, string template)
    {
        await RequireAsync(tier);
        await EnsureImagesAsync();
        var record = await Manager.CreateAsync(NodeFixture.Spec(tier) with { Template = template }, Tenant, CancellationToken.None);
        return record;
    }

    [SkippableTheory]
    [MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_glibc_image_runs_and_its_whiteouts_hide_lower_files(IsolationTier tier)
    {
        var sandbox = await CreateFromAsync(tier, "img-glibc");
        try
        {
            var ran = await ShAsync(sandbox.Id, "test -e /etc/debian_version && echo still-there; python3 -c 'import os; print(*os.listdir(\"/usr/share/doc\"))'; echo $APP_MODE; pwd; ./run.sh; python3 -c 'print(6*7)'");
            // (python, not ls: GNU ls's statx fails under this gVisor release.)
            Assert.Equal(0, ran.ExitCode);
            Assert.Equal("only-this\ntest\n/opt/app\napp-ran\n42\n", ran.Stdout);
            // The lower layer itself is untouched: whiteouts live in the upper layer's directory.
            var lower = Templates.Images.LayerPath((await Templates.GetAsync("img-glibc", Tenant, CancellationToken.None))!.Layers[0]);
            Assert.True(File.Exists(Path.Combine(lower, "etc", "debian_version")));
        }
        finally
        {
            await Manager.DeleteAsync(sandbox.Id, Tenant, CancellationToken.None);
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_musl_image_runs(IsolationTier tier)
    {
        var sandbox = await CreateFromAsync(tier, "img-musl");
        try
        {
            var ran = await ShAsync(sandbox.Id, "hello musl; id -u; cat /etc/passwd | grep -c '^user:'");
            Assert.Equal(0, ran.ExitCode);
            Assert.Equal("hello from musl\n1000\n1\n", ran.Stdout);
        }
        finally
        {
            await Manager.DeleteAsync(sandbox.Id, Tenant, CancellationToken.None);
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_distroless_image_without_a_shell_runs(IsolationTier tier)
    {
        var sandbox = await CreateFromAsync(tier, "img-distroless");
        try
        {
            var ran = await RunAsync(sandbox.Id, new CommandSpec { Argv = ["/hello", "distroless"] });
            Assert.Equal(0, ran.ExitCode);
            Assert.Equal("hello from distroless\n", ran.Stdout);
            var noShell = await Assert.ThrowsAsync<MoatException>(() => ShAsync(sandbox.Id, "echo hi"));
            Assert.Equal(SandboxManager.CommandNotFound, noShell.Code);
        }
        finally
        {
            await Manager.DeleteAsync(sandbox.Id, Tenant, CancellationToken.None);
        }
    }

    [SkippableFact]
    public async Task The_image_config_is_recorded_with_the_template()
    {
        await EnsureImagesAsync();
        var glibc = (await Templates.GetAsync("img-glibc", Tenant, CancellationToken.None))!;
        var distroless = (await Templates.GetAsync("img-distroless", Tenant, CancellationToken.None))!;

        Assert.Equal("/opt/app", glibc.Config.WorkingDir);
        Assert.Equal(["/opt/app/run.sh"], glibc.Config.Cmd);
        Assert.Equal(["/hello"], distroless.Config.Entrypoint);
        Assert.Contains("PATH=", distroless.Config.Env[0]);
        Assert.StartsWith("import:", glibc.Source);
        // The Debian layer is the built-in template's layer: stored once.
        var builtin = (await Templates.GetAsync("base", Tenant, CancellationToken.None))!;
        Assert.Equal(builtin.Layers[0], glibc.Layers[0]);
    }

    [SkippableFact]
    public async Task Another_tenant_does_not_see_the_images()
    {
        await EnsureImagesAsync();
        Assert.Null(await Templates.GetAsync("img-musl", "tenant-b", CancellationToken.None));
        var ex = await Assert.ThrowsAsync<MoatException>(() => Manager.CreateAsync(NodeFixture.Spec() with { Template = "img-musl" }, "tenant-b", CancellationToken.None));
        Assert.Equal("template_not_found", ex.Code);
    }

    [Fact]
    public async Task An_archive_with_an_escaping_entry_is_refused_whole()
    {
        var archive = new LayerTar().File("index.json", "{}").File("../../escape", "x").Bytes();
        var ex = await Assert.ThrowsAsync<MoatException>(() => Importer.ImportArchiveAsync(new MemoryStream(archive), "evil.tar", "evil", Tenant, null, null, CancellationToken.None));

        Assert.Equal("unsafe_layer", ex.Code);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Templates.Images.TempDirectory));
    }

    [Fact]
    public async Task An_archive_whose_manifest_is_a_symlink_to_a_host_file_is_refused()
    {
        var archive = new LayerTar().Symlink("manifest.json", "/etc/passwd").Bytes();
        var ex = await Assert.ThrowsAsync<MoatException>(() => Importer.ImportArchiveAsync(new MemoryStream(archive), "evil.tar", "evil", Tenant, null, null, CancellationToken.None));

        Assert.Equal("invalid_image", ex.Code);
        Assert.DoesNotContain("root:", ex.Message);
    }

    [Fact]
    public async Task An_image_for_another_architecture_is_refused()
    {
        var layer = new LayerTar().File("x", "1").Bytes();
        var dir = Path.Combine(Path.GetTempPath(), "moat-arm-" + Guid.NewGuid().ToString("N")[..8]);
        TestImages.WriteLayout(dir, [layer], TestImages.Config([layer], arch: "arm64"));
        try
        {
            var ex = await Assert.ThrowsAsync<MoatException>(() => Importer.ImportPathAsync(dir, "arm", Tenant, null, null, CancellationToken.None));
            Assert.Equal("unsupported_platform", ex.Code);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task A_tampered_blob_is_refused()
    {
        var layer = new LayerTar().File("x", "1").Bytes();
        var dir = Path.Combine(Path.GetTempPath(), "moat-tamper-" + Guid.NewGuid().ToString("N")[..8]);
        TestImages.WriteLayout(dir, [layer]);
        try
        {
            var blob = Directory.GetFiles(Path.Combine(dir, "blobs", "sha256")).Single(f => new FileInfo(f).Length > 40 && File.ReadAllBytes(f)[0] == 0x1f);
            var bytes = File.ReadAllBytes(blob);
            // A different layer under the old name: its diff id no longer matches the config.
            File.WriteAllBytes(blob, TestImages.Gzip(new LayerTar().File("x", "2").Bytes()));
            var ex = await Assert.ThrowsAsync<MoatException>(() => Importer.ImportPathAsync(dir, "tampered", Tenant, null, null, CancellationToken.None));
            Assert.Equal("digest_mismatch", ex.Code);
            Assert.NotEmpty(bytes);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
