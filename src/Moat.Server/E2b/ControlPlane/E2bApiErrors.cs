using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Moat.Core.Errors;
using Moat.Server.Auth;
using Moat.Server.Errors;

namespace Moat.Server.E2b.ControlPlane;

/// <summary>
/// The one error shape of E2B's control plane: <c>{"code": STATUS, "message": "..."}</c> with the
/// same status. Kept apart from the native API's shape: E2B's SDKs read <c>code</c> as a number.
/// </summary>
internal static class E2bApiErrors
{
    public static IResult Result(int status, string message) =>
        Results.Json(new ApiError(status, message), E2bJson.Default.ApiError, statusCode: status);

    public static async Task WriteAsync(HttpContext context, int status, string message)
    {
        if (context.Response.HasStarted)
            return;
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json; charset=utf-8";
        await JsonSerializer.SerializeAsync(context.Response.Body, new ApiError(status, message), E2bJson.Default.ApiError, context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>
    /// The filter every control-plane route runs behind: the caller must have presented a valid API
    /// key (<c>X-API-Key</c>, as E2B's SDKs send it), and Moat's errors leave in E2B's shape.
    /// </summary>
    public static async ValueTask<object?> FilterAsync(EndpointFilterInvocationContext invocation, EndpointFilterDelegate next)
    {
        var context = invocation.HttpContext;
        if (context.Items[typeof(Caller)] is not Caller)
        {
            return Result(StatusCodes.Status401Unauthorized, context.Request.Headers.ContainsKey("X-API-Key") || context.Request.Headers.Authorization.Count > 0
                ? "the API key is unknown or revoked"
                : "an API key is required: send X-API-Key (E2B_API_KEY); Moat mints keys in E2B's e2b_ form");
        }
        try
        {
            return await next(invocation).ConfigureAwait(false);
        }
        catch (MoatException ex)
        {
            return Result(ErrorWriter.StatusOf(ex.Kind), ex.Message);
        }
        catch (BadHttpRequestException ex)
        {
            return Result(ex.StatusCode, ex.Message);
        }
    }
}
