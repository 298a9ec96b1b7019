using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Moat.Networking.Plumbing;

namespace Moat.Tests.Network;

/// <summary>What one connection (or UDP peer) did at a test server.</summary>
public sealed class ServerConnection
{
    public required IPEndPoint Remote { get; init; }
    public long BytesIn;
    public long BytesOut;
    public ConcurrentQueue<string> Requests { get; } = new();
    public volatile bool Closed;
}

/// <summary>
/// A test server on a fake host: HTTP (optionally over TLS), echo, banner-first or UDP echo. It
/// records every connection with its raw byte counts, so tests can compare Moat's log with what
/// actually arrived, and assert that forbidden hosts saw nothing at all.
/// </summary>
public sealed class RecordingServer : IAsyncDisposable
{
    public enum Mode { Http, Echo, Banner, UdpEcho }

    private readonly Socket _socket;
    private readonly Mode _mode;
    private readonly X509Certificate2? _certificate;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    private RecordingServer(string name, Socket socket, Mode mode, X509Certificate2? certificate)
    {
        Name = name;
        _socket = socket;
        _mode = mode;
        _certificate = certificate;
        _loop = mode == Mode.UdpEcho ? UdpLoopAsync() : AcceptLoopAsync();
    }

    public string Name { get; }

    public ConcurrentQueue<ServerConnection> Connections { get; } = new();

    public int ConnectionCount => Connections.Count;

    public static RecordingServer Start(string name, NetworkNamespace ns, IPAddress address, int port, Mode mode, X509Certificate2? certificate)
    {
        var socket = ns.Run(() => mode == Mode.UdpEcho
            ? new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
            : new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        socket.Bind(new IPEndPoint(address, port));
        if (mode != Mode.UdpEcho)
            socket.Listen(512);
        return new RecordingServer(name, socket, mode, certificate);
    }

    public void Reset() => Connections.Clear();

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _socket.AcceptAsync(_stop.Token);
            }
            catch (Exception)
            {
                return;
            }
            var record = new ServerConnection { Remote = (IPEndPoint)client.RemoteEndPoint! };
            Connections.Enqueue(record);
            _ = ServeAsync(client, record);
        }
    }

    private async Task ServeAsync(Socket client, ServerConnection record)
    {
        try
        {
            await using var raw = new CountingStream(new NetworkStream(client, ownsSocket: true), record);
            Stream stream = raw;
            await using var tls = _certificate is null ? null : new SslStream(raw, leaveInnerStreamOpen: true);
            if (tls is not null)
            {
                await tls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = _certificate! }, _stop.Token);
                stream = tls;
            }
            switch (_mode)
            {
                case Mode.Echo:
                    await EchoAsync(stream);
                    break;
                case Mode.Banner:
                    await stream.WriteAsync(Encoding.ASCII.GetBytes($"220 {Name} ready\r\n"), _stop.Token);
                    await EchoAsync(stream);
                    break;
                default:
                    await HttpAsync(stream, record);
                    break;
            }
            if (tls is not null)
                await tls.ShutdownAsync();
        }
        catch (Exception)
        {
        }
        finally
        {
            record.Closed = true;
        }
    }

    private async Task EchoAsync(Stream stream)
    {
        var buffer = new byte[65536];
        int n;
        while ((n = await stream.ReadAsync(buffer, _stop.Token)) > 0)
            await stream.WriteAsync(buffer.AsMemory(0, n), _stop.Token);
    }

    private async Task HttpAsync(Stream stream, ServerConnection record)
    {
        var buffer = new byte[65536];
        int have = 0;
        while (true)
        {
            int end;
            while ((end = buffer.AsSpan(0, have).IndexOf("\r\n\r\n"u8)) < 0)
            {
                int n = await stream.ReadAsync(buffer.AsMemory(have), _stop.Token);
                if (n == 0)
                    return;
                have += n;
            }
            var head = Encoding.Latin1.GetString(buffer, 0, end);
            var lines = head.Split("\r\n");
            string host = lines.Skip(1).FirstOrDefault(l => l.StartsWith("Host:", StringComparison.OrdinalIgnoreCase))?[5..].Trim() ?? "";
            long length = long.TryParse(lines.Skip(1).FirstOrDefault(l => l.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase))?[15..].Trim(), out var cl) ? cl : 0;
            record.Requests.Enqueue($"{lines[0]} host={host}");
            int consumed = end + 4;
            // Skip the body.
            long remaining = length;
            int inBuffer = (int)Math.Min(remaining, have - consumed);
            consumed += inBuffer;
            remaining -= inBuffer;
            Buffer.BlockCopy(buffer, consumed, buffer, 0, have - consumed);
            have -= consumed;
            while (remaining > 0)
            {
                int n = await stream.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, remaining)), _stop.Token);
                if (n == 0)
                    return;
                remaining -= n;
            }
            var target = lines[0].Split(' ')[1];
            if (target.StartsWith("/stream", StringComparison.Ordinal))
            {
                await stream.WriteAsync("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"u8.ToArray(), _stop.Token);
                while (true)
                {
                    await stream.WriteAsync("tick\n"u8.ToArray(), _stop.Token);
                    await stream.FlushAsync(_stop.Token);
                    await Task.Delay(100, _stop.Token);
                }
            }
            byte[] body;
            if (target.StartsWith("/big/", StringComparison.Ordinal) && long.TryParse(target[5..], out long size))
            {
                var header = Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                await stream.WriteAsync(header, _stop.Token);
                var chunk = new byte[65536];
                for (long sent = 0; sent < size; sent += chunk.Length)
                    await stream.WriteAsync(chunk.AsMemory(0, (int)Math.Min(chunk.Length, size - sent)), _stop.Token);
                await stream.FlushAsync(_stop.Token);
                if (lines.Skip(1).Any(l => l.Equals("Connection: close", StringComparison.OrdinalIgnoreCase)))
                    return;
                continue;
            }
            body = Encoding.UTF8.GetBytes($"hello from {Name} host={host}\n");
            var response = Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body.Length}\r\n\r\n");
            await stream.WriteAsync(response.Concat(body).ToArray(), _stop.Token);
            await stream.FlushAsync(_stop.Token);
            if (lines.Skip(1).Any(l => l.Equals("Connection: close", StringComparison.OrdinalIgnoreCase)))
                return;
        }
    }

    private async Task UdpLoopAsync()
    {
        var buffer = new byte[65536];
        var peers = new Dictionary<IPEndPoint, ServerConnection>();
        while (!_stop.IsCancellationRequested)
        {
            SocketReceiveFromResult r;
            try
            {
                r = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), _stop.Token);
            }
            catch (Exception)
            {
                return;
            }
            var remote = (IPEndPoint)r.RemoteEndPoint;
            if (!peers.TryGetValue(remote, out var record))
            {
                peers[remote] = record = new ServerConnection { Remote = remote };
                Connections.Enqueue(record);
            }
            Interlocked.Add(ref record.BytesIn, r.ReceivedBytes);
            try
            {
                await _socket.SendToAsync(buffer.AsMemory(0, r.ReceivedBytes), SocketFlags.None, remote, _stop.Token);
                Interlocked.Add(ref record.BytesOut, r.ReceivedBytes);
            }
            catch (Exception)
            {
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _socket.Dispose();
        try
        {
            await _loop;
        }
        catch (Exception)
        {
        }
    }

    private sealed class CountingStream(Stream inner, ServerConnection record) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
        public override int Read(byte[] buffer, int offset, int count)
        {
            int n = inner.Read(buffer, offset, count);
            Interlocked.Add(ref record.BytesIn, n);
            return n;
        }
        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            int n = await inner.ReadAsync(buffer, cancellationToken);
            Interlocked.Add(ref record.BytesIn, n);
            return n;
        }
        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override void Write(byte[] buffer, int offset, int count)
        {
            inner.Write(buffer, offset, count);
            Interlocked.Add(ref record.BytesOut, count);
        }
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await inner.WriteAsync(buffer, cancellationToken);
            Interlocked.Add(ref record.BytesOut, buffer.Length);
        }
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        protected override void Dispose(bool disposing)
        {
            if (disposing)
                inner.Dispose();
            base.Dispose(disposing);
        }
    }
}

