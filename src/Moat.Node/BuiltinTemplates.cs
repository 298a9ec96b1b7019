using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Templates;
using Moat.Storage.Templates;

namespace Moat.Node;

/// <summary>Where the built-in templates' root filesystems are (section <c>Moat:BuiltinTemplates</c>).</summary>
public sealed class BuiltinTemplateOptions
{
    /// <summary>Directory holding NAME.tar rootfs archives made by the set-up.</summary>
    public string Directory { get; set; } = "";
}

/// <summary>
/// Imports the built-in templates (rootfs archives made once by the set-up with mmdebstrap) into
/// the template store, so a fresh machine has templates without any registry.
/// </summary>
public sealed partial class BuiltinTemplates(TemplateStore store, IOptions<BuiltinTemplateOptions> options, ILogger<BuiltinTemplates> logger) : IHostedService
{
    /// <summary>The built-in templates and their image config.</summary>
    public static readonly IReadOnlyDictionary<string, ImageConfig> Known = new Dictionary<string, ImageConfig>
    {
        ["base"] = new()
        {
            Env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1"],
        },
        // E2B's code interpreter template: Python with numpy, pandas and matplotlib, and Node.js, offline.
        ["code-interpreter-v1"] = new()
        {
            Env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1", "MPLBACKEND=Agg"],
        },
    };

    /// <summary>Imports whatever built-in archives exist and are not imported yet.</summary>
    public async Task EnsureAsync(CancellationToken cancellationToken)
    {
        foreach (var (name, config) in Known)
        {
            var tarball = Path.Combine(options.Value.Directory, name + ".tar");
            if (!File.Exists(tarball))
            {
                LogMissing(logger, name, tarball);
                continue;
            }
            await store.EnsureBuiltinAsync(name, tarball, config, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public Task StartAsync(CancellationToken cancellationToken) => EnsureAsync(cancellationToken);

    /// <inheritdoc />
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    [LoggerMessage(Level = LogLevel.Warning, Message = "Built-in template {Name} is not available: {Tarball} is missing (run ./run.sh)")]
    private static partial void LogMissing(ILogger logger, string name, string tarball);
}
