using System.Net;
using System.Text.RegularExpressions;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>How the server serves the dashboard's files: types, caching, CSP, and no overlap with the API.</summary>
[Collection(ServerCollection.Name)]
public sealed partial class DashboardServingTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [SkippableFact]
    public async Task The_page_and_its_files_are_served_with_types_a_strict_csp_and_etags()
    {
        using var http = TenancyKit.Http(Server, null);
        var index = await http.GetAsync("/", Timeout);
        Assert.Equal(HttpStatusCode.OK, index.StatusCode);
        Assert.Equal("text/html", index.Content.Headers.ContentType?.MediaType);
        var csp = index.Headers.GetValues("Content-Security-Policy").Single();
        Assert.Contains("script-src 'self'", csp, StringComparison.Ordinal);
        Assert.Contains("default-src 'none'", csp, StringComparison.Ordinal);
        Assert.DoesNotContain("unsafe-inline", csp, StringComparison.Ordinal);
        Assert.Equal("nosniff", index.Headers.GetValues("X-Content-Type-Options").Single());
        var html = await index.Content.ReadAsStringAsync(Timeout);
        // No inline script: every <script> has a src on this origin.
        foreach (Match m in ScriptTag().Matches(html))
            Assert.Matches("src=\"/dashboard/[a-z]+\\.js\"", m.Value);
        Assert.DoesNotMatch("(?i)\\son[a-z]+=", html);

        foreach (var (file, type) in new[] { ("app.js", "text/javascript"), ("sandbox.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml") })
        {
            var response = await http.GetAsync($"/dashboard/{file}", Timeout);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal(type, response.Content.Headers.ContentType?.MediaType);
            var etag = response.Headers.ETag!;
            using var again = new HttpRequestMessage(HttpMethod.Get, $"/dashboard/{file}");
            again.Headers.IfNoneMatch.Add(etag);
            Assert.Equal(HttpStatusCode.NotModified, (await http.SendAsync(again, Timeout)).StatusCode);
        }
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/dashboard/secrets.json", Timeout)).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/dashboard/..%2FMoat.Server.dll", Timeout)).StatusCode);
    }

    [SkippableFact]
    public async Task Serving_the_dashboard_leaves_the_api_as_it_was()
    {
        using var anonymous = TenancyKit.Http(Server, null);
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/v1/sandboxes", Timeout)).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/e2b/sandboxes", Timeout)).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await anonymous.GetAsync("/no-such-page", Timeout)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/healthz", Timeout)).StatusCode);
        // Writing to the page's address is not a route.
        Assert.NotEqual(HttpStatusCode.OK, (await anonymous.PostAsync("/", new StringContent(""), Timeout)).StatusCode);
    }

    [GeneratedRegex("<script[^>]*>", RegexOptions.IgnoreCase)]
    private static partial Regex ScriptTag();
}
