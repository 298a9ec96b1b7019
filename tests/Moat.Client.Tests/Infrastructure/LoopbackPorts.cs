using System.Net;
using System.Net.Sockets;

namespace Moat.Client.Tests.Infrastructure;

/// <summary>Ports on 127.0.0.1 for the servers the tests start.</summary>
public static class LoopbackPorts
{
    /// <summary>A port nothing listens on right now (the kernel's choice).</summary>
    public static int Free()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>
    /// A handler that dials <paramref name="server"/>'s address whatever host a request names, so that
    /// host-routed names (<c>{port}-{id}.{domain}</c>) reach the server on loopback with their own Host.
    /// </summary>
    public static SocketsHttpHandler DialServer(Uri server) => new()
    {
        ConnectCallback = async (_, cancellationToken) =>
        {
            var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await socket.ConnectAsync(IPAddress.Parse(server.Host), server.Port, cancellationToken);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        },
    };
}
