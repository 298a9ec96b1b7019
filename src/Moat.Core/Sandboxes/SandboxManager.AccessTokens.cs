using System.Security.Cryptography;
using System.Text;

namespace Moat.Core.Sandboxes;

public sealed partial class SandboxManager
{
    /// <summary>
    /// Records the hash of a sandbox's data-plane access token: a credential that reaches this one
    /// sandbox only (E2B's SDKs present it as <c>X-Access-Token</c>). Replaces any earlier one.
    /// </summary>
    public async Task<SandboxRecord> SetAccessTokenHashAsync(string id, string tenantId, string tokenHash, CancellationToken cancellationToken)
    {
        if (tokenHash.Length != 64 || !tokenHash.All(char.IsAsciiHexDigitLower))
            throw new ArgumentException("the token hash must be 64 lower-case hex digits", nameof(tokenHash));
        var live = await LiveOfAsync(id, tenantId, cancellationToken).ConfigureAwait(false);
        await live.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (live.Ended)
                throw NotRunning(live.Record);
            live.Record = live.Record with { AccessTokenHash = tokenHash };
            await _store.UpdateAsync(live.Record, cancellationToken).ConfigureAwait(false);
            return live.Record;
        }
        finally
        {
            live.Gate.Release();
        }
    }

    /// <summary>
    /// The sandbox a data-plane access token opens, or null when the id is unknown or the token is
    /// not its token. The comparison is constant-time; the caller learns nothing about other sandboxes.
    /// </summary>
    public async Task<SandboxRecord?> FindByAccessTokenAsync(string id, string token, CancellationToken cancellationToken)
    {
        if (string.IsNullOrEmpty(token) || token.Length > 512)
            return null;
        SandboxRecord? record;
        if (_live.TryGetValue(id, out var live))
            record = live.Record;
        else if (ValidId(id))
            record = await _store.GetAsync(id, cancellationToken).ConfigureAwait(false);
        else
            return null;
        if (record?.AccessTokenHash is not { Length: 64 } stored)
            return null;
        var presented = Encoding.ASCII.GetBytes(HashAccessToken(token));
        return CryptographicOperations.FixedTimeEquals(presented, Encoding.ASCII.GetBytes(stored)) ? record : null;
    }

    /// <summary>The hash under which an access token is recorded.</summary>
    public static string HashAccessToken(string token) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(token)));
}
