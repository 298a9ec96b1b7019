using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Moat.Server;

namespace Moat.Client.Tests.Infrastructure;

/// <summary>Where the repository and its build artifacts are.</summary>
public static class Repo
{
    /// <summary>The repository root (the directory holding Moat.slnx).</summary>
    public static readonly string Root = Find();

    private static string Find()
    {
        var dir = AppContext.BaseDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "Moat.slnx")))
            dir = Path.GetDirectoryName(dir);
        return dir ?? throw new InvalidOperationException("cannot find the repository root (Moat.slnx) above " + AppContext.BaseDirectory);
    }
}

/// <summary>
/// A real <c>moat serve</c> in this process: Kestrel on a free loopback port, its own data directory
/// (SQLite), runc state and cgroup, the published agent and the built-in template. One per test
/// run, shared by every end-to-end test class.
/// </summary>
public sealed class ServerFixture : IAsyncLifetime
{
    private WebApplication? _app;

    /// <summary>The admin key the server stores at its first start (MOAT_ADMIN_KEY).</summary>
    public string AdminKey { get; } = "moat_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(26));

    /// <summary>The server's data directory.</summary>
    public string DataDirectory { get; } = Path.Combine(Path.GetTempPath(), "moat-client-e2e-" + Guid.NewGuid().ToString("N")[..8]);

    private string CgroupParent => "/" + Path.GetFileName(DataDirectory);

    /// <summary>The server's URL.</summary>
    public Uri Url { get; private set; } = null!;

    /// <summary>The domain of sandbox ports' host form (<c>{port}-{id}.{InboundDomain}</c>).</summary>
    public const string InboundDomain = "sandboxes.test";

    /// <summary>Server log lines (warnings and errors), for failure messages.</summary>
    public ConcurrentQueue<string> Log { get; } = new();

    /// <summary>Why end-to-end tests cannot run here (null when they can).</summary>
    public string? Unavailable { get; private set; }

    /// <summary>The server's services (for tests that need to reach behind the API, e.g. to mint another tenant's key).</summary>
    public IServiceProvider Services => _app?.Services ?? throw new InvalidOperationException("the server is not running");

    /// <summary>A client with the admin key.</summary>
    public MoatClient Client(string? apiKey = null) => new(new MoatClientOptions { BaseUrl = Url, ApiKey = apiKey ?? AdminKey });

    public async Task InitializeAsync()
    {
        var agent = Path.Combine(Repo.Root, "artifacts", "agent");
        var templates = Path.Combine(Repo.Root, "artifacts", "templates");
        if (!File.Exists(Path.Combine(agent, "moat-agent")) || !File.Exists(Path.Combine(templates, "base.tar")))
        {
            Unavailable = $"the agent or the base template is not built ({agent}, {templates}); run build/setup.sh";
            return;
        }
        int port = LoopbackPorts.Free();
        Url = new Uri($"http://127.0.0.1:{port}/");
        Directory.CreateDirectory(DataDirectory);
        // The server reads MOAT_ADMIN_KEY at its first start; one server per test process, so setting it here is safe.
        Environment.SetEnvironmentVariable("MOAT_ADMIN_KEY", AdminKey);
        _app = MoatServer.Build(
        [
            $"--urls={Url.AbsoluteUri.TrimEnd('/')}",
            $"--Moat:DataDirectory={DataDirectory}",
            $"--Moat:AgentDirectory={agent}",
            $"--Moat:BuiltinTemplates:Directory={templates}",
            $"--Moat:Runc:Root={Path.Combine(DataDirectory, "runc-state")}",
            $"--Moat:Runc:CgroupParent={CgroupParent}",
            "--Moat:Server:DestroySandboxesOnShutdown=true",
            // The template tests pull from a registry on loopback.
            "--Moat:Templates:AllowPrivateRegistries=true",
            // Sandbox ports' host form, {port}-{id}.{InboundDomain}: the tests dial it at the loopback address.
            $"--Moat:Network:Inbound:Domain={InboundDomain}",
        ], builder =>
        {
            builder.Logging.ClearProviders();
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            builder.Logging.AddProvider(new QueueLoggerProvider(Log));
        });
        using var start = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await _app.StartAsync(start.Token);
        using var client = Client();
        var caps = await client.GetCapabilitiesAsync(start.Token);
        var container = caps.Tiers.FirstOrDefault(t => t.Name == "container");
        if (container is not { Usable: true })
            Unavailable = $"the container tier is not usable on this host: {container?.Reason ?? "not listed"}";
    }

