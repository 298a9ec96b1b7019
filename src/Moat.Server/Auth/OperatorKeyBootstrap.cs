using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Moat.Core.State;

namespace Moat.Server.Auth;

/// <summary>
/// Makes sure an operator key (which manages tenants) exists: MOAT_OPERATOR_KEY when given,
/// otherwise one minted at the first start and printed once, like the first admin key.
/// </summary>
internal sealed partial class OperatorKeyBootstrap(ApiKeyService keys, IApiKeyStore store, ILogger<OperatorKeyBootstrap> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var given = Environment.GetEnvironmentVariable("MOAT_OPERATOR_KEY");
        if (!string.IsNullOrEmpty(given))
        {
            // A revoked MOAT_OPERATOR_KEY stays revoked: only a key never seen is stored.
            if (ApiKeyService.Parse(given) is var (_, id, _) && await store.GetAsync(id, cancellationToken).ConfigureAwait(false) is null)
                await keys.ImportAsync("default", Roles.Operator, "operator (MOAT_OPERATOR_KEY)", given, cancellationToken).ConfigureAwait(false);
            return;
        }
        var all = await store.ListAsync(null, cancellationToken).ConfigureAwait(false);
        if (all.Any(k => k.Role == Roles.Operator))
            return;
        var (_, key) = await keys.CreateAsync("default", Roles.Operator, "operator (first start)", cancellationToken: cancellationToken).ConfigureAwait(false);
        // Printed once, on stdout, and never stored: only its hash is kept.
        Console.Out.WriteLine($"Operator API key (manages tenants; shown once, store it now): {key}");
        Console.Out.Flush();
        LogMinted(logger);
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    [LoggerMessage(Level = LogLevel.Warning, Message = "Created the operator API key; it was printed on stdout and is not stored")]
    private static partial void LogMinted(ILogger logger);
}
