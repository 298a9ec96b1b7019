using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Moat.Core.Sandboxes;
using Moat.Storage.Oci;
using Moat.Storage.Sqlite;
using Moat.Storage.Templates;

namespace Moat.Bench;

/// <summary>
/// The template store's numbers: sandbox create time with a small and a large image (layers are
/// shared, not copied, so size must not matter), pull throughput from a registry on loopback
/// against <c>skopeo copy</c> of the same image, and the time of a fully cached Dockerfile build.
/// </summary>
public static class TemplateScenarios
{
    private static JsonObject Summary(Stats s) => new()
    {
        ["n"] = s.N, ["p50"] = Math.Round(s.P50, 3), ["p90"] = Math.Round(s.P90, 3), ["mean"] = Math.Round(s.Mean, 3), ["min"] = Math.Round(s.Min, 3), ["max"] = Math.Round(s.Max, 3),
    };

    public static async Task<JsonObject> RunAsync(Bench bench, int n)
    {
        var images = Path.Combine(bench.DataDirectory, "bench-images");
        Directory.CreateDirectory(images);
        var small = await LayoutAsync(Path.Combine(images, "small-20m"), 20L << 20);
        var large = await LayoutAsync(Path.Combine(images, "large-1g"), 1L << 30);
        var importer = bench.Services.GetRequiredService<TemplateImporter>();
        var clock = Stopwatch.StartNew();
        await importer.ImportPathAsync(small.Path, "bench-20m", Bench.Tenant, null, null, CancellationToken.None);
        double importSmall = clock.Elapsed.TotalMilliseconds;
        clock.Restart();
        await importer.ImportPathAsync(large.Path, "bench-1g", Bench.Tenant, null, null, CancellationToken.None);
        double importLarge = clock.Elapsed.TotalMilliseconds;
        Console.WriteLine($"import (first time, unpacking): 20 MB {importSmall:0} ms, 1 GB {importLarge:0} ms");

        // MOAT_BENCH_ONLY=create|pull|build runs one part.
        var only = Environment.GetEnvironmentVariable("MOAT_BENCH_ONLY");
        var create = only is null or "create" ? await CreateAsync(bench, n) : null;
        var pull = only is null or "pull" ? await PullAsync(bench, large, Math.Max(5, n / 4)) : null;
        var build = only is null or "build" ? await BuildAsync(bench, n) : null;
        var unpack = only is null or "unpack" ? await UnpackAsync(bench, large.Path) : null;
        return new JsonObject
        {
            ["images"] = new JsonObject { ["small"] = small.Bytes, ["large"] = large.Bytes, ["importSmallMs"] = Math.Round(importSmall), ["importLargeMs"] = Math.Round(importLarge) },
            ["create"] = create,
            ["pull"] = pull,
            ["cachedBuild"] = build,
            ["unpack"] = unpack,
        };
    }

    /// <summary>Create → agent ready, alternating the two images, n rounds after warm-up.</summary>
    private static async Task<JsonObject> CreateAsync(Bench bench, int n)
    {
        var samples = new Dictionary<string, List<double>> { ["bench-20m"] = [], ["bench-1g"] = [] };
        for (int i = -3; i < n; i++)
        {
            foreach (var template in samples.Keys)
            {
                var clock = Stopwatch.StartNew();
                var sandbox = await bench.Manager.CreateAsync(bench.Spec() with { Template = template }, Bench.Tenant, CancellationToken.None);
                double ms = clock.Elapsed.TotalMilliseconds;
                var ran = await bench.Manager.RunCommandAsync(sandbox.Id, Bench.Tenant, new CommandSpec { Argv = ["/bin/true"] }, default, CancellationToken.None);
                await bench.Manager.DeleteAsync(sandbox.Id, Bench.Tenant, CancellationToken.None);
                if (ran.Exit.ExitCode != 0)
                    throw new InvalidOperationException($"/bin/true failed in {template}");
                if (i >= 0)
                    samples[template].Add(ms);
            }
        }
        var s = Stats.Of(samples["bench-20m"]);
        var l = Stats.Of(samples["bench-1g"]);
        Console.WriteLine($"create 20 MB image: {s}");
        Console.WriteLine($"create 1 GB image:  {l}");
        Console.WriteLine($"ratio p50 1 GB / 20 MB: {l.P50 / s.P50:0.000}");
        return new JsonObject { ["small"] = Summary(s), ["large"] = Summary(l), ["ratioP50"] = Math.Round(l.P50 / s.P50, 3) };
    }

