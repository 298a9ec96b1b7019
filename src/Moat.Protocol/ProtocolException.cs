namespace Moat.Protocol;

/// <summary>The peer broke the protocol. The connection that saw it cannot be trusted any further.</summary>
public sealed class ProtocolException(string code, string message) : Exception(message)
{
    /// <summary>Stable snake_case reason, e.g. <c>frame_too_large</c>.</summary>
    public string Code { get; } = code;
}
