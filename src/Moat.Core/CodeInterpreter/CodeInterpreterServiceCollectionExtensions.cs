using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Moat.Core.CodeInterpreter;

/// <summary>Wires the code interpreter.</summary>
public static class CodeInterpreterServiceCollectionExtensions
{
    /// <summary>Adds <see cref="CodeContextManager"/> (needs the node's <see cref="Sandboxes.SandboxManager"/>).</summary>
    public static IServiceCollection AddCodeInterpreter(this IServiceCollection services)
    {
        services.TryAddSingleton<CodeContextManager>();
        return services;
    }
}