    /// <summary>Skips the calling test, saying why, when the stack cannot run here.</summary>
    public void RequireStack() => Skip.If(Unavailable is not null, Unavailable);

    /// <summary>The last server log lines, to attach to a failure.</summary>
    public string RecentLog(int lines = 40) => string.Join('\n', Log.TakeLast(lines));

    public async Task DisposeAsync()
    {
        if (_app is not null)
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            try
            {
                await _app.StopAsync(stop.Token);
            }
            finally
            {
                await _app.DisposeAsync();
            }
        }
        try
        {
            Moat.Runtimes.Cgroups.CgroupHierarchy.At(CgroupParent).Remove();
        }
        catch (IOException)
        {
        }
        try
        {
            Directory.Delete(DataDirectory, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }


    private sealed class QueueLoggerProvider(ConcurrentQueue<string> lines) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new QueueLogger(lines, categoryName);

        public void Dispose()
        {
        }
    }

    private sealed class QueueLogger(ConcurrentQueue<string> lines, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel))
                return;
            lines.Enqueue($"{DateTime.UtcNow:HH:mm:ss.fff} {logLevel} {category}: {formatter(state, exception)}{(exception is null ? "" : " | " + exception.ToString().ReplaceLineEndings(" | "))}");
            while (lines.Count > 2000)
                lines.TryDequeue(out _);
        }
    }
}

/// <summary>The end-to-end test classes share one server.</summary>
[CollectionDefinition(Name)]
public sealed class ServerCollection : ICollectionFixture<ServerFixture>
{
    public const string Name = "moat serve";
}

/// <summary>
/// Base of the end-to-end tests: an admin client, sandboxes killed after the test, and the
/// server's log in the test output (shown when a test fails).
/// </summary>
public abstract class EndToEndTest(ServerFixture server, Xunit.Abstractions.ITestOutputHelper output) : IAsyncLifetime
{
    private readonly List<Sandbox> _sandboxes = [];
    private int _logStart;

    protected ServerFixture Server { get; } = server;

    protected MoatClient Client { get; private set; } = null!;

    /// <summary>A token that bounds a test.</summary>
    protected CancellationToken Timeout { get; } = new CancellationTokenSource(TimeSpan.FromMinutes(3)).Token;

    /// <summary>Creates a small container sandbox that is killed when the test ends.</summary>
    protected async Task<Sandbox> CreateAsync(Action<SandboxCreateOptions>? configure = null)
    {
        var options = new SandboxCreateOptions { Template = "base", Isolation = "container", MemoryMiB = 256, DiskMiB = 256, Cpus = 1, Timeout = TimeSpan.FromMinutes(5) };
        configure?.Invoke(options);
        var sandbox = await Client.CreateSandboxAsync(options, Timeout);
        lock (_sandboxes)
            _sandboxes.Add(sandbox);
        return sandbox;
    }

    public Task InitializeAsync()
    {
        Server.RequireStack();
        Client = Server.Client();
        _logStart = Server.Log.Count;
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        if (Client is null)
            return;
        foreach (var sandbox in _sandboxes)
            await sandbox.DisposeAsync();
        var lines = Server.Log.Skip(_logStart).ToList();
        if (lines.Count > 0)
            output.WriteLine("server log:\n" + string.Join('\n', lines));
        Client.Dispose();
    }
}
