using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Moat.Contracts;
using Moat.Core.Errors;

namespace Moat.Server.Errors;

/// <summary>The one error shape of the native API: <c>{"error":{"code","message"}}</c> with a fitting status.</summary>
public static partial class ErrorWriter
{
    /// <summary>The HTTP status for an error kind.</summary>
    public static int StatusOf(ErrorKind kind) => kind switch
    {
        ErrorKind.InvalidArgument => StatusCodes.Status400BadRequest,
        ErrorKind.Unauthenticated => StatusCodes.Status401Unauthorized,
        ErrorKind.PermissionDenied => StatusCodes.Status403Forbidden,
        ErrorKind.NotFound => StatusCodes.Status404NotFound,
        ErrorKind.Conflict => StatusCodes.Status409Conflict,
        ErrorKind.TooLarge => StatusCodes.Status413PayloadTooLarge,
        ErrorKind.QuotaExceeded => StatusCodes.Status422UnprocessableEntity,
        ErrorKind.RateLimited => StatusCodes.Status429TooManyRequests,
        ErrorKind.Unavailable => StatusCodes.Status503ServiceUnavailable,
        ErrorKind.Timeout => StatusCodes.Status504GatewayTimeout,
        _ => StatusCodes.Status500InternalServerError,
    };

    private static readonly object ErrorCodeItem = new();

    /// <summary>The error code this request was answered with, if any (for metrics and the audit trail).</summary>
    public static string? CodeOf(HttpContext context) => context.Items.TryGetValue(ErrorCodeItem, out var code) ? code as string : null;

    /// <summary>Writes an error response (if the response has not started).</summary>
    public static async Task WriteAsync(HttpContext context, int status, string code, string message)
    {
        if (context.Response.HasStarted)
            return;
        context.Items[ErrorCodeItem] = code;
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json; charset=utf-8";
        await JsonSerializer.SerializeAsync(context.Response.Body, new ErrorResponse(new ErrorBody(code, message)), MoatJson.Default.ErrorResponse, context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>Middleware turning every exception into the error shape.</summary>
    public static async Task HandleAsync(HttpContext context, Func<Task> next)
    {
        try
        {
            await next().ConfigureAwait(false);
        }
        catch (MoatException ex)
        {
            if (ex.RetryAfterSeconds is { } retry && !context.Response.HasStarted)
                context.Response.Headers.RetryAfter = retry.ToString();
            await WriteAsync(context, StatusOf(ex.Kind), ex.Code, ex.Message).ConfigureAwait(false);
        }
        catch (BadHttpRequestException ex)
        {
            var code = ex.StatusCode == StatusCodes.Status413PayloadTooLarge ? "body_too_large" : "bad_request";
            await WriteAsync(context, ex.StatusCode, code, ex.Message).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The client went away; nobody to answer.
        }
        catch (Exception ex)
        {
            var logger = context.RequestServices.GetService(typeof(ILogger<MoatServer>)) as ILogger;
            if (logger is not null)
                LogUnhandled(logger, context.Request.Method, context.Request.Path, ex);
            await WriteAsync(context, StatusCodes.Status500InternalServerError, "internal", "an internal error occurred; the server log has details").ConfigureAwait(false);
        }
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Unhandled error in {Method} {Path}")]
    private static partial void LogUnhandled(ILogger logger, string method, string path, Exception exception);
}
