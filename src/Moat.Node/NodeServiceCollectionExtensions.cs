using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Host;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Core.State;
using Moat.Core.Templates;
using Moat.Runtimes.Runc;
using Moat.Storage.Rootfs;
using Moat.Storage.Sqlite;
using Moat.Storage.Templates;

namespace Moat.Node;

/// <summary>Registers everything a Moat node needs to run sandboxes.</summary>
public static class NodeServiceCollectionExtensions
{
    /// <summary>
    /// Adds the sandbox manager with its stores and runtimes, configured from the <c>Moat</c>
    /// section. <paramref name="background"/> adds the lifetime reaper and the built-in template
    /// import as hosted services (a server wants them; a one-shot run drives them itself).
    /// </summary>
    public static IServiceCollection AddMoatNode(this IServiceCollection services, IConfiguration configuration, bool background = true)
    {
        services.AddOptions<SandboxManagerOptions>().Bind(configuration.GetSection("Moat")).PostConfigure(NodePaths.ApplyDefaults);
        services.AddOptions<RuncOptions>().Bind(configuration.GetSection("Moat:Runc"));
        services.AddOptions<Moat.Runtimes.Runsc.RunscOptions>().Bind(configuration.GetSection("Moat:Runsc"));
        services.AddOptions<Moat.Networking.NetworkOptions>().Bind(configuration.GetSection("Moat:Network"));
        services.AddOptions<Moat.Runtimes.Microvm.QemuOptions>().Bind(configuration.GetSection("Moat:Qemu"));
        services.AddOptions<BuiltinTemplateOptions>().Bind(configuration.GetSection("Moat:BuiltinTemplates")).PostConfigure(o =>
        {
            if (string.IsNullOrEmpty(o.Directory))
                o.Directory = NodePaths.Installed("templates");
        });
        services.AddSingleton(TimeProvider.System);
        services.AddSingleton<ProcessRunner>();
        services.AddSingleton(sp => new SqliteDatabase(Path.Combine(Options(sp).DataDirectory, "moat.db")));
        services.AddSingleton<SqliteSandboxStore>();
        services.AddSingleton<ISandboxStore>(sp => sp.GetRequiredService<SqliteSandboxStore>());
        services.AddSingleton<IApiKeyStore, SqliteApiKeyStore>();
        services.AddMoatTemplates(configuration, sp => Options(sp).DataDirectory);
        services.AddSingleton(sp => new ScratchVolumes(Path.Combine(Options(sp).DataDirectory, "cache"), sp.GetRequiredService<ProcessRunner>()));
        services.AddSingleton<OverlayRootfs>();
        services.AddSingleton<Moat.Runtimes.Agent.AgentLayer>();
        services.AddSingleton<ISandboxRuntime, RuncRuntime>();
        services.AddSingleton<ISandboxRuntime, Moat.Runtimes.Runsc.RunscRuntime>();
        services.AddSingleton<Moat.Runtimes.Microvm.QemuRuntime>();
        services.AddSingleton<ISandboxRuntime>(sp => sp.GetRequiredService<Moat.Runtimes.Microvm.QemuRuntime>());
        services.AddSingleton<RuntimeRegistry>();
        services.AddSingleton<Moat.Networking.Inbound.InboundAccess>();
        services.AddSingleton<Moat.Networking.NetworkController>();
        services.AddSingleton<Moat.Core.Networking.INetworkController>(sp => sp.GetRequiredService<Moat.Networking.NetworkController>());
        services.AddSingleton<SandboxManager>();
        services.AddSingleton<BuiltinTemplates>();
        if (background)
        {
            // Order matters: templates exist before recovery, recovery before requests.
            services.AddHostedService(sp => sp.GetRequiredService<BuiltinTemplates>());
            services.AddHostedService<SandboxReaper>();
        }
        return services;
    }

    private static SandboxManagerOptions Options(IServiceProvider sp) => sp.GetRequiredService<IOptions<SandboxManagerOptions>>().Value;
}

/// <summary>Where an installed Moat keeps its parts, relative to the running binary.</summary>
public static class NodePaths
{
    /// <summary>
    /// A directory of the installation: the CLI is published to <c>artifacts/cli</c> and its
    /// siblings are <c>artifacts/agent</c> and <c>artifacts/templates</c>.
    /// </summary>
    public static string Installed(string part)
    {
        var fromEnv = Environment.GetEnvironmentVariable("MOAT_ARTIFACTS");
        var root = !string.IsNullOrEmpty(fromEnv) ? fromEnv : Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, ".."));
        return Path.Combine(root, part);
    }

    /// <summary>Fills in what configuration left empty.</summary>
    public static void ApplyDefaults(SandboxManagerOptions options)
    {
        var data = Environment.GetEnvironmentVariable("MOAT_DATA");
        if (!string.IsNullOrEmpty(data) && options.DataDirectory == new SandboxManagerOptions().DataDirectory)
            options.DataDirectory = data;
        options.DataDirectory = Path.GetFullPath(options.DataDirectory);
        if (string.IsNullOrEmpty(options.AgentDirectory))
            options.AgentDirectory = Installed("agent");
    }
}