/// <summary>The test's DNS server: fixed A records, and a record of every question that reached it.</summary>
public sealed class TestDnsServer : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly IReadOnlyDictionary<string, IPAddress[]> _records;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    public TestDnsServer(NetworkNamespace ns, IPAddress address, IReadOnlyDictionary<string, IPAddress[]> records)
    {
        _records = records;
        _socket = ns.Run(() => new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp));
        _socket.Bind(new IPEndPoint(address, 53));
        _loop = LoopAsync();
    }

    /// <summary>Every (lower-cased) name asked, in order.</summary>
    public ConcurrentQueue<string> Questions { get; } = new();

    public void Reset() => Questions.Clear();

    private async Task LoopAsync()
    {
        var buffer = new byte[4096];
        while (!_stop.IsCancellationRequested)
        {
            SocketReceiveFromResult r;
            try
            {
                r = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), _stop.Token);
            }
            catch (Exception)
            {
                return;
            }
            if (!Moat.Networking.Dns.DnsMessage.TryParseQuery(buffer.AsSpan(0, r.ReceivedBytes), out var q))
                continue;
            Questions.Enqueue(q!.Name);
            IPAddress[] answers = q.Type == 1 && _records.TryGetValue(q.Name, out var a) ? a : [];
            int rcode = _records.ContainsKey(q.Name) ? 0 : 3;
            // Short TTLs, as a rebinding attacker would use.
            var reply = Moat.Networking.Dns.DnsMessage.BuildResponse(q, rcode, answers, 1, 1232);
            try
            {
                await _socket.SendToAsync(reply, SocketFlags.None, r.RemoteEndPoint, _stop.Token);
            }
            catch (Exception)
            {
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _socket.Dispose();
        try
        {
            await _loop;
        }
        catch (Exception)
        {
        }
    }
}
