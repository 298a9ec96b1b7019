using Moat.Core.Errors;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Core.Agent;

/// <summary>
/// A file in a sandbox being read through the agent, as a forward-only <see cref="Stream"/>.
/// Never yields more than the agent announced, nor more than the caller's limit.
/// </summary>
public sealed class AgentFileReadStream : Stream
{
    private Reader _reader = new(0);
    private readonly long _maxBytes;
    private ReadOnlyMemory<byte> _current;
    private long _delivered;
    private bool _done;

    internal AgentFileReadStream(long maxBytes) => _maxBytes = maxBytes;

    internal AgentStream Bind(uint id) => _reader = new Reader(id);

    /// <summary>Metadata of the file, as the agent saw it when it opened it.</summary>
    public Protocol.Messages.FileInfo Info { get; private set; } = new();

    internal async Task StartAsync(CancellationToken cancellationToken) => Info = await _reader.StartAsync(cancellationToken).ConfigureAwait(false);

    /// <inheritdoc />
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (_current.IsEmpty)
        {
            if (_done)
                return 0;
            var chunk = await _reader.NextChunkAsync(cancellationToken).ConfigureAwait(false);
            if (chunk is null)
            {
                _done = true;
                return 0;
            }
            _delivered += chunk.Length;
            if (_delivered > _maxBytes)
                throw new MoatException(ErrorKind.TooLarge, "file_too_large", $"the file is larger than the limit of {_maxBytes} bytes");
            _current = chunk;
        }
        int n = Math.Min(buffer.Length, _current.Length);
        _current[..n].CopyTo(buffer);
        _current = _current[n..];
        return n;
    }

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    /// <inheritdoc />
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override bool CanRead => true;
    /// <inheritdoc />
    public override bool CanSeek => false;
    /// <inheritdoc />
    public override bool CanWrite => false;
    /// <inheritdoc />
    public override long Length => throw new NotSupportedException();
    /// <inheritdoc />
    public override long Position { get => _delivered; set => throw new NotSupportedException(); }
    /// <inheritdoc />
    public override void Flush() { }
    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    /// <inheritdoc />
    public override void SetLength(long value) => throw new NotSupportedException();
    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    /// <inheritdoc />
    public override async ValueTask DisposeAsync()
    {
        if (!_done)
            await _reader.AbandonNowAsync().ConfigureAwait(false);
        _done = true;
        await base.DisposeAsync().ConfigureAwait(false);
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing && !_done)
        {
            _done = true;
            _reader.AbandonNowAsync().AsTask().GetAwaiter().GetResult();
        }
        base.Dispose(disposing);
    }

    private sealed class Reader(uint id) : AgentStream(id)
    {
        private bool _dataEnded;

        public async Task<Protocol.Messages.FileInfo> StartAsync(CancellationToken cancellationToken)
        {
            var item = await NextAsync(cancellationToken).ConfigureAwait(false);
            if (item is not Response response)
                throw new AgentUnavailableException("the agent sent file data before the file's metadata");
            ThrowIfError(response);
            if (response.KindCase != Response.KindOneofCase.FileInfo)
                throw new AgentUnavailableException($"the agent answered file_read with {response.KindCase}");
            return response.FileInfo;
        }

        /// <summary>Next data chunk, or null at the end (after the final ok).</summary>
        public async Task<byte[]?> NextChunkAsync(CancellationToken cancellationToken)
        {
            while (true)
            {
                var item = await NextAsync(cancellationToken).ConfigureAwait(false);
                switch (item)
                {
                    case null:
                        if (!_dataEnded)
                            throw new AgentUnavailableException("the agent ended a file read early");
                        return null;
                    case StreamChunk chunk when chunk.Channel == FrameType.FileData:
                        if (_dataEnded)
                            throw new ProtocolViolation("the agent sent file data after the end of the file");
                        _dataEnded = chunk.IsFinal;
                        if (chunk.Data.Length > 0)
                            return chunk.Data;
                        break;
                    case StreamChunk:
                        throw new ProtocolViolation("the agent sent process output on a file stream");
                    case Response response:
                        ThrowIfError(response);
                        break;
                }
            }
        }

        public ValueTask AbandonNowAsync() => AbandonAsync();
    }
}
