using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;

namespace Moat.Tests;

/// <summary>
/// A real OCI registry on loopback: Debian's <c>docker-registry</c> (distribution 2.8) on a free
/// port with a config and storage of its own, optionally behind htpasswd (Basic) auth. Images are
/// pushed to it with <c>skopeo</c> from OCI layouts the tests write. Stopped and removed on dispose.
/// </summary>
public sealed class LoopbackRegistry : IAsyncDisposable
{
    private readonly Process _process;
    private readonly string _directory;

    private LoopbackRegistry(Process process, string directory, int port, string? user, string? password)
    {
        _process = process;
        _directory = directory;
        Port = port;
        User = user;
        Password = password;
    }

    /// <summary>host:port, as image references name it.</summary>
    public string Host => $"127.0.0.1:{Port}";

    public int Port { get; }
    public string? User { get; }
    public string? Password { get; }

    /// <summary>Why registry tests cannot run here, or null.</summary>
    public static string? Unavailable =>
        !File.Exists("/usr/bin/docker-registry") ? "docker-registry is not installed (build/setup.sh installs it)"
        : !File.Exists("/usr/bin/skopeo") ? "skopeo is not installed (build/setup.sh installs it)"
        : null;

    /// <summary>Starts a registry; with <paramref name="user"/> it requires that login.</summary>
    public static async Task<LoopbackRegistry> StartAsync(string? user = null, string? password = null)
    {
        var directory = Path.Combine(Path.GetTempPath(), "moat-registry-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(Path.Combine(directory, "storage"));
        int port = FreePort();
        var config = new StringBuilder($"""
            version: 0.1
            log:
              level: error
              accesslog:
                disabled: true
            storage:
              filesystem:
                rootdirectory: {directory}/storage
              delete:
                enabled: true
            http:
              addr: 127.0.0.1:{port}
            """);
        config.Append('\n');
        if (user is not null)
        {
            await File.WriteAllTextAsync(Path.Combine(directory, "htpasswd"), $"{user}:{Bcrypt(password!)}\n");
            config.Append($"""
                auth:
                  htpasswd:
                    realm: moat-test
                    path: {directory}/htpasswd
                """).Append('\n');
        }
        await File.WriteAllTextAsync(Path.Combine(directory, "config.yml"), config.ToString());
        var start = new ProcessStartInfo("/usr/bin/docker-registry", ["serve", Path.Combine(directory, "config.yml")])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        var process = Process.Start(start)!;
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var registry = new LoopbackRegistry(process, directory, port, user, password);
        using var http = new HttpClient();
        for (int i = 0; i < 100; i++)
        {
            try
            {
                using var response = await http.GetAsync($"http://127.0.0.1:{port}/v2/");
                if (response.StatusCode is HttpStatusCode.OK or HttpStatusCode.Unauthorized)
                    return registry;
            }
            catch (HttpRequestException)
            {
            }
            if (process.HasExited)
                break;
            await Task.Delay(100);
        }
        await registry.DisposeAsync();
        throw new InvalidOperationException($"docker-registry did not start on port {port}");
    }

    /// <summary>Pushes an OCI layout (its image <paramref name="tag"/>, or the whole index with <paramref name="all"/>) as REPO:TAG.</summary>
    public async Task PushAsync(string layout, string tag, string repositoryAndTag, bool all = false)
    {
        var args = new List<string> { "copy", "--quiet", "--dest-tls-verify=false" };
        if (all)
            args.Add("--all");
        if (User is not null)
            args.Add($"--dest-creds={User}:{Password}");
        args.Add($"oci:{layout}:{tag}");
        args.Add($"docker://{Host}/{repositoryAndTag}");
        await RunAsync("skopeo", args);
    }

    /// <summary>Runs a host tool, failing with its output when it fails.</summary>
    public static async Task<string> RunAsync(string file, IEnumerable<string> args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{file} {string.Join(' ', start.ArgumentList)} failed ({process.ExitCode}): {await stderr}{await stdout}");
        return await stdout;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                await _process.WaitForExitAsync();
            }
        }
        catch (InvalidOperationException)
        {
        }
        _process.Dispose();
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>A bcrypt hash for htpasswd, made by the system's libcrypt.</summary>
    private static string Bcrypt(string password)
    {
        var setting = CryptGensalt("$2b$", 5, IntPtr.Zero, 0);
        var hash = Crypt(password, Marshal.PtrToStringUTF8(setting)!);
        return Marshal.PtrToStringUTF8(hash)!;
    }

    [DllImport("libcrypt.so.1", EntryPoint = "crypt_gensalt")]
    private static extern IntPtr CryptGensalt([MarshalAs(UnmanagedType.LPUTF8Str)] string prefix, ulong count, IntPtr rbytes, int nrbytes);

    [DllImport("libcrypt.so.1", EntryPoint = "crypt")]
    private static extern IntPtr Crypt([MarshalAs(UnmanagedType.LPUTF8Str)] string key, [MarshalAs(UnmanagedType.LPUTF8Str)] string setting);
}

/// <summary>Writes OCI layouts with several platforms (an index of manifests), as skopeo pushes them as manifest lists.</summary>
public static class MultiPlatformLayout
{
    /// <summary>A layout whose tag <paramref name="tag"/> is an index of an amd64 and an arm64 image.</summary>
    public static void Write(string directory, byte[] amd64Layer, byte[] arm64Layer, string tag)
    {
        var blobs = Path.Combine(directory, "blobs", "sha256");
        Directory.CreateDirectory(blobs);
        var manifests = new JsonArray();
        foreach (var (arch, layer) in new[] { ("arm64", arm64Layer), ("amd64", amd64Layer) })
        {
            var gz = TestImages.Gzip(layer);
            TestImages.WriteBlob(blobs, gz);
            var config = TestImages.Config([layer], arch: arch, env: [$"ARCH={arch}"]);
            TestImages.WriteBlob(blobs, config);
            var manifest = TestImages.ManifestFor(config, new JsonArray(new JsonObject { ["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip", ["digest"] = TestImages.Sha(gz), ["size"] = gz.Length }));
            TestImages.WriteBlob(blobs, manifest);
            manifests.Add(new JsonObject { ["mediaType"] = "application/vnd.oci.image.manifest.v1+json", ["digest"] = TestImages.Sha(manifest), ["size"] = manifest.Length, ["platform"] = new JsonObject { ["architecture"] = arch, ["os"] = "linux" } });
        }
        var index = Encoding.UTF8.GetBytes(new JsonObject { ["schemaVersion"] = 2, ["mediaType"] = "application/vnd.oci.image.index.v1+json", ["manifests"] = manifests }.ToJsonString());
        TestImages.WriteBlob(blobs, index);
        File.WriteAllText(Path.Combine(directory, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");
        File.WriteAllText(Path.Combine(directory, "index.json"), new JsonObject
        {
            ["schemaVersion"] = 2,
            ["manifests"] = new JsonArray(new JsonObject { ["mediaType"] = "application/vnd.oci.image.index.v1+json", ["digest"] = TestImages.Sha(index), ["size"] = index.Length, ["annotations"] = new JsonObject { ["org.opencontainers.image.ref.name"] = tag } }),
        }.ToJsonString());
    }
}
