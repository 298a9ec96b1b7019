using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using Moat.Core.Sandboxes;

namespace Moat.Server.E2b;

/// <summary>
/// The per-sandbox access tokens of E2B's data plane (<c>envdAccessToken</c>). A token opens one
/// sandbox's commands, files and code contexts and nothing else. E2B hands the same token out
/// again on connect, so it is derived, not stored: an HMAC of the sandbox id under a key this
/// server keeps in its data directory (0600). The sandbox record holds only the token's hash,
/// which is what the data plane checks; a sandbox created natively has none until an E2B client
/// connects to it.
/// </summary>
public sealed class E2bAccessTokens
{
    private readonly byte[] _key;

    /// <summary>Loads (or makes, once) the token key.</summary>
    public E2bAccessTokens(IOptions<SandboxManagerOptions> options)
    {
        var path = Path.Combine(options.Value.DataDirectory, "e2b-token.key");
        _key = LoadOrCreate(path);
    }

    private static byte[] LoadOrCreate(string path)
    {
        if (File.Exists(path))
        {
            var existing = File.ReadAllBytes(path);
            if (existing.Length >= 32)
                return existing;
        }
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var key = RandomNumberGenerator.GetBytes(32);
        var temp = path + ".tmp";
        using (var file = new FileStream(temp, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
            file.Write(key);
        File.Move(temp, path, overwrite: true);
        return key;
    }

    /// <summary>The access token of a sandbox.</summary>
    public string Issue(string sandboxId) =>
        "ea_" + Convert.ToHexStringLower(HMACSHA256.HashData(_key, Encoding.UTF8.GetBytes("envd-access:" + sandboxId)));

    /// <summary>
    /// Checks a signed file URL (E2B's <c>uploadUrl</c>/<c>downloadUrl</c>): <c>v1_</c> + base64 of
    /// SHA-256 over <c>path:operation:user:token[:expiration]</c>, unexpired.
    /// </summary>
    public bool VerifySignature(string sandboxId, string signature, string path, string operation, string user, long? expiration, TimeProvider time)
    {
        if (expiration is { } exp && DateTimeOffset.FromUnixTimeSeconds(exp) < time.GetUtcNow())
            return false;
        var raw = $"{path}:{operation}:{user}:{Issue(sandboxId)}" + (expiration is { } e ? $":{e}" : "");
        var expected = "v1_" + Convert.ToBase64String(SHA256.HashData(Encoding.UTF8.GetBytes(raw))).TrimEnd('=');
        return CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(expected), Encoding.ASCII.GetBytes(signature));
    }
}
