using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// <c>kill -9</c> of a real <c>moat serve</c> process while its sandboxes run commands, stream
/// output and take files; then a restart on the same data directory. Running sandboxes are
/// re-adopted (exec works again), a paused one stays paused and resumes, a background command is
/// re-attached by pid with the output it made meanwhile, snapshots and files are intact — and
/// once everything is deleted, nothing of it is left on the host.
/// </summary>
public sealed class CrashRestartTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly string _data = Path.Combine("/var/tmp", "moat-crash-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly string _key = "moat_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(26));
    private Process? _server;
    private readonly int _port = LoopbackPorts.Free();

    private HttpClient Http() => new() { BaseAddress = new Uri($"http://127.0.0.1:{_port}/"), DefaultRequestHeaders = { { "Authorization", "Bearer " + _key } }, Timeout = TimeSpan.FromMinutes(2) };

    [SkippableFact]
    public async Task Kill_9_of_the_server_mid_flight_then_a_restart_readopts_everything_and_leaks_nothing()
    {
        Skip.If(Environment.UserName != "root", "needs root (runc, mounts, cgroups)");
        await StartServerAsync();
        using var http = Http();
        string container = await CreateAsync(http, "container");
        string gvisor = await CreateAsync(http, "gvisor");
        string paused = await CreateAsync(http, "container");

        await ExecAsync(http, container, "echo before > /home/user/state");
        await ExecAsync(http, gvisor, "echo before > /home/user/state");
        // A background command that keeps writing output across the crash.
        var started = await http.PostAsJsonAsync($"v1/sandboxes/{container}/exec", new { shell = "for i in $(seq 1 40); do echo tick $i; sleep 0.25; done", background = true });
        Assert.Equal(HttpStatusCode.Accepted, started.StatusCode);
        int pid = (int)JsonNode.Parse(await started.Content.ReadAsStringAsync())!["pid"]!;
        var snapshot = await http.PostAsJsonAsync($"v1/sandboxes/{container}/snapshots", new { name = "before-crash" });
        Assert.Equal(HttpStatusCode.Created, snapshot.StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.PostAsync($"v1/sandboxes/{paused}/pause", null)).StatusCode);

        // In flight when the server dies: a streaming exec and a file upload.
        var streaming = http.PostAsJsonAsync($"v1/sandboxes/{gvisor}/exec", new { shell = "sleep 30; echo never" });
        var upload = http.PutAsync($"v1/sandboxes/{container}/files?path=/home/user/big.bin", new ByteArrayContent(new byte[32 << 20]));
        await Task.Delay(300);
        _server!.Kill(); // SIGKILL: no shutdown code runs
        await _server.WaitForExitAsync();
        await Assert.ThrowsAnyAsync<Exception>(() => streaming);
        try { await upload; } catch (HttpRequestException) { } // may have finished or been cut

        await StartServerAsync();
        foreach (var id in new[] { container, gvisor })
        {
            var info = await GetAsync(http, id);
            Assert.Equal("running", (string?)info["state"]);
            Assert.Equal("before\n", await ExecAsync(http, id, "cat /home/user/state"));
            Assert.Equal("after\n", await ExecAsync(http, id, "echo after"));
        }
        Assert.Equal("paused", (string?)(await GetAsync(http, paused))["state"]);
        Assert.Equal(HttpStatusCode.OK, (await http.PostAsync($"v1/sandboxes/{paused}/resume", null)).StatusCode);
        Assert.Equal("resumed\n", await ExecAsync(http, paused, "echo resumed"));

        // The background command went on while no server listened; its output was kept.
        var lines = (await http.GetStringAsync($"v1/sandboxes/{container}/processes/{pid}/output")).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var replay = string.Concat(lines.Select(l => JsonNode.Parse(l)!["stdout"]).Where(o => o is not null).Select(o => (string)o!));
        Assert.Contains("tick 1\n", replay);
        Assert.Contains("tick 40\n", replay);
        // The snapshot outlived the crash and restores.
        var restored = await CreateAsync(http, "container", "before-crash");
        Assert.Equal("before\n", await ExecAsync(http, restored, "cat /home/user/state"));

        foreach (var id in new[] { container, gvisor, paused, restored })
            Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync($"v1/sandboxes/{id}")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync("v1/snapshots/before-crash")).StatusCode);
        await StopServerAsync();
        Assert.Empty(Leftovers([container, gvisor, paused, restored]));
    }

    private async Task StartServerAsync()
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(MoatCli.Path());
        foreach (var a in new[] { "serve", "--urls", $"http://127.0.0.1:{_port}", "--data", _data })
            start.ArgumentList.Add(a);
        start.Environment["MOAT_ADMIN_KEY"] = _key;
        start.Environment["MOAT_ARTIFACTS"] = Path.Combine(Repo.Root, "artifacts");
        start.Environment["DOTNET_NOLOGO"] = "1";
        _server = Process.Start(start)!;
        _server.OutputDataReceived += (_, e) => { if (e.Data is not null) output.WriteLine("serve: " + e.Data); };
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
    }

    private static async Task<string> CreateAsync(HttpClient http, string isolation, string template = "base")
    {
        var created = await http.PostAsJsonAsync("v1/sandboxes", new { template, isolation, timeoutSeconds = 600, resources = new { memoryMiB = 256, diskMiB = 256 } });
        var body = await created.Content.ReadAsStringAsync();
        Assert.True(created.StatusCode == HttpStatusCode.Created, body);
        return (string)JsonNode.Parse(body)!["id"]!;
    }

    private static async Task<JsonNode> GetAsync(HttpClient http, string id) =>
        JsonNode.Parse(await http.GetStringAsync($"v1/sandboxes/{id}"))!;

    private static async Task<string> ExecAsync(HttpClient http, string id, string shell)
    {
        var ran = await http.PostAsJsonAsync($"v1/sandboxes/{id}/exec", new { shell });
        var body = await ran.Content.ReadAsStringAsync();
        Assert.True(ran.IsSuccessStatusCode, body);
        var result = JsonNode.Parse(body)!;
        Assert.True((int)result["exitCode"]! == 0, body);
        return (string)result["stdout"]!;
    }

    /// <summary>What of the data directory or the sandboxes is still on the host: mounts, processes, cgroups.</summary>
    private List<string> Leftovers(IReadOnlyList<string> ids)
    {
        var left = new List<string>();
        left.AddRange(File.ReadAllLines("/proc/self/mountinfo").Where(l => l.Contains(_data, StringComparison.Ordinal)).Select(l => "mount: " + l));
        foreach (var dir in Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _)))
        {
            try
            {
                var cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                if (cmdline.Contains(_data, StringComparison.Ordinal) || ids.Any(id => cmdline.Contains(id, StringComparison.Ordinal)))
                    left.Add($"process {Path.GetFileName(dir)}: {cmdline}");
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
        foreach (var root in new[] { "/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids" }.Where(Directory.Exists))
            left.AddRange(Directory.EnumerateDirectories(root, "*moat*", new EnumerationOptions { RecurseSubdirectories = true, MaxRecursionDepth = 3, IgnoreInaccessible = true })
                .SelectMany(d => Directory.EnumerateDirectories(d)).Where(d => ids.Any(id => d.Contains(id, StringComparison.Ordinal))).Select(d => "cgroup: " + d));
        var sandboxes = Path.Combine(_data, "sandboxes");
        if (Directory.Exists(sandboxes))
            left.AddRange(Directory.EnumerateDirectories(sandboxes).Where(d => ids.Contains(Path.GetFileName(d))).Select(d => "directory: " + d));
        return left;
    }


    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => ServeProcesses.CleanUpAsync(_server, Http, StopServerAsync, _data);
}
