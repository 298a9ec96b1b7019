namespace Moat.Client.Http;

/// <summary>
/// Splits a byte stream into newline-delimited lines as bytes arrive. Lines are returned as raw
/// bytes, so a multi-byte UTF-8 character split across reads is whole by the time it is decoded.
/// </summary>
internal sealed class NdjsonLineReader(Stream stream, int maxLineBytes = NdjsonLineReader.DefaultMaxLineBytes)
{
    /// <summary>Longest line accepted; a server never sends one near this (output chunks are small).</summary>
    public const int DefaultMaxLineBytes = 16 << 20;

    private byte[] _buffer = new byte[16 * 1024];
    private int _start;
    private int _end;
    private int _scanned;
    private bool _eof;

    /// <summary>
    /// The next non-empty line without its terminator, or null at the end of the stream. The
    /// memory is valid only until the next call.
    /// </summary>
    public async ValueTask<ReadOnlyMemory<byte>?> ReadLineAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            int newline = _buffer.AsSpan(_scanned, _end - _scanned).IndexOf((byte)'\n');
            if (newline >= 0)
            {
                int end = _scanned + newline;
                var line = _buffer.AsMemory(_start, end - _start);
                _start = _scanned = end + 1;
                if (line.Length > 0 && line.Span[^1] == (byte)'\r')
                    line = line[..^1];
                if (line.Length == 0)
                    continue;
                return line;
            }
            _scanned = _end;
            if (_eof)
            {
                if (_start == _end)
                    return null;
                // A last line without a newline still counts.
                var rest = _buffer.AsMemory(_start, _end - _start);
                _start = _scanned = _end;
                return rest;
            }
            if (_end - _start >= maxLineBytes)
                throw new MoatStreamException("stream_line_too_long", $"the server sent a stream line over {maxLineBytes} bytes");
            Compact();
            int n = await stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
            if (n == 0)
                _eof = true;
            else
                _end += n;
        }
    }

    private void Compact()
    {
        if (_start > 0)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _scanned -= _start;
            _start = 0;
        }
        if (_end == _buffer.Length)
            Array.Resize(ref _buffer, Math.Min(_buffer.Length * 2, maxLineBytes + 1));
    }
}
