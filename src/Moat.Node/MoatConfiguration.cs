using Microsoft.Extensions.Configuration;

namespace Moat.Node;

/// <summary>Where Moat reads its configuration: the defaults in code, then /etc/moat/moat.json, then the file named by MOAT_CONFIG, then environment variables (Moat__DataDirectory=...), then the command line.</summary>
public static class MoatConfiguration
{
    /// <summary>Adds Moat's configuration files to <paramref name="builder"/> (environment and command line are added by the host).</summary>
    public static IConfigurationBuilder AddSources(IConfigurationBuilder builder)
    {
        builder.AddJsonFile("/etc/moat/moat.json", optional: true, reloadOnChange: false);
        if (Environment.GetEnvironmentVariable("MOAT_CONFIG") is { Length: > 0 } file)
            builder.AddJsonFile(Path.GetFullPath(file), optional: false, reloadOnChange: false);
        return builder;
    }

    /// <summary>The configuration of a process that is not a web host (embedded `moat run`, `moat doctor`).</summary>
    public static IConfiguration Build(IEnumerable<KeyValuePair<string, string?>>? overrides = null)
    {
        var builder = new ConfigurationBuilder();
        AddSources(builder);
        builder.AddEnvironmentVariables();
        if (overrides is not null)
            builder.AddInMemoryCollection(overrides);
        return builder.Build();
    }
}