    /// <summary>
    /// The 1 GB image pushed to docker-registry on loopback, then fetched again and again into an
    /// empty store: skopeo copy to an OCI layout (blobs only) against moat's pull (blobs verified
    /// and every layer unpacked into the store), alternately.
    /// </summary>
    private static async Task<JsonObject> PullAsync(Bench bench, (string Path, long Bytes) image, int n)
    {
        int port;
        using (var listener = new TcpListener(IPAddress.Loopback, 0))
        {
            listener.Start();
            port = ((IPEndPoint)listener.LocalEndpoint).Port;
        }
        var work = Path.Combine(bench.DataDirectory, "bench-registry");
        if (Directory.Exists(work))
            Directory.Delete(work, recursive: true);
        Directory.CreateDirectory(work);
        var config = Path.Combine(work, "config.yml");
        await File.WriteAllTextAsync(config, $"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {work}/storage\nhttp:\n  addr: 127.0.0.1:{port}\n");
        using var registry = Process.Start(new ProcessStartInfo("docker-registry", ["serve", config]) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false })!;
        registry.BeginErrorReadLine();
        registry.BeginOutputReadLine();
        try
        {
            await Task.Delay(500);
            await Bench.TimeProcessAsync("skopeo", "copy", "--quiet", "--dest-tls-verify=false", $"oci:{image.Path}:latest", $"docker://127.0.0.1:{port}/bench/large:1");
            long blobBytes = Directory.GetFiles(Path.Combine(image.Path, "blobs", "sha256")).Sum(f => new FileInfo(f).Length);
            var skopeo = new List<double>();
            var moat = new List<double>();
            for (int i = -1; i < n; i++)
            {
                var target = Path.Combine(work, "skopeo-out");
                if (Directory.Exists(target))
                    Directory.Delete(target, recursive: true);
                var skopeoMs = await Bench.TimeProcessAsync("skopeo", "copy", "--quiet", "--src-tls-verify=false", $"docker://127.0.0.1:{port}/bench/large:1", $"oci:{target}:latest");
                Directory.Delete(target, recursive: true);

                var data = Path.Combine(work, $"store-{i + 1}");
                var database = new SqliteDatabase(Path.Combine(data, "moat.db"));
                var store = new ImageStore(database, data, new LayerLimits(), NullLogger<ImageStore>.Instance);
                var templates = new TemplateStore(database, store, NullLogger<TemplateStore>.Instance);
                var puller = new TemplatePuller(templates, new RegistryCredentialStore(database, data), NullLogger<TemplatePuller>.Instance);
                var clock = Stopwatch.StartNew();
                await puller.PullAsync($"127.0.0.1:{port}/bench/large:1", "large", "", null, new PullOptions { Access = new RegistryAccess { AllowPrivateAddresses = true } }, null, CancellationToken.None);
                double moatMs = clock.Elapsed.TotalMilliseconds;
                database.Dispose();
                ImageStore.RemoveQuietly(data);
                if (i < 0)
                    continue;
                skopeo.Add(skopeoMs);
                moat.Add(moatMs);
            }
            var s = Stats.Of(skopeo);
            var m = Stats.Of(moat);
            double mbps(double ms) => blobBytes / 1e6 / (ms / 1000);
            Console.WriteLine($"pull {blobBytes / 1e6:0} MB: skopeo copy p50 {s.P50:0} ms ({mbps(s.P50):0} MB/s), moat pull p50 {m.P50:0} ms ({mbps(m.P50):0} MB/s), moat/skopeo throughput {s.P50 / m.P50:0.00}x");
            return new JsonObject
            {
                ["blobBytes"] = blobBytes,
                ["skopeoCopy"] = Summary(s),
                ["moatPull"] = Summary(m),
                ["skopeoMBps"] = Math.Round(mbps(s.P50), 1),
                ["moatMBps"] = Math.Round(mbps(m.P50), 1),
                ["throughputRatio"] = Math.Round(s.P50 / m.P50, 3),
            };
        }
        finally
        {
            registry.Kill();
            await registry.WaitForExitAsync();
            Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>Where a pull's time goes, from local files: gunzip alone, plus the diff-id hash, plus writing every file (the unpacker).</summary>
    private static async Task<JsonObject> UnpackAsync(Bench bench, string layout)
    {
        var blobs = Directory.GetFiles(Path.Combine(layout, "blobs", "sha256")).Where(f => new FileInfo(f).Length > 100 << 20).ToList();
        long total = blobs.Sum(f => new FileInfo(f).Length);
        var buffer = new byte[1 << 18];
        async Task<double> TimeAsync(Func<Stream, Task> body)
        {
            var clock = Stopwatch.StartNew();
            foreach (var blob in blobs)
            {
                await using var file = new FileStream(blob, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
                await using var tar = await LayerCompression.OpenAsync(file, CancellationToken.None);
                await body(tar);
            }
            return clock.Elapsed.TotalMilliseconds;
        }
        double gunzip = await TimeAsync(async s => { while (await s.ReadAsync(buffer) > 0) { } });
        double hashed = await TimeAsync(async s =>
        {
            using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            int r;
            while ((r = await s.ReadAsync(buffer)) > 0)
                h.AppendData(buffer, 0, r);
        });
        var target = Path.Combine(bench.DataDirectory, "bench-unpack");
        Directory.CreateDirectory(target);
        double unpacked = await TimeAsync(async s =>
        {
            var dest = Path.Combine(target, "layer");
            await LayerUnpacker.UnpackAsync(s, dest, new LayerLimits(), CancellationToken.None);
            ImageStore.RemoveQuietly(dest);
        });
        Directory.Delete(target, recursive: true);
        double mbps(double ms) => total / 1e6 / (ms / 1000);
        Console.WriteLine($"unpack {total / 1e6:0} MB of gzip layers: gunzip {mbps(gunzip):0} MB/s, +sha256 {mbps(hashed):0} MB/s, full unpack {mbps(unpacked):0} MB/s");
        return new JsonObject { ["bytes"] = total, ["gunzipMBps"] = Math.Round(mbps(gunzip)), ["gunzipSha256MBps"] = Math.Round(mbps(hashed)), ["unpackMBps"] = Math.Round(mbps(unpacked)) };
    }

    /// <summary>A three-step Dockerfile built once, then rebuilt n times with every step cached.</summary>
    private static async Task<JsonObject> BuildAsync(Bench bench, int n)
    {
        var context = Path.Combine(bench.DataDirectory, "bench-build");
        Directory.CreateDirectory(Path.Combine(context, "app"));
        await File.WriteAllTextAsync(Path.Combine(context, "app", "main.py"), "print('hello')\n");
        await File.WriteAllTextAsync(Path.Combine(context, "Dockerfile"), "FROM base\nRUN echo step one > /one.txt\nCOPY app/ /srv/app/\nWORKDIR /srv/app\nRUN python3 main.py > out.txt\nCMD [\"python3\", \"main.py\"]\n");
        var builder = bench.Services.GetRequiredService<TemplateBuilder>();
        var request = new BuildRequest { Name = "bench-built", Owner = Bench.Tenant, Tenant = Bench.Tenant, Isolation = bench.Tier.Name() };
        var clock = Stopwatch.StartNew();
        await builder.BuildAsync(context, request with { NoCache = true }, null, _ => { }, CancellationToken.None);
        double uncached = clock.Elapsed.TotalMilliseconds;
        var cached = new List<double>();
        for (int i = -2; i < n; i++)
        {
            clock.Restart();
            int hits = 0;
            await builder.BuildAsync(context, request, null, line => hits += line.Contains("---> cached", StringComparison.Ordinal) ? 1 : 0, CancellationToken.None);
            if (i >= 0)
                cached.Add(clock.Elapsed.TotalMilliseconds);
            if (hits != 4)
                throw new InvalidOperationException($"the rebuild hit the cache {hits} times, not 4");
        }
        var c = Stats.Of(cached);
        Console.WriteLine($"build, 3 steps: uncached {uncached:0} ms; cached {c}");
        return new JsonObject { ["uncachedMs"] = Math.Round(uncached), ["cached"] = Summary(c) };
    }

    /// <summary>An OCI layout of about <paramref name="bytes"/>: the built-in Debian rootfs plus random-content layers (incompressible, gzip), made once.</summary>
    private static async Task<(string Path, long Bytes)> LayoutAsync(string dir, long bytes)
    {
        var done = Path.Combine(dir, ".complete");
        if (File.Exists(done))
            return (dir, long.Parse(await File.ReadAllTextAsync(done)));
        if (Directory.Exists(dir))
            Directory.Delete(dir, recursive: true);
        var blobs = Path.Combine(dir, "blobs", "sha256");
        Directory.CreateDirectory(blobs);
        var diffIds = new JsonArray();
        var layers = new JsonArray();
        long total = 0;
        async Task AddAsync(Func<Stream, Task> writeTar)
        {
            var tmp = Path.Combine(dir, "layer.tmp");
            using var diff = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            await using (var file = File.Create(tmp))
            await using (var gz = new GZipStream(file, CompressionLevel.Fastest))
            await using (var hashing = new HashingWriteStream(gz, diff))
                await writeTar(hashing);
            var digest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(tmp)));
            var size = new FileInfo(tmp).Length;
            File.Move(tmp, Path.Combine(blobs, digest[7..]), overwrite: true);
            diffIds.Add("sha256:" + Convert.ToHexStringLower(diff.GetHashAndReset()));
            layers.Add(new JsonObject { ["mediaType"] = MediaTypes.OciLayerGzip, ["digest"] = digest, ["size"] = size });
        }
        if (bytes >= 100L << 20)
        {
            // The large image is a real distribution plus data: a Debian rootfs at the bottom.
            var debian = Path.Combine(Bench.RepoRoot, "artifacts", "templates", "base.tar");
            await AddAsync(async s =>
            {
                await using var f = File.OpenRead(debian);
                await f.CopyToAsync(s);
            });
            total += new FileInfo(debian).Length;
        }
        else
        {
            // The small one: busybox (static) as its shell, like a minimal distribution.
            await AddAsync(async s =>
            {
                await using var tar = new TarWriter(s, TarEntryFormat.Pax, leaveOpen: true);
                await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, "bin/busybox") { DataStream = File.OpenRead("/bin/busybox"), Mode = (UnixFileMode)0x1ED });
                foreach (var applet in new[] { "sh", "true", "cat", "ls" })
                    await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.SymbolicLink, "bin/" + applet) { LinkName = "busybox" });
            });
            total += new FileInfo("/bin/busybox").Length;
        }
        const long perLayer = 200L << 20;
        int index = 0;
        while (total < bytes)
        {
            long size = Math.Min(perLayer, bytes - total);
            int layer = index++;
            await AddAsync(async s =>
            {
                await using var tar = new TarWriter(s, TarEntryFormat.Pax, leaveOpen: true);
                long left = size;
                int file = 0;
                while (left > 0)
                {
                    long chunk = Math.Min(left, 8L << 20);
                    await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, $"data/{layer}/f{file++}") { DataStream = new MemoryStream(RandomNumberGenerator.GetBytes((int)chunk)) });
                    left -= chunk;
                }
            });
            total += size;
        }
        var config = Encoding.UTF8.GetBytes(new JsonObject
        {
            ["architecture"] = "amd64",
            ["os"] = "linux",
            ["config"] = new JsonObject { ["Env"] = new JsonArray("PATH=/usr/bin:/bin") },
            ["rootfs"] = new JsonObject { ["type"] = "layers", ["diff_ids"] = diffIds },
        }.ToJsonString());
        var configDigest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(config));
        await File.WriteAllBytesAsync(Path.Combine(blobs, configDigest[7..]), config);
        var manifest = Encoding.UTF8.GetBytes(new JsonObject
        {
            ["schemaVersion"] = 2,
            ["mediaType"] = MediaTypes.OciManifest,
            ["config"] = new JsonObject { ["mediaType"] = MediaTypes.OciConfig, ["digest"] = configDigest, ["size"] = config.Length },
            ["layers"] = layers,
        }.ToJsonString());
        var manifestDigest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(manifest));
        await File.WriteAllBytesAsync(Path.Combine(blobs, manifestDigest[7..]), manifest);
        await File.WriteAllTextAsync(Path.Combine(dir, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");
        await File.WriteAllTextAsync(Path.Combine(dir, "index.json"), new JsonObject
        {
            ["schemaVersion"] = 2,
            ["manifests"] = new JsonArray(new JsonObject { ["mediaType"] = MediaTypes.OciManifest, ["digest"] = manifestDigest, ["size"] = manifest.Length, ["annotations"] = new JsonObject { ["org.opencontainers.image.ref.name"] = "latest" } }),
        }.ToJsonString());
        await File.WriteAllTextAsync(done, total.ToString());
        return (dir, total);
    }

    /// <summary>Hashes what is written through it.</summary>
    private sealed class HashingWriteStream(Stream inner, IncrementalHash hash) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer)
        {
            hash.AppendData(buffer);
            inner.Write(buffer);
        }
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            hash.AppendData(buffer.Span);
            await inner.WriteAsync(buffer, cancellationToken);
        }
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }
}
