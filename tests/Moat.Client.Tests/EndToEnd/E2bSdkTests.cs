using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// The stock E2B SDKs from npm (<c>e2b</c>, <c>@e2b/code-interpreter</c>, pinned in
/// tests/e2b/package.json), unmodified, against a real <c>moat serve</c> process: one test per flow
/// file in tests/e2b/flows, each run with <c>node --test</c>, pointed at Moat only through
/// E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL as a user would.
/// </summary>
public sealed partial class E2bSdkTests(E2bServerFixture server, ITestOutputHelper output) : IClassFixture<E2bServerFixture>
{
    /// <summary>The flow files (tests/e2b/flows/*.test.mjs): a new flow gets a test without editing this class.</summary>
    public static TheoryData<string> Flows()
    {
        var data = new TheoryData<string>();
        foreach (var file in Directory.GetFiles(E2bServerFixture.FlowsDirectory, "*.test.mjs").Select(Path.GetFileName).Order(StringComparer.Ordinal))
            data.Add(file!);
        return data;
    }

    [SkippableTheory]
    [MemberData(nameof(Flows))]
    public async Task Flow_passes_with_the_stock_sdk(string flow)
    {
        server.RequireStack();
        await server.InstallSdksAsync();
        var run = await server.RunFlowAsync(flow);
        output.WriteLine($"$ node --test flows/{flow}   [exit {run.Exit}, {run.Elapsed.TotalSeconds:F1} s]");
        output.WriteLine(run.Output);
        if (run.Exit != 0)
            output.WriteLine("server log (last lines):\n" + server.RecentLog());
        Assert.True(run.Exit == 0, $"node --test flows/{flow} exited {run.Exit}:\n{run.Output}");
        // node --test exits 0 when a test skips itself: say so instead of passing silently.
        var skips = SkipLine().Matches(run.Output).Select(m => m.Groups[1].Value.Trim()).ToList();
        Skip.If(skips.Count > 0, $"{flow}: {skips.Count} test(s) skipped by the flow: {string.Join("; ", skips)}");
        Assert.Matches(PassCount(), run.Output);
    }

    [GeneratedRegex(@"^ok \d+ - .*# SKIP (.*)$", RegexOptions.Multiline)]
    private static partial Regex SkipLine();

    [GeneratedRegex(@"^# pass [1-9]\d*$", RegexOptions.Multiline)]
    private static partial Regex PassCount();
}

/// <summary>What one run of a flow file did.</summary>
public sealed record FlowRun(int Exit, string Output, TimeSpan Elapsed);

/// <summary>
/// A real <c>moat serve</c> (the built CLI, as a separate process) on a free loopback port with
/// its own data directory, runc state and cgroup; sandboxes made through E2B's API on the container
/// tier. Mints an <c>e2b_</c> key through E2B's API for the SDKs, and installs the SDKs once with
/// <c>npm ci</c> (skipped when node_modules already matches package-lock.json).
/// </summary>
public sealed class E2bServerFixture : IAsyncLifetime
{
    /// <summary>tests/e2b.</summary>
    public static readonly string PackageDirectory = Path.Combine(Repo.Root, "tests", "e2b");

    /// <summary>tests/e2b/flows.</summary>
    public static readonly string FlowsDirectory = Path.Combine(PackageDirectory, "flows");

