using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Session;

/// <summary>
/// One open stream of a session: opened by a host Request, ended by exactly one Final Response
/// (or abandoned by the host's Cancel). Subclasses take the frames the host may send on it.
/// </summary>
internal abstract class AgentStream(AgentSession session, uint id)
{
    public AgentSession Session { get; } = session;

    public uint Id { get; } = id;

    /// <summary>Credit the host granted for data we send on this stream (guarded by <see cref="AgentSession.Gate"/>).</summary>
    internal long SendCredit;

    /// <summary>Data bytes the host may still send on this stream (guarded by <see cref="AgentSession.Gate"/>).</summary>
    internal long RecvAvailable;

    /// <summary>Consumed data not yet granted back (guarded by <see cref="AgentSession.Gate"/>).</summary>
    internal long RecvPendingGrant;

    private int _ended;

    /// <summary>No more frames may be sent: the Final Response went out, or the host cancelled.</summary>
    public bool Ended => Volatile.Read(ref _ended) != 0;

    /// <summary>Marks the stream ended; true for the caller that did it first.</summary>
    internal bool TryEnd() => Interlocked.Exchange(ref _ended, 1) == 0;

    /// <summary>Stdin or FileData for this stream (payload valid only during the call).</summary>
    public virtual void OnData(FrameType type, ReadOnlySpan<byte> payload, bool final)
        => throw new ProtocolException("unexpected_frame", $"{type} is not valid on a {GetType().Name}");

    public virtual void OnControl(StreamControl control)
        => throw new ProtocolException("unexpected_frame", $"Control is not valid on a {GetType().Name}");

    /// <summary>The host abandoned the stream (it is already ended).</summary>
    public virtual void OnCancel() { }

    /// <summary>The host granted credit on this stream or the connection.</summary>
    public virtual void OnCredit() { }

    /// <summary>The connection went away (the stream is already ended).</summary>
    public virtual void OnSessionClosed() { }
}
