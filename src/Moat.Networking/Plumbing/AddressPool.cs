using System.Buffers.Binary;
using System.Net;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Moat.Networking.Plumbing;

/// <summary>One sandbox's slice of the pool: a /30 with Moat's end at .1 and the sandbox at .2.</summary>
/// <param name="Index">Slot number in the pool (also names the link: <c>msb{Index}</c>).</param>
/// <param name="Gateway">Moat's address on the link (also the sandbox's resolver).</param>
/// <param name="Address">The sandbox's address.</param>
public sealed record Lease(int Index, IPAddress Gateway, IPAddress Address)
{
    /// <summary>Name of Moat's end of the link, in the gateway namespace.</summary>
    public string GatewayInterface => $"msb{Index}";

    /// <summary>Name of the sandbox's nftables chain.</summary>
    public string Chain => $"sb{Index}";
}

/// <summary>
/// Hands out /30 slices of the configured block, one per sandbox, and writes every allocation to a
/// file before it is used, so a restarted server never gives a live sandbox's address to another.
/// Freed slots are reused last (a rotating cursor), so a just-freed address does not reappear at once.
/// </summary>
public sealed class AddressPool
{
    private readonly object _gate = new();
    private readonly string _file;
    private readonly uint _base;
    private readonly int _slots;
    private readonly State _state;

    /// <summary>Opens (or starts) the pool whose allocations live in <paramref name="file"/>.</summary>
    public AddressPool(IPNetwork block, string file)
    {
        if (block.BaseAddress.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork || block.PrefixLength > 29)
            throw new ArgumentException($"Moat:Network:Pool must be an IPv4 block of /29 or larger, got {block}");
        Block = block;
        _file = file;
        _base = BinaryPrimitives.ReadUInt32BigEndian(block.BaseAddress.GetAddressBytes());
        _slots = 1 << (32 - block.PrefixLength - 2);
        _state = Load(file);
    }

    /// <summary>The block.</summary>
    public IPNetwork Block { get; }

    /// <summary>Sandboxes holding a slot.</summary>
    public IReadOnlyDictionary<string, Lease> Leases
    {
        get
        {
            lock (_gate)
                return _state.Leases.ToDictionary(kv => kv.Key, kv => LeaseOf(kv.Value));
        }
    }

    /// <summary>The sandbox's slot, allocating (and persisting) one if it has none.</summary>
    public Lease Allocate(string sandboxId)
    {
        lock (_gate)
        {
            if (_state.Leases.TryGetValue(sandboxId, out int existing))
                return LeaseOf(existing);
            var used = _state.Leases.Values.ToHashSet();
            for (int i = 0; i < _slots; i++)
            {
                int candidate = (_state.Cursor + i) % _slots;
                if (used.Contains(candidate))
                    continue;
                _state.Leases[sandboxId] = candidate;
                _state.Cursor = (candidate + 1) % _slots;
                Save();
                return LeaseOf(candidate);
            }
            throw new Core.Errors.MoatException(Core.Errors.ErrorKind.Unavailable, "network_pool_exhausted", $"all {_slots} sandbox links of {Block} are in use; enlarge Moat:Network:Pool");
        }
    }

    /// <summary>The sandbox's slot, or null.</summary>
    public Lease? Find(string sandboxId)
    {
        lock (_gate)
            return _state.Leases.TryGetValue(sandboxId, out int index) ? LeaseOf(index) : null;
    }

    /// <summary>Frees the sandbox's slot (and persists that).</summary>
    public void Release(string sandboxId)
    {
        lock (_gate)
        {
            if (_state.Leases.Remove(sandboxId))
                Save();
        }
    }

    private Lease LeaseOf(int index)
    {
        uint network = _base + (uint)index * 4;
        return new Lease(index, ToAddress(network + 1), ToAddress(network + 2));
    }

    private static IPAddress ToAddress(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return new IPAddress(bytes);
    }

    private void Save()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(_file)!);
        var temp = _file + ".tmp";
        File.WriteAllText(temp, JsonSerializer.Serialize(_state, PoolJson.Default.State));
        File.Move(temp, _file, overwrite: true);
    }

    private static State Load(string file)
    {
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllText(file), PoolJson.Default.State) ?? new State();
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            return new State();
        }
    }

    internal sealed class State
    {
        public int Cursor { get; set; }
        public Dictionary<string, int> Leases { get; set; } = [];
    }
}

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(AddressPool.State))]
internal sealed partial class PoolJson : JsonSerializerContext;
