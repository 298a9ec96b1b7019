using System.Buffers;
using System.Net.Sockets;

namespace Moat.Networking.Egress;

/// <summary>
/// Copies bytes between a sandbox's connection and the destination, both ways, with half-close
/// passed on, the sandbox's bandwidth budgets applied, and an optional inspector that sees every
/// byte the sandbox sends before it is forwarded (and can end the connection). Idle connections
/// hold no buffer: a zero-byte read waits for data first.
/// </summary>
internal static class Relay
{
    private const int BufferSize = 64 * 1024;

    /// <summary>A byte inspector: returns why the connection must end, or null to forward.</summary>
    public delegate string? Inspector(ReadOnlySpan<byte> data);

    /// <summary>Counters of one relayed connection, readable while it runs.</summary>
    public sealed class Counters
    {
        public long Out;
        public long In;
    }

    /// <summary>Runs both directions until both have ended; returns how it ended.</summary>
    public static async Task<string> RunAsync(Socket client, Socket upstream, Counters counters, TokenBucket? egress, TokenBucket? ingress, Inspector? inspect, CancellationToken cancellationToken)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var outbound = PumpAsync(client, upstream, egress, inspect, c => Interlocked.Add(ref counters.Out, c), stop.Token);
        var inbound = PumpAsync(upstream, client, ingress, null, c => Interlocked.Add(ref counters.In, c), stop.Token);
        var first = await Task.WhenAny(outbound, inbound).ConfigureAwait(false);
        string end = await first.ConfigureAwait(false);
        if (end != "closed")
        {
            // One side broke or was refused: the other has nothing left to say.
            await stop.CancelAsync().ConfigureAwait(false);
        }
        string other = await (first == outbound ? inbound : outbound).ConfigureAwait(false);
        return end != "closed" ? end : other;
    }

    private static async Task<string> PumpAsync(Socket from, Socket to, TokenBucket? bucket, Inspector? inspect, Action<int> count, CancellationToken cancellationToken)
    {
        try
        {
            while (true)
            {
                await from.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
                try
                {
                    while (true)
                    {
                        int n = await from.ReceiveAsync(buffer.AsMemory(0, BufferSize), SocketFlags.None, cancellationToken).ConfigureAwait(false);
                        if (n == 0)
                        {
                            try
                            {
                                to.Shutdown(SocketShutdown.Send);
                            }
                            catch (SocketException)
                            {
                            }
                            return "closed";
                        }
                        if (inspect?.Invoke(buffer.AsSpan(0, n)) is { } problem)
                            return problem;
                        if (bucket is not null)
                            await bucket.TakeAsync(n, cancellationToken).ConfigureAwait(false);
                        await SendAllAsync(to, buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                        count(n);
                        if (from.Available == 0)
                            break;
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return "cancelled";
        }
        catch (SocketException ex)
        {
            return ex.SocketErrorCode == SocketError.ConnectionReset ? "reset" : "error";
        }
        catch (ObjectDisposedException)
        {
            return "cancelled";
        }
    }

    /// <summary>Sends every byte of <paramref name="data"/>.</summary>
    public static async Task SendAllAsync(Socket socket, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        while (data.Length > 0)
        {
            int sent = await socket.SendAsync(data, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            data = data[sent..];
        }
    }

    /// <summary>Closes a socket with a reset (no lingering, the peer learns at once).</summary>
    public static void Reset(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }
        socket.Dispose();
    }
}
