using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// A real <c>moat serve</c> with <c>Moat:Logging:Format=json</c>: every stdout line is one JSON
/// object, and what the server logs while it handles a sandbox's request carries that request's
/// tenantId and sandboxId in its scopes.
/// </summary>
public sealed class JsonLogTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly string _data = Path.Combine("/var/tmp", "moat-jsonlog-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly string _key = "moat_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(26));
    private readonly int _port = LoopbackPorts.Free();
    private readonly ConcurrentQueue<string> _stdout = new();
    private Process? _server;

    private HttpClient Http() => new() { BaseAddress = new Uri($"http://127.0.0.1:{_port}/"), DefaultRequestHeaders = { { "Authorization", "Bearer " + _key } }, Timeout = TimeSpan.FromMinutes(2) };

    [SkippableFact]
    public async Task Json_log_lines_parse_and_carry_the_sandbox_and_tenant_of_the_request()
    {
        Skip.If(Environment.UserName != "root", "needs root (runc, mounts, cgroups)");
        Skip.IfNot(File.Exists(Path.Combine(Repo.Root, "artifacts", "templates", "base.tar")), "the base template is not built (run build/setup.sh)");
        await StartServerAsync();
        using var http = Http();
        var created = await http.PostAsJsonAsync("v1/sandboxes", new { template = "base", isolation = "container", timeoutSeconds = 300, resources = new { memoryMiB = 256, diskMiB = 256 } });
        var body = await created.Content.ReadAsStringAsync();
        Skip.If(created.StatusCode == HttpStatusCode.BadRequest && body.Contains("tier", StringComparison.Ordinal), "the container tier is not usable here: " + body);
        Assert.True(created.StatusCode == HttpStatusCode.Created, body);
        string id = (string)JsonNode.Parse(body)!["id"]!;
        // A request on the sandbox that logs while it runs (Information: "Sandbox … paused").
        var paused = await http.PostAsync($"v1/sandboxes/{id}/pause", null);
        Assert.True(paused.StatusCode == HttpStatusCode.OK, await paused.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync($"v1/sandboxes/{id}")).StatusCode);
        await StopServerAsync();

        var lines = _stdout.ToList();
        Assert.NotEmpty(lines);
        var entries = new List<JsonElement>();
        // Every line is one JSON object, except the first-start key notices, which are printed for a
        // person and kept out of the log pipeline on purpose (the secret is never logged).
        foreach (var line in lines.Where(l => !l.StartsWith("Operator API key (", StringComparison.Ordinal) && !l.StartsWith("Admin API key (", StringComparison.Ordinal)))
        {
            using var doc = JsonDocument.Parse(line);
            Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
            entries.Add(doc.RootElement.Clone());
        }
        Assert.All(entries, e =>
        {
            Assert.True(e.TryGetProperty("Timestamp", out _), e.GetRawText());
            Assert.True(e.TryGetProperty("LogLevel", out _), e.GetRawText());
            Assert.True(e.TryGetProperty("Category", out _), e.GetRawText());
            Assert.True(e.TryGetProperty("Message", out _), e.GetRawText());
        });

        // The pause was logged inside the request's scope: tenant and sandbox named there, not only in the message.
        var policy = Assert.Single(entries, e => e.GetProperty("Message").GetString() == $"Sandbox {id} paused");
        var scope = policy.GetProperty("Scopes").EnumerateArray().Where(s => s.ValueKind == JsonValueKind.Object && s.TryGetProperty("sandboxId", out _)).ToList();
        var ids = Assert.Single(scope);
        Assert.Equal(id, ids.GetProperty("sandboxId").GetString());
        Assert.Equal("default", ids.GetProperty("tenantId").GetString());
        Assert.Equal(id, policy.GetProperty("State").GetProperty("SandboxId").GetString());
    }

    private async Task StartServerAsync()
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(MoatCli.Path());
        foreach (var a in new[] { "serve", "--urls", $"http://127.0.0.1:{_port}", "--data", _data, "--Moat:Logging:Format=json" })
            start.ArgumentList.Add(a);
        start.Environment["MOAT_ADMIN_KEY"] = _key;
        start.Environment["MOAT_ARTIFACTS"] = Path.Combine(Repo.Root, "artifacts");
        start.Environment["DOTNET_NOLOGO"] = "1";
        _server = Process.Start(start)!;
        _server.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { Length: > 0 })
            {
                _stdout.Enqueue(e.Data);
                output.WriteLine("serve: " + e.Data);
            }
        };
        _server.ErrorDataReceived += (_, e) => { if (e.Data is not null) output.WriteLine("serve! " + e.Data); };
        _server.BeginOutputReadLine();
        _server.BeginErrorReadLine();
        using var probe = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{_port}/") };
        var deadline = DateTime.UtcNow.AddMinutes(1);
        while (true)
        {
            Assert.False(_server.HasExited, $"moat serve exited with {(_server.HasExited ? _server.ExitCode : 0)}");
            try
            {
                if ((await probe.GetAsync("healthz")).IsSuccessStatusCode)
                    return;
            }
            catch (HttpRequestException)
            {
            }
            Assert.True(DateTime.UtcNow < deadline, "moat serve did not answer /healthz within a minute");
            await Task.Delay(200);
        }
    }

    private async Task StopServerAsync()
    {
        if (_server is null || _server.HasExited)
            return;
        ServeProcesses.Signal(_server.Id, 15);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await _server.WaitForExitAsync(cts.Token);
        _server.WaitForExit(); // drain the redirected output
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => ServeProcesses.CleanUpAsync(_server, Http, StopServerAsync, _data);
}
