using System.Security.Cryptography;
using System.Text;
using Microsoft.Data.Sqlite;
using Moat.Core.Errors;
using Moat.Storage.Oci;
using Moat.Storage.Sqlite;

namespace Moat.Storage.Templates;

/// <summary>A stored registry login, without its secret.</summary>
public sealed record RegistryLogin(string Registry, string Username, DateTimeOffset CreatedAt);

/// <summary>
/// Registry credentials per tenant, used by that tenant's pulls only. Secrets are sealed with
/// AES-256-GCM under a node key kept at <c>DATA/secrets/registry.key</c> (0600): a copy of the
/// database alone does not give them away. They are never returned by the API.
/// </summary>
public sealed class RegistryCredentialStore
{
    private readonly SqliteDatabase _database;
    private readonly byte[] _key;

    /// <summary>Opens the store, creating the node key on first use.</summary>
    public RegistryCredentialStore(SqliteDatabase database, string dataDirectory)
    {
        _database = database;
        var dir = Path.Combine(dataDirectory, "secrets");
        Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var path = Path.Combine(dir, "registry.key");
        if (!File.Exists(path))
        {
            var fresh = RandomNumberGenerator.GetBytes(32);
            var temp = path + "." + Environment.ProcessId;
            using (var stream = new FileStream(temp, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
                stream.Write(fresh);
            try
            {
                File.Move(temp, path, overwrite: false);
            }
            catch (IOException)
            {
                File.Delete(temp); // another process made it first
            }
        }
        _key = File.ReadAllBytes(path);
        if (_key.Length != 32)
            throw new InvalidOperationException($"{path} is not a 32-byte key");
    }

    /// <summary>The canonical name of a registry in logins: host[:port], Docker Hub as docker.io.</summary>
    public static string Normalize(string? registry)
    {
        if (string.IsNullOrWhiteSpace(registry))
            throw MoatException.Invalid("invalid_registry", "give the registry host (like ghcr.io or registry.example.com:5000)");
        var r = registry.Trim().ToLowerInvariant();
        if (r.StartsWith("https://", StringComparison.Ordinal))
            r = r[8..];
        else if (r.StartsWith("http://", StringComparison.Ordinal))
            r = r[7..];
        r = r.TrimEnd('/');
        if (r.EndsWith("/v1", StringComparison.Ordinal) || r.EndsWith("/v2", StringComparison.Ordinal))
            r = r[..^3];
        if (r is "index.docker.io" or "registry-1.docker.io" or "")
            r = ImageReference.DockerHub;
        if (r.Length > 255 || r.Contains('/') || r.Any(char.IsWhiteSpace))
            throw MoatException.Invalid("invalid_registry", $"'{registry}' is not a registry host (like ghcr.io or registry.example.com:5000)");
        return r;
    }

    /// <summary>Stores (or replaces) the tenant's login for a registry.</summary>
    public Task SaveAsync(string tenant, string? registry, string? username, string? password, CancellationToken cancellationToken)
    {
        registry = Normalize(registry);
        if (string.IsNullOrEmpty(username) || username.Length > 256 || password is null || password.Length is 0 or > 8192)
            throw MoatException.Invalid("invalid_credentials", "give a user name (at most 256 characters) and a password or token (at most 8192)");
        var sealedSecret = Seal(tenant, registry, Encoding.UTF8.GetBytes(password));
        return _database.WriteAsync(c =>
        {
            using var upsert = new SqliteCommand("INSERT OR REPLACE INTO registry_credentials (tenant, registry, username, secret, created_at) VALUES ($t, $r, $u, $s, $now)", c);
            upsert.Parameters.AddWithValue("$t", tenant);
            upsert.Parameters.AddWithValue("$r", registry);
            upsert.Parameters.AddWithValue("$u", username);
            upsert.Parameters.AddWithValue("$s", sealedSecret);
            upsert.Parameters.AddWithValue("$now", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            return upsert.ExecuteNonQuery();
        }, cancellationToken);
    }

    /// <summary>The tenant's credential for a registry, or null.</summary>
    public Task<RegistryCredential?> GetAsync(string tenant, string registry, CancellationToken cancellationToken) => _database.ReadAsync(c =>
    {
        registry = Normalize(registry);
        using var command = new SqliteCommand("SELECT username, secret FROM registry_credentials WHERE tenant = $t AND registry = $r", c);
        command.Parameters.AddWithValue("$t", tenant);
        command.Parameters.AddWithValue("$r", registry);
        using var reader = command.ExecuteReader();
        if (!reader.Read())
            return null;
        var secret = Open(tenant, registry, (byte[])reader.GetValue(1));
        return (RegistryCredential?)new RegistryCredential(reader.GetString(0), Encoding.UTF8.GetString(secret));
    });

    /// <summary>The tenant's logins (never the secrets).</summary>
    public Task<IReadOnlyList<RegistryLogin>> ListAsync(string tenant, CancellationToken cancellationToken) => _database.ReadAsync(c =>
    {
        using var command = new SqliteCommand("SELECT registry, username, created_at FROM registry_credentials WHERE tenant = $t ORDER BY registry", c);
        command.Parameters.AddWithValue("$t", tenant);
        using var reader = command.ExecuteReader();
        var list = new List<RegistryLogin>();
        while (reader.Read())
            list.Add(new RegistryLogin(reader.GetString(0), reader.GetString(1), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2))));
        return (IReadOnlyList<RegistryLogin>)list;
    });

    /// <summary>Forgets a login; false when there was none.</summary>
    public Task<bool> DeleteAsync(string tenant, string registry, CancellationToken cancellationToken) => _database.WriteAsync(c =>
    {
        using var delete = new SqliteCommand("DELETE FROM registry_credentials WHERE tenant = $t AND registry = $r", c);
        delete.Parameters.AddWithValue("$t", tenant);
        delete.Parameters.AddWithValue("$r", Normalize(registry));
        return delete.ExecuteNonQuery() > 0;
    }, cancellationToken);

    // The tenant and registry are the associated data: a sealed secret moved to another row does not open.
    private byte[] Seal(string tenant, string registry, byte[] plain)
    {
        var nonce = RandomNumberGenerator.GetBytes(12);
        var cipher = new byte[plain.Length];
        var tag = new byte[16];
        using var aes = new AesGcm(_key, 16);
        aes.Encrypt(nonce, plain, cipher, tag, Encoding.UTF8.GetBytes(tenant + "\n" + registry));
        return [.. nonce, .. tag, .. cipher];
    }

    private byte[] Open(string tenant, string registry, byte[] sealedSecret)
    {
        if (sealedSecret.Length < 28)
            throw new MoatException(ErrorKind.Internal, "credential_corrupt", $"the stored login for {registry} is damaged; log in again");
        var plain = new byte[sealedSecret.Length - 28];
        using var aes = new AesGcm(_key, 16);
        try
        {
            aes.Decrypt(sealedSecret.AsSpan(0, 12), sealedSecret.AsSpan(28), sealedSecret.AsSpan(12, 16), plain, Encoding.UTF8.GetBytes(tenant + "\n" + registry));
        }
        catch (AuthenticationTagMismatchException)
        {
            throw new MoatException(ErrorKind.Internal, "credential_corrupt", $"the stored login for {registry} cannot be opened with this node's key; log in again");
        }
        return plain;
    }
}
