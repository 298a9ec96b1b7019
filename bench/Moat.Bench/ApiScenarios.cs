using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Moat.Server;
using Moat.Server.Audit;

namespace Moat.Bench;

/// <summary>
/// Scenarios through the real REST API: an in-process <c>moat serve</c> (Kestrel on a loopback port, the
/// whole middleware chain: audit, auth, rate limits) and an HttpClient per concurrent client.
/// </summary>
public static class ApiScenarios
{
    private sealed record Server(WebApplication App, HttpClient Http, string Data) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await App.StopAsync();
            await App.DisposeAsync();
        }
    }

    private static async Task<Server> StartAsync()
    {
        var data = (Environment.GetEnvironmentVariable("MOAT_BENCH_DATA") ?? "/var/lib/moat-bench") + "-api";
        Directory.CreateDirectory(data);
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var key = "moat_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(26));
        // The key is only taken at the data directory's first start: a fresh admin key each run means a fresh directory.
        if (Directory.Exists(data))
            Directory.Delete(data, recursive: true);
        Directory.CreateDirectory(data);
        Environment.SetEnvironmentVariable("MOAT_ADMIN_KEY", key);
        var app = MoatServer.Build(
        [
            $"--urls=http://127.0.0.1:{port}",
            $"--Moat:DataDirectory={data}",
            $"--Moat:AgentDirectory={Path.Combine(Bench.RepoRoot, "artifacts", "agent")}",
            $"--Moat:BuiltinTemplates:Directory={Path.Combine(Bench.RepoRoot, "artifacts", "templates")}",
            $"--Moat:Runc:Root={Path.Combine(data, "runc-state")}",
            $"--Moat:Owner={Moat.Core.Sandboxes.SandboxManager.RunOwner()}",
            "--Moat:Server:DestroySandboxesOnShutdown=true",
        ], builder =>
        {
            builder.Logging.ClearProviders();
            builder.Logging.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Warning);
        });
        await app.StartAsync();
        var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 256 }) { BaseAddress = new Uri($"http://127.0.0.1:{port}/") };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return new Server(app, http, data);
    }

    private static async Task<string> CreateAsync(HttpClient http)
    {
        using var response = await http.PostAsync("v1/sandboxes", Json("""{"template":"base","isolation":"container","resources":{"cpus":1,"memoryMiB":256,"diskMiB":256},"timeoutSeconds":1800}"""));
        var body = await response.Content.ReadAsStringAsync();
        if (response.StatusCode != HttpStatusCode.Created)
            throw new InvalidOperationException($"create: {(int)response.StatusCode} {body}");
        return JsonNode.Parse(body)!["id"]!.GetValue<string>();
    }

    private static StringContent Json(string s) => new(s, Encoding.UTF8, "application/json");

    private static string Load() => File.ReadAllText("/proc/loadavg").Trim();

    /// <summary>GET /v1/sandboxes/{id}: requests per second and latency with 1, 4, 16 and 64 concurrent clients for a fixed time each.</summary>
    public static async Task<JsonObject> GetAsync(int seconds)
    {
        await using var server = await StartAsync();
        var id = await CreateAsync(server.Http);
        try
        {
            var levels = new JsonArray();
            foreach (int clients in new[] { 1, 4, 16, 64 })
            {
                // warm-up
                for (int i = 0; i < 50; i++)
                    (await server.Http.GetAsync($"v1/sandboxes/{id}")).EnsureSuccessStatusCode();
                string load = Load();
                var samples = new List<double>[clients];
                var clock = Stopwatch.StartNew();
                var until = TimeSpan.FromSeconds(seconds);
                await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
                {
                    var mine = samples[c] = [];
                    while (clock.Elapsed < until)
                    {
                        var t0 = clock.Elapsed;
                        using var response = await server.Http.GetAsync($"v1/sandboxes/{id}", HttpCompletionOption.ResponseContentRead);
                        if (response.StatusCode != HttpStatusCode.OK)
                            throw new InvalidOperationException($"GET answered {(int)response.StatusCode}");
                        mine.Add((clock.Elapsed - t0).TotalMilliseconds);
                    }
                }));
                double elapsed = clock.Elapsed.TotalSeconds;
                var all = samples.SelectMany(s => s).ToList();
                var s = Stats.Of(all);
                double rps = all.Count / elapsed;
                Console.WriteLine($"{clients,3} clients: {rps:0} req/s, {s} (load {load})");
                levels.Add(new JsonObject { ["clients"] = clients, ["requests"] = all.Count, ["requestsPerSecond"] = Math.Round(rps, 1), ["latency"] = Scenarios.Summary(s), ["loadavg"] = load });
            }
            return new JsonObject { ["route"] = "GET /v1/sandboxes/{id}", ["secondsPerLevel"] = seconds, ["levels"] = levels };
        }
        finally
        {
            await server.Http.DeleteAsync($"v1/sandboxes/{id}");
        }
    }

    /// <summary>
    /// POST /v1/sandboxes/{id}/exec of `true` with the audit trail on and off, alternating blocks of 25 in one
    /// sandbox of one server (the switch is <c>Moat:Audit:Enabled</c>; here its live value is flipped so both
    /// halves share the process, the sandbox and the minute).
    /// </summary>
    public static async Task<JsonObject> AuditAsync(int n)
    {
        await using var server = await StartAsync();
        var audit = server.App.Services.GetRequiredService<AuditLog>();
        var id = await CreateAsync(server.Http);
        try
        {
            var body = """{"cmd":["true"]}""";
            async Task<double> ExecAsync()
            {
                var clock = Stopwatch.StartNew();
                using var response = await server.Http.PostAsync($"v1/sandboxes/{id}/exec", Json(body));
                var text = await response.Content.ReadAsStringAsync();
                double ms = clock.Elapsed.TotalMilliseconds;
                if (response.StatusCode != HttpStatusCode.OK || JsonNode.Parse(text)!["exitCode"]!.GetValue<int>() != 0)
                    throw new InvalidOperationException($"exec: {(int)response.StatusCode} {text}");
                return ms;
            }
            for (int i = 0; i < 30; i++)
                await ExecAsync();
            var on = new List<double>();
            var off = new List<double>();
            string load = Load();
            for (int block = 0; on.Count < n; block++)
            {
                bool enabled = block % 2 == 0;
                audit.Enabled = enabled;
                for (int i = 0; i < 25; i++)
                    (enabled ? on : off).Add(await ExecAsync());
                // the writer's batch is flushed outside the timed blocks, as it is off the request path
                await audit.FlushAsync(CancellationToken.None);
            }
            audit.Enabled = true;
            var a = Stats.Of(on);
            var b = Stats.Of(off);
            Console.WriteLine($"audit on:  {a}");
            Console.WriteLine($"audit off: {b}");
            Console.WriteLine($"overhead p50 {(a.P50 / b.P50 - 1) * 100:0.0}%, mean {(a.Mean / b.Mean - 1) * 100:0.0}% (load {load} → {Load()})");
            return new JsonObject
            {
                ["route"] = "POST /v1/sandboxes/{id}/exec true",
                ["auditOn"] = Scenarios.Summary(a),
                ["auditOff"] = Scenarios.Summary(b),
                ["overheadP50Percent"] = Math.Round((a.P50 / b.P50 - 1) * 100, 2),
                ["overheadMeanPercent"] = Math.Round((a.Mean / b.Mean - 1) * 100, 2),
                ["loadavg"] = load,
                ["samples"] = new JsonObject { ["auditOn"] = Scenarios.Samples(on), ["auditOff"] = Scenarios.Samples(off) },
            };
        }
        finally
        {
            await server.Http.DeleteAsync($"v1/sandboxes/{id}");
        }
    }
}
