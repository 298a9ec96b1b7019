using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Sandboxes;
using Moat.Node;

namespace Moat.Cli.Embedded;

/// <summary>
/// A Moat node inside the CLI process, for `moat run` without a server: the same manager,
/// stores and runtimes as `moat serve`, owning only the sandboxes it creates.
/// </summary>
internal sealed class EmbeddedNode : IAsyncDisposable
{
    private readonly ServiceProvider _services;

    private EmbeddedNode(ServiceProvider services) => _services = services;

    public IServiceProvider Services => _services;

    public string TemplatesDirectory => _services.GetRequiredService<IOptions<BuiltinTemplateOptions>>().Value.Directory;

    public static EmbeddedNode Create(bool quiet)
    {
        var config = MoatConfiguration.Build([new("Moat:Owner", SandboxManager.RunOwner())]);
        var services = new ServiceCollection();
        var level = Environment.GetEnvironmentVariable("MOAT_LOG") is { Length: > 0 } l && Enum.TryParse<LogLevel>(l, true, out var parsed) ? parsed : (quiet ? LogLevel.Error : LogLevel.Warning);
        services.AddLogging(b => b.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(level));
        // Console logging goes to stdout by default; a one-shot run's stdout is the command's.
        services.Configure<Microsoft.Extensions.Logging.Console.ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        services.AddMoatNode(config, background: false);
        return new EmbeddedNode(services.BuildServiceProvider());
    }

    public bool BuiltinTemplatesPresent() => BuiltinTemplates.Known.Keys.All(name => File.Exists(Path.Combine(TemplatesDirectory, name + ".tar")));

    public async ValueTask DisposeAsync()
    {
        await _services.GetRequiredService<SandboxManager>().ShutdownAsync(destroySandboxes: true, CancellationToken.None);
        await _services.DisposeAsync();
    }
}
