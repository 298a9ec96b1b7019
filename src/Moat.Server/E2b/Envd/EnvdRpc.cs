using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Server.E2b.Connect;

namespace Moat.Server.E2b.Envd;

/// <summary>Which sandbox a data-plane request is for, and as whom it acts inside.</summary>
/// <param name="Sandbox">The sandbox (authenticated: the caller holds its access token or its tenant's key).</param>
/// <param name="User">The user to act as inside (E2B sends it as Basic auth; default <c>user</c>).</param>
/// <param name="Port">The sandbox port the request was addressed to.</param>
internal sealed record SandboxTarget(SandboxRecord Sandbox, string User, int Port);

/// <summary>How envd's RPC handlers run: request in, response (or stream) out, errors in Connect's terms.</summary>
internal static partial class EnvdRpc
{
    public static async Task UnaryAsync<TRequest, TResponse>(HttpContext context, JsonTypeInfo<TRequest> requestType, JsonTypeInfo<TResponse> responseType, Func<TRequest, Task<TResponse>> handler)
        where TRequest : new()
    {
        try
        {
            var request = await ConnectRpc.ReadRequestAsync(context, requestType).ConfigureAwait(false);
            var response = await handler(request).ConfigureAwait(false);
            await ConnectRpc.WriteUnaryAsync(context, response, responseType).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
        }
        catch (Exception ex)
        {
            await ConnectRpc.WriteUnaryErrorAsync(context, Translate(context, ex)).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A server-streaming call: the handler writes messages; the stream always ends with one
    /// end-of-stream envelope (with the error, if any). The client's deadline ends it with
    /// deadline_exceeded; a client that went away gets nothing more.
    /// </summary>
    public static async Task StreamAsync<TRequest>(HttpContext context, JsonTypeInfo<TRequest> requestType, Func<TRequest, ConnectRpc.ServerStream, CancellationToken, Task> handler)
        where TRequest : new()
    {
        var stream = ConnectRpc.OpenStream(context);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        if (ConnectRpc.Timeout(context.Request) is { } timeout)
            deadline.CancelAfter(timeout);
        ConnectException? error = null;
        try
        {
            var request = await ConnectRpc.ReadRequestAsync(context, requestType).ConfigureAwait(false);
            await handler(request, stream, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            return;
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            error = new ConnectException(ConnectCode.DeadlineExceeded, "the call's deadline (Connect-Timeout-Ms) passed");
        }
        catch (Exception ex)
        {
            error = Translate(context, ex);
        }
        await stream.EndAsync(error).ConfigureAwait(false);
    }

    /// <summary>A client-streaming call: the handler reads the request envelopes; the answer is one empty message.</summary>
    public static async Task ClientStreamAsync(HttpContext context, Func<CancellationToken, Task> handler)
    {
        var stream = ConnectRpc.OpenStream(context);
        ConnectException? error = null;
        try
        {
            await handler(context.RequestAborted).ConfigureAwait(false);
            await stream.WriteAsync(new Empty(), E2bJson.Default.Empty, context.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            return;
        }
        catch (Exception ex)
        {
            error = Translate(context, ex);
        }
        await stream.EndAsync(error).ConfigureAwait(false);
    }

    public static Task UnimplementedAsync(HttpContext context, string service, string method)
    {
        var error = new ConnectException(ConnectCode.Unimplemented, $"{service}/{method} is not implemented by Moat");
        if (ConnectRpc.IsStreaming(context.Request))
            return ConnectRpc.OpenStream(context).EndAsync(error);
        return ConnectRpc.WriteUnaryErrorAsync(context, error);
    }

    /// <summary>Sends <paramref name="message"/> whenever the stream has been silent for the client's keepalive interval.</summary>
    public static IAsyncDisposable Keepalive<T>(HttpContext context, ConnectRpc.ServerStream stream, T message, JsonTypeInfo<T> type, CancellationToken cancellationToken)
    {
        var interval = ConnectRpc.KeepaliveInterval(context.Request);
        var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var loop = Task.Run(async () =>
        {
            var tick = TimeSpan.FromMilliseconds(Math.Min(1000, interval.TotalMilliseconds));
            try
            {
                while (true)
                {
                    await Task.Delay(tick, stop.Token).ConfigureAwait(false);
                    if (Environment.TickCount64 - stream.LastWriteTicks >= interval.TotalMilliseconds)
                        await stream.WriteAsync(message, type, stop.Token).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or ObjectDisposedException)
            {
            }
        }, CancellationToken.None);
        return new Stopper(stop, loop);
    }

    private sealed class Stopper(CancellationTokenSource stop, Task loop) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await stop.CancelAsync().ConfigureAwait(false);
            await loop.ConfigureAwait(false);
            stop.Dispose();
        }
    }

    /// <summary>Any failure as a Connect error; unexpected ones are logged and reported as internal.</summary>
    public static ConnectException Translate(HttpContext context, Exception ex)
    {
        switch (ex)
        {
            case ConnectException connect:
                return connect;
            case MoatException moat:
                return ConnectException.From(moat);
            case BadHttpRequestException bad:
                return new ConnectException(ConnectCode.InvalidArgument, bad.Message);
            case InvalidOperationException invalid when invalid.Message.Contains("stdin", StringComparison.Ordinal):
                return new ConnectException(ConnectCode.FailedPrecondition, invalid.Message);
            default:
                if (context.RequestServices.GetService<ILoggerFactory>()?.CreateLogger("Moat.Server.E2b") is { } logger)
                    LogUnexpected(logger, context.Request.Path, ex);
                return new ConnectException(ConnectCode.Internal, "an internal error occurred; the server log has details");
        }
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Unexpected error in envd call {Path}")]
    private static partial void LogUnexpected(ILogger logger, string path, Exception exception);
}