    private static readonly TimeSpan FlowLimit = TimeSpan.FromMinutes(4);
    private readonly string _adminKey = "moat_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(26));
    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), "moat-e2b-sdk-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly Queue<string> _log = new();
    private readonly SemaphoreSlim _installGate = new(1, 1);
    private bool _installed;
    private Process? _server;
    private string _e2bKey = "";

    private string CgroupParent => "/" + Path.GetFileName(_dataDirectory);

    /// <summary>The server's URL (no trailing slash).</summary>
    public string Url { get; private set; } = "";

    /// <summary>Why these tests cannot run here (null when they can).</summary>
    public string? Unavailable { get; private set; }

    public async Task InitializeAsync()
    {
        var agent = Path.Combine(Repo.Root, "artifacts", "agent");
        var templates = Path.Combine(Repo.Root, "artifacts", "templates");
        if (!File.Exists(Path.Combine(agent, "moat-agent")) || !File.Exists(Path.Combine(templates, "base.tar")) || !File.Exists(Path.Combine(templates, "code-interpreter-v1.tar")))
        {
            Unavailable = $"the agent or the base and code-interpreter-v1 templates are not built ({agent}, {templates}); run build/setup.sh";
            return;
        }
        if (Which("node") is null || Which("npm") is null)
        {
            Unavailable = "node and npm are not installed (build/setup.sh installs Debian's nodejs and npm): the E2B SDK flows need them";
            return;
        }
        Directory.CreateDirectory(_dataDirectory);
        int port = LoopbackPorts.Free();
        Url = $"http://127.0.0.1:{port}";
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[]
        {
            MoatCli.Path(), "serve", "--urls", Url, "--data", Path.Combine(_dataDirectory, "data"),
            $"--Moat:AgentDirectory={agent}",
            $"--Moat:BuiltinTemplates:Directory={templates}",
            $"--Moat:Runc:Root={Path.Combine(_dataDirectory, "runc-state")}",
            $"--Moat:Runc:CgroupParent={CgroupParent}",
            "--Moat:E2b:Isolation=container",
            "--Moat:Server:DestroySandboxesOnShutdown=true",
            "--Logging:LogLevel:Default=Warning",
        })
            start.ArgumentList.Add(arg);
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["MOAT_ADMIN_KEY"] = _adminKey;
        _server = Process.Start(start)!;
        _server.OutputDataReceived += (_, e) => Append(e.Data);
        _server.ErrorDataReceived += (_, e) => Append(e.Data);
        _server.BeginOutputReadLine();
        _server.BeginErrorReadLine();

        using var http = new HttpClient { BaseAddress = new Uri(Url), Timeout = TimeSpan.FromSeconds(30) };
        http.DefaultRequestHeaders.Authorization = new("Bearer", _adminKey);
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(3);
        JsonElement caps;
        for (;;)
        {
            if (_server.HasExited)
                throw new InvalidOperationException($"moat serve exited {_server.ExitCode} at start:\n{RecentLog()}");
            try
            {
                caps = await http.GetFromJsonAsync<JsonElement>("/v1/capabilities");
                break;
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(250);
            }
        }
        var container = caps.GetProperty("tiers").EnumerateArray().FirstOrDefault(t => t.GetProperty("name").GetString() == "container");
        if (container.ValueKind != JsonValueKind.Object || !container.GetProperty("usable").GetBoolean())
        {
            Unavailable = "the container tier is not usable on this host: " + (container.ValueKind == JsonValueKind.Object && container.TryGetProperty("reason", out var why) ? why.GetString() : "not listed");
            return;
        }

        // The SDKs get a key in E2B's form, minted through E2B's own API with the admin key.
        using var mint = new HttpRequestMessage(HttpMethod.Post, "/e2b/api-keys") { Content = new StringContent("{\"name\":\"e2b-sdk-tests\"}", Encoding.UTF8, "application/json") };
        mint.Headers.Add("X-API-Key", _adminKey);
        using var minted = await http.SendAsync(mint);
        var body = await minted.Content.ReadAsStringAsync();
        if (minted.StatusCode != HttpStatusCode.Created)
            throw new InvalidOperationException($"POST /e2b/api-keys answered {(int)minted.StatusCode}: {body}");
        _e2bKey = JsonDocument.Parse(body).RootElement.GetProperty("key").GetString()!;
        if (!_e2bKey.StartsWith("e2b_", StringComparison.Ordinal))
            throw new InvalidOperationException($"the minted key is not in E2B's form: {_e2bKey[..Math.Min(8, _e2bKey.Length)]}...");
    }

    /// <summary>Skips the calling test, saying why, when the stack cannot run here.</summary>
    public void RequireStack() => Skip.If(Unavailable is not null, Unavailable);

    /// <summary>
    /// Installs the pinned SDKs with <c>npm ci</c>, once per run, and not at all when node_modules was
    /// installed from this very package-lock.json (npm records it in node_modules/.package-lock.json).
    /// </summary>
    public async Task InstallSdksAsync()
    {
        await _installGate.WaitAsync();
        try
        {
            if (_installed)
                return;
            var stamp = Path.Combine(PackageDirectory, "node_modules", ".moat-lock.sha256");
            var lockHash = Convert.ToHexStringLower(SHA256.HashData(await File.ReadAllBytesAsync(Path.Combine(PackageDirectory, "package-lock.json"))));
            bool current = File.Exists(stamp) && (await File.ReadAllTextAsync(stamp)).Trim() == lockHash
                && File.Exists(Path.Combine(PackageDirectory, "node_modules", "e2b", "package.json"))
                && File.Exists(Path.Combine(PackageDirectory, "node_modules", "@e2b", "code-interpreter", "package.json"));
            if (!current)
            {
                var (exit, text) = await RunAsync("npm", ["ci", "--no-audit", "--no-fund", "--prefer-offline"], new Dictionary<string, string>(), TimeSpan.FromMinutes(5));
                if (exit != 0)
                    throw new InvalidOperationException($"npm ci in {PackageDirectory} exited {exit}:\n{text}");
                await File.WriteAllTextAsync(stamp, lockHash + "\n");
            }
            _installed = true;
        }
        finally
        {
            _installGate.Release();
        }
    }

    /// <summary>Runs one flow file with <c>node --test</c>, the SDKs pointed at this server.</summary>
    public async Task<FlowRun> RunFlowAsync(string flow)
    {
        var env = new Dictionary<string, string>
        {
            ["E2B_API_KEY"] = _e2bKey,
            ["E2B_API_URL"] = Url + "/e2b",
            ["E2B_SANDBOX_URL"] = Url,
            ["NODE_NO_WARNINGS"] = "1",
        };
        var watch = Stopwatch.StartNew();
        // One flow file at a time, its tests in order: this box is small and shared.
        var (exit, text) = await RunAsync("node", ["--test", Path.Combine("flows", flow)], env, FlowLimit);
        return new FlowRun(exit, text, watch.Elapsed);
    }

    /// <summary>The server's last log lines, for a failure.</summary>
    public string RecentLog(int lines = 60)
    {
        lock (_log)
            return string.Join('\n', _log.TakeLast(lines));
    }

    public async Task DisposeAsync()
    {
        if (_server is { HasExited: false })
        {
            // SIGTERM: the server stops gracefully and destroys its sandboxes (DestroySandboxesOnShutdown).
            using (var term = Process.Start(new ProcessStartInfo("kill", ["-TERM", _server.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]) { UseShellExecute = false }))
                await term!.WaitForExitAsync();
            using var stop = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            try
            {
                await _server.WaitForExitAsync(stop.Token);
            }
            catch (OperationCanceledException)
            {
                _server.Kill(entireProcessTree: true);
            }
        }
        _server?.Dispose();
        _installGate.Dispose();
        try
        {
            Moat.Runtimes.Cgroups.CgroupHierarchy.At(CgroupParent).Remove();
        }
        catch (IOException)
        {
        }
        try
        {
            if (Directory.Exists(_dataDirectory))
                Directory.Delete(_dataDirectory, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    private void Append(string? line)
    {
        if (line is null)
            return;
        lock (_log)
        {
            _log.Enqueue(line);
            while (_log.Count > 2000)
                _log.Dequeue();
        }
    }

    private static async Task<(int Exit, string Output)> RunAsync(string program, string[] args, Dictionary<string, string> env, TimeSpan limit)
    {
        var start = new ProcessStartInfo(program)
        {
            WorkingDirectory = PackageDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
            start.ArgumentList.Add(arg);
        foreach (var (k, v) in env)
            start.Environment[k] = v;
        using var process = Process.Start(start)!;
        process.StandardInput.Close();
        var text = new StringBuilder();
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (text) text.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (text) text.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var cts = new CancellationTokenSource(limit);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            lock (text)
                return (-1, $"{program} {string.Join(' ', args)} did not finish within {limit} and was killed\n{text}");
        }
        // WaitForExitAsync also waits for the redirected streams to end.
        lock (text)
            return (process.ExitCode, text.ToString());
    }

    private static string? Which(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, program)).FirstOrDefault(File.Exists);

}
