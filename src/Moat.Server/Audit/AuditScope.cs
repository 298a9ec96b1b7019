using Moat.Server.Auth;

namespace Moat.Server.Audit;

/// <summary>
/// The API request a piece of work belongs to, carried with the async flow: it lets a command or
/// file record name the key that caused it, and the request's record name the sandbox it created.
/// Holds only plain values (never the HttpContext, which is recycled after the request).
/// </summary>
internal sealed class AuditScope
{
    private static readonly AsyncLocal<AuditScope?> CurrentScope = new();

    /// <summary>The scope of the running request, if any.</summary>
    public static AuditScope? Current => CurrentScope.Value;

    /// <summary>Starts a scope for the current async flow.</summary>
    public static AuditScope Begin() => CurrentScope.Value = new AuditScope();

    /// <summary>The authenticated caller, once known.</summary>
    public Caller? Caller { get; set; }

    /// <summary>A sandbox the request created.</summary>
    public string? CreatedSandboxId { get; set; }
}
