using System.Security.Claims;
using System.Text.Encodings.Web;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Moat.Server.Errors;

namespace Moat.Server.Auth;

/// <summary>Authenticates <c>Authorization: Bearer KEY</c> (or <c>X-API-Key: KEY</c>, as E2B's SDK sends).</summary>
public sealed class ApiKeyAuthenticationHandler(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder, ApiKeyService keys)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    /// <summary>The scheme name.</summary>
    public const string SchemeName = "ApiKey";

    /// <inheritdoc />
    protected override async Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        string? key = null;
        var authorization = Request.Headers.Authorization.ToString();
        if (authorization.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
            key = authorization["Bearer ".Length..].Trim();
        else if (Request.Headers.TryGetValue("X-API-Key", out var header))
            key = header.ToString().Trim();
        if (string.IsNullOrEmpty(key))
            return AuthenticateResult.NoResult();
        var caller = await keys.AuthenticateAsync(key, Context.RequestAborted).ConfigureAwait(false);
        if (caller is null)
            return AuthenticateResult.Fail("unknown or revoked API key");
        Context.Items[typeof(Caller)] = caller;
        var identity = new ClaimsIdentity([new Claim("tenant", caller.TenantId), new Claim(ClaimTypes.Role, caller.Role), new Claim("key", caller.KeyId)], SchemeName);
        return AuthenticateResult.Success(new AuthenticationTicket(new ClaimsPrincipal(identity), SchemeName));
    }

    /// <inheritdoc />
    protected override Task HandleChallengeAsync(AuthenticationProperties properties) =>
        ErrorWriter.WriteAsync(Context, StatusCodes.Status401Unauthorized, "unauthenticated",
            Request.Headers.Authorization.Count > 0 || Request.Headers.ContainsKey("X-API-Key")
                ? "the API key is unknown or revoked"
                : "an API key is required: send Authorization: Bearer <key>");

    /// <inheritdoc />
    protected override Task HandleForbiddenAsync(AuthenticationProperties properties) =>
        ErrorWriter.WriteAsync(Context, StatusCodes.Status403Forbidden, "forbidden", "this key's role does not allow this request");
}

/// <summary>The caller of the current request.</summary>
public static class CallerExtensions
{
    /// <summary>The authenticated caller (endpoints behind authorization always have one).</summary>
    public static Caller Caller(this HttpContext context) =>
        context.Items[typeof(Caller)] as Caller ?? throw new InvalidOperationException("no authenticated caller");

    /// <summary>The caller, checked for write access.</summary>
    public static Caller Writer(this HttpContext context)
    {
        var caller = context.Caller();
        if (!caller.CanWrite)
            throw new Core.Errors.MoatException(Core.Errors.ErrorKind.PermissionDenied, "read_only_key", "this API key is read-only");
        return caller;
    }
}
