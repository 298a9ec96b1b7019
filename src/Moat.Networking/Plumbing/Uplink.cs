using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text;

namespace Moat.Networking.Plumbing;

/// <summary>
/// Where Moat's own outbound traffic for sandboxes leaves: the proxy's connections and the
/// resolver's questions are made from sockets created here — in the configured uplink namespace
/// (or Moat's own), optionally bound to one interface. Sandboxes never route to it themselves.
/// </summary>
public sealed class Uplink : IDisposable
{
    private readonly NetworkNamespace? _namespace;
    private readonly byte[]? _device;

    /// <summary>Opens the uplink described by the options.</summary>
    public Uplink(NetworkOptions options)
    {
        if (!string.IsNullOrEmpty(options.UplinkNamespace))
            _namespace = NetworkNamespace.Open(options.UplinkNamespace);
        if (!string.IsNullOrEmpty(options.UplinkInterface))
            _device = Encoding.ASCII.GetBytes(options.UplinkInterface + "\0");
        Description = (_namespace is null ? "host namespace" : $"namespace {_namespace.Path}") + (_device is null ? "" : $", interface {options.UplinkInterface}");
    }

    /// <summary>Where traffic leaves, in words.</summary>
    public string Description { get; }

    /// <summary>A socket whose traffic leaves through the uplink.</summary>
    public Socket CreateSocket(AddressFamily family, SocketType type, ProtocolType protocol)
    {
        var socket = _namespace is null ? new Socket(family, type, protocol) : _namespace.Run(() => new Socket(family, type, protocol));
        if (_device is not null)
        {
            try
            {
                socket.SetRawSocketOption(1 /* SOL_SOCKET */, 25 /* SO_BINDTODEVICE */, _device);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
        return socket;
    }

    /// <summary>The addresses of the uplink's own interfaces (and so of this host, as sandboxes would see it).</summary>
    public IReadOnlyList<IPAddress> OwnAddresses() => _namespace is null ? Addresses() : _namespace.Run(Addresses);

    internal static IReadOnlyList<IPAddress> Addresses()
    {
        var list = new List<IPAddress>();
        foreach (var nic in NetworkInterface.GetAllNetworkInterfaces())
        {
            foreach (var a in nic.GetIPProperties().UnicastAddresses)
                list.Add(a.Address.AddressFamily == AddressFamily.InterNetworkV6 && a.Address.ScopeId != 0 ? new IPAddress(a.Address.GetAddressBytes()) : a.Address);
        }
        return list;
    }

    /// <inheritdoc />
    public void Dispose() => _namespace?.Dispose();
}
