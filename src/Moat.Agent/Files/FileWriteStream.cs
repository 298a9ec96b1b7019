using Moat.Agent.Session;
using Moat.Protocol;

namespace Moat.Agent.Files;

/// <summary>
/// The stream of a file_write: the reader thread queues the host's FileData chunks, the worker
/// writing the file takes them. The queue is bounded by the credit the agent granted (a host
/// that sends more is cut off for overrunning its window).
/// </summary>
internal sealed class FileWriteStream(AgentSession session, uint id) : AgentStream(session, id)
{
    private readonly Queue<(byte[] Data, bool Final)> _chunks = new();
    private bool _gone;
    private bool _finalSeen;
    private bool _abandoned;

    public int QueuedCount
    {
        get { lock (_chunks) return _chunks.Count; }
    }

    public override void OnData(FrameType type, ReadOnlySpan<byte> payload, bool final)
    {
        if (type != FrameType.FileData)
            throw new ProtocolException("unexpected_frame", $"{type} is not valid on a file_write stream");
        lock (_chunks)
        {
            if (_finalSeen)
                throw new ProtocolException("unexpected_frame", "FileData after the Final FileData");
            _finalSeen = final;
            if (!_abandoned)
            {
                _chunks.Enqueue((payload.ToArray(), final));
                Monitor.Pulse(_chunks);
                return;
            }
        }
        Session.GrantRecv(this, payload.Length, force: true);
    }

    public override void OnCancel() => Gone();

    public override void OnSessionClosed() => Gone();

    private void Gone()
    {
        lock (_chunks)
        {
            _gone = true;
            Monitor.PulseAll(_chunks);
        }
    }

    /// <summary>The next chunk; false when the host cancelled or the connection went away.</summary>
    public bool Take(out byte[] data, out bool final)
    {
        lock (_chunks)
        {
            while (_chunks.Count == 0 && !_gone)
                Monitor.Wait(_chunks);
            if (_gone || !_chunks.TryDequeue(out var chunk))
            {
                data = [];
                final = false;
                return false;
            }
            data = chunk.Data;
            final = chunk.Final;
            return true;
        }
    }

    /// <summary>The write is over (done or failed): queued and later chunks only return their credit.</summary>
    public void Abandon()
    {
        long dropped = 0;
        lock (_chunks)
        {
            _abandoned = true;
            while (_chunks.TryDequeue(out var chunk))
                dropped += chunk.Data.Length;
        }
        if (dropped > 0)
            Session.GrantRecv(this, dropped, force: true);
    }
}
