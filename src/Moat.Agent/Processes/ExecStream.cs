using Moat.Agent.Session;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Processes;

/// <summary>
/// The stream of an exec or attach: output of its process flows out on it, stdin and control
/// flow in. Frame handling happens on the reader thread and is handed to the I/O loop.
/// </summary>
internal sealed class ExecStream(AgentSession session, uint id, ProcessSupervisor supervisor, bool stdinAllowed) : AgentStream(session, id)
{
    /// <summary>The process this stream is attached to (set before the loop learns of the stream).</summary>
    public ProcessEntry? Process { get; set; }

    public bool StdinAllowed { get; } = stdinAllowed;

    // Loop thread only: whether the Final of each channel went out on this stream.
    public bool StdoutFinal { get; set; }
    public bool StderrFinal { get; set; }

    public override void OnData(FrameType type, ReadOnlySpan<byte> payload, bool final)
    {
        if (type != FrameType.Stdin)
            throw new ProtocolException("unexpected_frame", $"{type} is not valid on a command stream");
        if (!StdinAllowed)
        {
            // A command started without stdin reads /dev/null. Input for it is dropped (its credit
            // returned) rather than failing the connection and every other stream with it.
            Session.GrantRecv(this, payload.Length, force: true);
            return;
        }
        byte[] data = payload.ToArray();
        supervisor.Loop.Post(() => supervisor.OnStdin(this, data, final));
    }

    public override void OnControl(StreamControl control)
        => supervisor.Loop.Post(() => supervisor.OnControl(this, control));

    public override void OnCancel() => supervisor.Loop.Post(() => supervisor.OnStreamGone(this));

    public override void OnSessionClosed() => supervisor.Loop.Post(() => supervisor.OnStreamGone(this));

    public override void OnCredit() => supervisor.Loop.Post(() => supervisor.OnCredit(this));
}
