using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Core.Templates;
using Moat.Storage.Oci;
using Moat.Storage.Sqlite;
using Moat.Storage.Templates;

namespace Moat.Node;

/// <summary>Settings of the template store (section <c>Moat:Templates</c>).</summary>
public sealed class TemplateOptions
{
    /// <summary>What one layer may hold (<c>Moat:Templates:Layers</c>).</summary>
    public LayerLimits Layers { get; set; } = new();

    /// <summary>Whether the server may pull from registries on private, loopback or link-local addresses (the embedded CLI always may).</summary>
    public bool AllowPrivateRegistries { get; set; }

    /// <summary>Registries spoken to over plain HTTP (loopback ones always are).</summary>
    public List<string> InsecureRegistries { get; set; } = [];

    /// <summary>Sandboxes of RUN steps (<c>Moat:Templates:Build</c>).</summary>
    public BuildResources Build { get; set; } = new();

    /// <summary>Layers a pull downloads at once.</summary>
    public int PullConcurrency { get; set; } = 3;

    /// <summary>How a pull on this node runs.</summary>
    public PullOptions PullOptions(bool embedded = false) => new()
    {
        Access = new RegistryAccess { AllowPrivateAddresses = embedded || AllowPrivateRegistries, InsecureRegistries = InsecureRegistries },
        Concurrency = Math.Clamp(PullConcurrency, 1, 16),
    };
}

/// <summary>Wires the image store, templates, import, pull and build.</summary>
public static class TemplateServiceCollectionExtensions
{
    /// <summary>Adds the template services; <paramref name="dataDirectory"/> gives the node's data directory.</summary>
    public static IServiceCollection AddMoatTemplates(this IServiceCollection services, IConfiguration configuration, Func<IServiceProvider, string> dataDirectory)
    {
        services.AddOptions<TemplateOptions>().Bind(configuration.GetSection("Moat:Templates"));
        services.AddSingleton(sp => new ImageStore(sp.GetRequiredService<SqliteDatabase>(), dataDirectory(sp), sp.GetRequiredService<IOptions<TemplateOptions>>().Value.Layers, sp.GetRequiredService<ILogger<ImageStore>>()));
        services.AddSingleton<TemplateStore>();
        services.AddSingleton<ITemplateStore>(sp => sp.GetRequiredService<TemplateStore>());
        services.AddSingleton<TemplateImporter>();
        services.AddSingleton(sp => new RegistryCredentialStore(sp.GetRequiredService<SqliteDatabase>(), dataDirectory(sp)));
        services.AddSingleton<TemplatePuller>();
        services.AddSingleton<TemplateCatalog>();
        services.AddSingleton(sp => new TemplateBuilder(sp.GetRequiredService<TemplateStore>(), sp.GetRequiredService<TemplatePuller>(), sp.GetRequiredService<Moat.Core.Sandboxes.SandboxManager>(),
            sp.GetRequiredService<SqliteDatabase>(), sp.GetRequiredService<IOptions<TemplateOptions>>().Value.Build, sp.GetRequiredService<ILogger<TemplateBuilder>>()));
        services.AddSingleton<SandboxSnapshots>();
        return services;
    }
}
