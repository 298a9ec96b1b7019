using System.Text.Json;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary><c>moat sandbox network get|set|log</c> and <c>moat sandbox port</c>, run as a process against the test server.</summary>
[Collection(ServerCollection.Name)]
public sealed class NetworkCliTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private readonly ITestOutputHelper _output = output;

    [SkippableFact]
    public async Task Network_and_port_verbs_show_change_and_log_the_policy()
    {
        Sandbox sandbox;
        try
        {
            sandbox = await CreateAsync(o => o.Network = new NetworkDto { Mode = "allow", Allow = ["example.test"] });
        }
        catch (MoatApiException ex) when (ex.Code == "network_unavailable")
        {
            throw new SkipException("sandbox networking is not available on this host: " + ex.Message);
        }
        var id = sandbox.Id;

        var get = await MoatAsync("sandbox", "network", "get", id);
        Assert.True(get.Exit == 0, get.Stderr);
        Assert.Contains("mode     allow", get.Stdout);
        Assert.Contains("allow    example.test", get.Stdout);
        Assert.Matches(@"address  \d+\.\d+\.\d+\.\d+", get.Stdout);

        var set = await MoatAsync("sandbox", "network", "set", id, "allow:example.test, db.example.test:5432", "--json");
        Assert.True(set.Exit == 0, set.Stderr);
        using (var doc = JsonDocument.Parse(set.Stdout))
            Assert.Equal(["example.test", "db.example.test:5432"], doc.RootElement.GetProperty("allow").EnumerateArray().Select(e => e.GetString()!));
        Assert.Equal(["example.test", "db.example.test:5432"], (await Client.GetSandboxAsync(id, Timeout)).Network.Allow);

        // A connection the policy refuses (the proxy resets it; nothing is dialled), then the log.
        var probe = await MoatAsync("exec", id, "--", "python3", "-c",
            "import socket\ntry:\n socket.create_connection(('203.0.113.7', 7), 5).recv(1)\nexcept OSError as e:\n print('refused', e.errno)");
        Assert.StartsWith("refused", probe.Stdout);
        (int Exit, string Stdout, string Stderr) log = default;
        for (int i = 0; i < 50 && !(log.Stdout?.Contains("203.0.113.7", StringComparison.Ordinal) ?? false); i++)
        {
            if (i > 0)
                await Task.Delay(200);
            log = await MoatAsync("sandbox", "network", "log", id);
        }
        Assert.True(log.Exit == 0, log.Stderr);
        var row = (log.Stdout ?? "").Split('\n').Single(l => l.Contains("203.0.113.7", StringComparison.Ordinal));
        Assert.Contains("denied", row);
        Assert.Contains("not_allowed", row);
        Assert.Contains("tcp", row);
        var logJson = await MoatAsync("sandbox", "network", "log", id, "--json", "--limit", "10000");
        using (var doc = JsonDocument.Parse(logJson.Stdout))
            Assert.Contains(doc.RootElement.GetProperty("events").EnumerateArray(), e => e.GetProperty("address").GetString() == "203.0.113.7" && e.GetProperty("port").GetInt32() == 7 && e.GetProperty("verdict").GetString() == "denied");

        // Ports: the URL on stdout, the token on stderr while the port is private.
        var port = await MoatAsync("sandbox", "port", id, "8000");
        Assert.True(port.Exit == 0, port.Stderr);
        Assert.Equal($"{Server.Url.AbsoluteUri.TrimEnd('/')}/v1/sandboxes/{id}/ports/8000/", port.Stdout.Trim());
        Assert.Contains("X-Moat-Access-Token", port.Stderr);
        var opened = await MoatAsync("sandbox", "port", id, "8000", "--public", "--json");
        Assert.True(opened.Exit == 0, opened.Stderr);
        using (var doc = JsonDocument.Parse(opened.Stdout))
            Assert.True(doc.RootElement.GetProperty("public").GetBoolean());
        var publicPort = await MoatAsync("sandbox", "port", id, "8000");
        Assert.Equal("", publicPort.Stderr);

        // Mistakes: usage is exit 2, what the server refuses exit 1, each one line.
        var usage = await MoatAsync("sandbox", "network", "set", id, "sometimes");
        Assert.Equal(2, usage.Exit);
        Assert.Matches(@"^moat: a policy is none, open or allow:.*\n$", usage.Stderr);
        var refused = await MoatAsync("sandbox", "network", "set", id, "allow:169.254.169.254");
        Assert.Equal(1, refused.Exit);
        Assert.Matches(@"^moat: .+ \(network_rule_denied\)\n$", refused.Stderr);
        var missing = await MoatAsync("sandbox", "network", "log", "sb000000000000000000");
        Assert.Equal(1, missing.Exit);
        Assert.Matches(@"^moat: .+ \(sandbox_not_found\)\n$", missing.Stderr);
        var badPort = await MoatAsync("sandbox", "port", id, "70000");
        Assert.Equal(2, badPort.Exit);
    }

    private async Task<(int Exit, string Stdout, string Stderr)> MoatAsync(params string[] args)
    {
        var env = new Dictionary<string, string> { ["MOAT_URL"] = Server.Url.AbsoluteUri, ["MOAT_API_KEY"] = Server.AdminKey };
        var result = await MoatCli.RunAsync(env, null, TimeSpan.FromMinutes(2), _output.WriteLine, args);
        return (result.Exit, result.Stdout, result.Stderr);
    }
}
