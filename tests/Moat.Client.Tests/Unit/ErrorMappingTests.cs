using System.Net;
using Moat.Client.Tests.Infrastructure;

namespace Moat.Client.Tests.Unit;

/// <summary>Every error status becomes a typed exception carrying the server's code and message.</summary>
public sealed class ErrorMappingTests
{
    [Theory]
    [InlineData(400, typeof(MoatValidationException), "invalid_memory")]
    [InlineData(401, typeof(MoatAuthenticationException), "unauthenticated")]
    [InlineData(403, typeof(MoatPermissionDeniedException), "read_only_key")]
    [InlineData(404, typeof(MoatNotFoundException), "sandbox_not_found")]
    [InlineData(409, typeof(MoatConflictException), "sandbox_not_running")]
    [InlineData(413, typeof(MoatPayloadTooLargeException), "file_too_large")]
    [InlineData(422, typeof(MoatQuotaExceededException), "timeout_over_limit")]
    [InlineData(429, typeof(MoatRateLimitedException), "too_many_operations")]
    [InlineData(503, typeof(MoatUnavailableException), "tier_unavailable")]
    [InlineData(504, typeof(MoatServerTimeoutException), "sandbox_start_timeout")]
    [InlineData(500, typeof(MoatApiException), "internal")]
    public async Task Status_maps_to_its_exception_type_with_code_and_message(int status, Type expected, string code)
    {
        var handler = new StubHandler(_ => StubHandler.Error((HttpStatusCode)status, code, "what went wrong"));
        using var client = StubHandler.Client(handler);

        var ex = await Assert.ThrowsAnyAsync<MoatApiException>(() => client.GetSandboxAsync(StubHandler.SandboxId));

        Assert.IsType(expected, ex);
        Assert.Equal(status, ex.StatusCode);
        Assert.Equal(code, ex.Code);
        Assert.Equal("what went wrong", ex.Message);
    }

    [Fact]
    public async Task Auth_errors_share_a_base_type()
    {
        var handler = new StubHandler(r => StubHandler.Error(r.RequestUri!.AbsolutePath.Contains("keys") ? HttpStatusCode.Forbidden : HttpStatusCode.Unauthorized, "x", "no"));
        using var client = StubHandler.Client(handler);

        await Assert.ThrowsAnyAsync<MoatAuthException>(() => client.ListKeysAsync());
        await Assert.ThrowsAnyAsync<MoatAuthException>(() => client.ListTemplatesAsync());
    }

    [Fact]
    public async Task Rate_limit_carries_retry_after_seconds()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.TooManyRequests, """{"error":{"code":"too_many_operations","message":"slow down"}}""", ("Retry-After", "7")));
        using var client = StubHandler.Client(handler);

        var ex = await Assert.ThrowsAsync<MoatRateLimitedException>(() => client.ListSandboxesAsync());

        Assert.Equal(TimeSpan.FromSeconds(7), ex.RetryAfter);
    }

    [Fact]
    public async Task Rate_limit_without_retry_after_has_none()
    {
        var handler = new StubHandler(_ => StubHandler.Error(HttpStatusCode.TooManyRequests, "too_many_operations", "slow down"));
        using var client = StubHandler.Client(handler);

        var ex = await Assert.ThrowsAsync<MoatRateLimitedException>(() => client.ListSandboxesAsync());

        Assert.Null(ex.RetryAfter);
    }

    [Fact]
    public async Task Non_json_error_body_still_gives_a_useful_exception()
    {
        var handler = new StubHandler(_ => new HttpResponseMessage(HttpStatusCode.BadGateway)
        {
            ReasonPhrase = "Bad Gateway",
            Content = new StringContent("<html>\n  <body>upstream   connect error</body>\n</html>", System.Text.Encoding.UTF8, "text/html"),
        });
        using var client = StubHandler.Client(handler);

        var ex = await Assert.ThrowsAsync<MoatApiException>(() => client.GetCapabilitiesAsync());

        Assert.Equal(502, ex.StatusCode);
        Assert.Equal("http_502", ex.Code);
        Assert.Contains("502 Bad Gateway", ex.Message);
        Assert.Contains("upstream connect error", ex.Message);
        Assert.DoesNotContain("\n", ex.Message);
    }

    [Fact]
    public async Task Empty_error_body_maps_by_status()
    {
        var handler = new StubHandler(_ => new HttpResponseMessage(HttpStatusCode.NotFound) { Content = new ByteArrayContent([]) });
        using var client = StubHandler.Client(handler);

        var ex = await Assert.ThrowsAsync<MoatNotFoundException>(() => client.GetSandboxAsync(StubHandler.SandboxId));

        Assert.Equal("http_404", ex.Code);
        Assert.Contains("404", ex.Message);
    }

    [Fact]
    public async Task Json_error_of_another_shape_falls_back_to_the_status()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.BadRequest, """{"title":"One or more validation errors occurred.","status":400}"""));
        using var client = StubHandler.Client(handler);

        var ex = await Assert.ThrowsAsync<MoatValidationException>(() => client.GetCapabilitiesAsync());

        Assert.Equal("http_400", ex.Code);
        Assert.Contains("validation errors", ex.Message);
    }

    [Fact]
    public async Task Huge_error_body_is_cut_short_in_the_message()
    {
        var handler = new StubHandler(_ => new HttpResponseMessage(HttpStatusCode.InternalServerError) { Content = new StringContent(new string('x', 1_000_000)) });
        using var client = StubHandler.Client(handler);

        var ex = await Assert.ThrowsAsync<MoatApiException>(() => client.GetCapabilitiesAsync());

        Assert.True(ex.Message.Length < 400, ex.Message.Length.ToString());
    }

    [Fact]
    public async Task Malformed_success_body_is_reported_as_an_invalid_response()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.OK, "{not json"));
        using var client = StubHandler.Client(handler);

        var ex = await Assert.ThrowsAsync<MoatApiException>(() => client.GetCapabilitiesAsync());

        Assert.Equal("invalid_response", ex.Code);
    }

    [Fact]
    public async Task Error_answer_to_a_stream_request_throws_before_any_event()
    {
        var handler = StubHandler.WithSandbox(_ => StubHandler.Error(HttpStatusCode.Conflict, "sandbox_not_running", "sandbox sb is stopped (timeout)"));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        var ex = await Assert.ThrowsAsync<MoatConflictException>(async () =>
        {
            await foreach (var _ in sandbox.Commands.StreamAsync("true"))
                Assert.Fail("no event expected");
        });
        Assert.Equal("sandbox_not_running", ex.Code);
    }
}
