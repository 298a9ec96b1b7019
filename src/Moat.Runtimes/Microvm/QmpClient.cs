using System.Buffers;
using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Moat.Core.Errors;

namespace Moat.Runtimes.Microvm;

/// <summary>An asynchronous message from QEMU (<c>{"event": ..., "data": ...}</c>).</summary>
internal sealed record QmpEvent(string Name, JsonElement Data);

/// <summary>A QMP command QEMU refused.</summary>
internal sealed class QmpException(string command, string message) : Exception($"QMP {command}: {message}");

/// <summary>
/// One connection to a QEMU's QMP socket (the only monitor Moat gives it): commands with their
/// answers, matched by id, and the events QEMU sends. QEMU runs guest-influenced code, so what it
/// sends is bounded: lines over 4 MiB end the connection.
/// </summary>
internal sealed class QmpClient : IAsyncDisposable
{
    private const int MaxLine = 4 << 20;
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly ConcurrentDictionary<long, TaskCompletionSource<(JsonElement Value, string? Error)>> _pending = new();
    private readonly Channel<QmpEvent> _events = Channel.CreateBounded<QmpEvent>(new BoundedChannelOptions(256) { FullMode = BoundedChannelFullMode.DropOldest });
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _stop = new();
    private long _nextId;

    private QmpClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    /// <summary>Events in arrival order (the oldest are dropped if nobody reads).</summary>
    public ChannelReader<QmpEvent> Events => _events.Reader;

    /// <summary>Completes when the connection ends (QEMU exited or closed it).</summary>
    public Task Closed => _closed.Task;

    /// <summary>Connects, reads the greeting and leaves capability negotiation mode.</summary>
    public static async Task<QmpClient> ConnectAsync(string path, CancellationToken cancellationToken)
    {
        Socket socket;
        for (int attempt = 0; ; attempt++)
        {
            socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken).ConfigureAwait(false);
                break;
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionRefused or SocketError.AddressNotAvailable && attempt < 200)
            {
                // QEMU binds its socket (the file appears) a moment before it listens on it: on a
                // loaded host that window is visible. The caller's timeout bounds the retries.
                socket.Dispose();
                await Task.Delay(10, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
        var client = new QmpClient(socket);
        try
        {
            using var greeting = JsonDocument.Parse(await client.ReadLineAsync(cancellationToken).ConfigureAwait(false)
                ?? throw new IOException("QEMU closed the QMP socket before greeting"));
            if (!greeting.RootElement.TryGetProperty("QMP", out _))
                throw new IOException("the QMP socket did not greet like QEMU");
            _ = Task.Run(client.ReadLoopAsync, CancellationToken.None);
            await client.ExecuteAsync("qmp_capabilities", null, cancellationToken).ConfigureAwait(false);
            return client;
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Runs a command and returns its <c>return</c> value.</summary>
    public async Task<JsonElement> ExecuteAsync(string command, Action<Utf8JsonWriter>? arguments, CancellationToken cancellationToken)
    {
        long id = Interlocked.Increment(ref _nextId);
        var answer = new TaskCompletionSource<(JsonElement Value, string? Error)>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = answer;
        try
        {
            var buffer = new ArrayBufferWriter<byte>();
            using (var json = new Utf8JsonWriter(buffer))
            {
                json.WriteStartObject();
                json.WriteString("execute", command);
                if (arguments is not null)
                {
                    json.WritePropertyName("arguments");
                    json.WriteStartObject();
                    arguments(json);
                    json.WriteEndObject();
                }
                json.WriteNumber("id", id);
                json.WriteEndObject();
            }
            await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                await _stream.WriteAsync(buffer.WrittenMemory, cancellationToken).ConfigureAwait(false);
                await _stream.WriteAsync("\n"u8.ToArray(), cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                _writeLock.Release();
            }
            var (value, error) = await answer.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            return error is null ? value : throw new QmpException(command, error);
        }
        finally
        {
            _pending.TryRemove(id, out _);
        }
    }

    private async Task ReadLoopAsync()
    {
        try
        {
            while (await ReadLineAsync(_stop.Token).ConfigureAwait(false) is { } line)
            {
                using var doc = JsonDocument.Parse(line);
                var root = doc.RootElement;
                if (root.TryGetProperty("event", out var name))
                {
                    _events.Writer.TryWrite(new QmpEvent(name.GetString() ?? "", root.TryGetProperty("data", out var data) ? data.Clone() : default));
                    continue;
                }
                if (!root.TryGetProperty("id", out var idElement) || !idElement.TryGetInt64(out long id) || !_pending.TryGetValue(id, out var waiter))
                    continue;
                if (root.TryGetProperty("error", out var error))
                    waiter.TrySetResult((default, error.TryGetProperty("desc", out var desc) ? desc.GetString() ?? "error" : "error"));
                else
                    waiter.TrySetResult((root.TryGetProperty("return", out var value) ? value.Clone() : default, null));
            }
        }
        catch (Exception ex) when (ex is IOException or JsonException or OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
        finally
        {
            foreach (var waiter in _pending.Values)
                waiter.TrySetException(new IOException("the QMP connection closed"));
            _events.Writer.TryComplete();
            _closed.TrySetResult();
        }
    }

    private byte[] _buffer = new byte[16 << 10];
    private int _start, _end;

    /// <summary>The next line QEMU sent, without its terminator; null at end of stream.</summary>
    private async Task<string?> ReadLineAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            int newline = Array.IndexOf(_buffer, (byte)'\n', _start, _end - _start);
            if (newline >= 0)
            {
                var line = Encoding.UTF8.GetString(_buffer, _start, newline - _start).TrimEnd('\r');
                _start = newline + 1;
                if (line.Length == 0)
                    continue;
                return line;
            }
            if (_start > 0)
            {
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
                _end -= _start;
                _start = 0;
            }
            if (_end == _buffer.Length)
            {
                if (_buffer.Length >= MaxLine)
                    throw new IOException("QEMU sent a QMP line over 4 MiB");
                Array.Resize(ref _buffer, _buffer.Length * 2);
            }
            int n = await _stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
            if (n == 0)
                return null;
            _end += n;
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        await _stream.DisposeAsync().ConfigureAwait(false);
        _closed.TrySetResult();
    }
}

/// <summary>The QMP socket did not answer in time.</summary>
internal static class QmpTimeouts
{
    /// <summary>How long a QMP command may take.</summary>
    public static readonly TimeSpan Command = TimeSpan.FromSeconds(5);

    /// <summary>Runs <paramref name="action"/> with the command timeout, as a MoatException on expiry.</summary>
    public static async Task<T> WithTimeoutAsync<T>(Func<CancellationToken, Task<T>> action, string what, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(Command);
        try
        {
            return await action(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new MoatException(ErrorKind.Timeout, "vmm_unresponsive", $"QEMU did not answer {what} within {Command.TotalSeconds:0} s");
        }
    }
}
