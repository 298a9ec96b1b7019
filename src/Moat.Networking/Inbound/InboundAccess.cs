using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Options;
using Moat.Core.Sandboxes;

namespace Moat.Networking.Inbound;

/// <summary>
/// Who may use the inbound proxy to a sandbox's ports: the holder of the sandbox's access token
/// (an HMAC of its id under a secret of this node, so nothing per sandbox is stored and a token is
/// worth exactly one sandbox), the tenant's API keys, or anyone for a port made public. Public
/// ports are persisted so a restarted server keeps them.
/// </summary>
public sealed class InboundAccess
{
    private readonly object _gate = new();
    private readonly string _publicFile;
    private readonly Lazy<byte[]> _key;
    private Dictionary<string, SortedSet<int>>? _public;

    /// <summary>Creates the access service for the node's data directory.</summary>
    public InboundAccess(IOptions<SandboxManagerOptions> manager, IOptions<NetworkOptions> network)
    {
        var directory = Path.Combine(manager.Value.DataDirectory, "network");
        _publicFile = Path.Combine(directory, "public-ports.json");
        _key = new Lazy<byte[]>(() => LoadKey(Path.Combine(directory, "inbound.key")));
        Domain = network.Value.Inbound.Domain.Trim().TrimEnd('.').ToLowerInvariant();
    }

    /// <summary>The domain of the host form (<c>{port}-{id}.{Domain}</c>), or empty.</summary>
    public string Domain { get; }

    /// <summary>The access token of a sandbox's ports.</summary>
    public string TokenFor(string sandboxId)
    {
        var mac = HMACSHA256.HashData(_key.Value, Encoding.UTF8.GetBytes("moat-inbound-v1:" + sandboxId));
        return "mt_" + Convert.ToBase64String(mac).TrimEnd('=').Replace('+', '-').Replace('/', '_');
    }

    /// <summary>Whether <paramref name="token"/> is the sandbox's access token (constant time).</summary>
    public bool Verify(string sandboxId, string? token)
    {
        if (string.IsNullOrEmpty(token) || token.Length > 128)
            return false;
        var expected = Encoding.ASCII.GetBytes(TokenFor(sandboxId));
        var given = Encoding.UTF8.GetBytes(token);
        return given.Length == expected.Length && CryptographicOperations.FixedTimeEquals(given, expected);
    }

    /// <summary>Whether a port of a sandbox is public (no token needed).</summary>
    public bool IsPublic(string sandboxId, int port)
    {
        lock (_gate)
            return Load().TryGetValue(sandboxId, out var ports) && ports.Contains(port);
    }

    /// <summary>The sandbox's public ports.</summary>
    public IReadOnlyList<int> PublicPorts(string sandboxId)
    {
        lock (_gate)
            return Load().TryGetValue(sandboxId, out var ports) ? [.. ports] : [];
    }

    /// <summary>Makes a port public or private again.</summary>
    public void SetPublic(string sandboxId, int port, bool isPublic)
    {
        lock (_gate)
        {
            var all = Load();
            if (isPublic)
            {
                if (!all.TryGetValue(sandboxId, out var ports))
                    all[sandboxId] = ports = [];
                if (ports.Count >= 64 && !ports.Contains(port))
                    throw Core.Errors.MoatException.Invalid("too_many_public_ports", $"sandbox {sandboxId} already has 64 public ports");
                ports.Add(port);
            }
            else if (all.TryGetValue(sandboxId, out var ports))
            {
                ports.Remove(port);
                if (ports.Count == 0)
                    all.Remove(sandboxId);
            }
            Save(all);
        }
    }

    /// <summary>Forgets an ended sandbox's public ports.</summary>
    public void Forget(string sandboxId)
    {
        lock (_gate)
        {
            var all = Load();
            if (all.Remove(sandboxId))
                Save(all);
        }
    }

    private Dictionary<string, SortedSet<int>> Load()
    {
        if (_public is not null)
            return _public;
        try
        {
            var stored = JsonSerializer.Deserialize(File.ReadAllText(_publicFile), InboundJson.Default.DictionaryStringListInt32) ?? [];
            _public = stored.ToDictionary(kv => kv.Key, kv => new SortedSet<int>(kv.Value));
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException or JsonException)
        {
            _public = [];
        }
        return _public;
    }

    private void Save(Dictionary<string, SortedSet<int>> all)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(_publicFile)!);
        var temp = _publicFile + ".tmp";
        File.WriteAllText(temp, JsonSerializer.Serialize(all.ToDictionary(kv => kv.Key, kv => kv.Value.ToList()), InboundJson.Default.DictionaryStringListInt32));
        File.Move(temp, _publicFile, overwrite: true);
    }

    private static byte[] LoadKey(string path)
    {
        if (File.Exists(path))
        {
            var existing = File.ReadAllBytes(path);
            if (existing.Length == 32)
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
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, List<int>>))]
internal sealed partial class InboundJson : System.Text.Json.Serialization.JsonSerializerContext;
