using Moat.Core.Sandboxes;

namespace Moat.Tests.Network;

public sealed class EgressSmokeTests(NetworkFixture fixture) : NetworkTestBase(fixture), IClassFixture<NetworkFixture>
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Smoke(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, Allow("allowed.test"));
        var ran = await PythonAsync(sb.Id, """
            out("resolve", resolve("allowed.test"))
            out("http", http("allowed.test"))
            out("https", https("allowed.test"))
            out("other", http("other.test"))
            """);
        var log = await LogAsync(sb.Id);
        string direct;
        try
        {
            var r = await Fixture.Controller.Resolver!.ResolveAsync("allowed.test", false, CancellationToken.None);
            direct = string.Join(",", r.Addresses) + " " + r.Failure;
            var dns = typeof(Moat.Networking.NetworkController).GetField("_dns", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!.GetValue(Fixture.Controller)!;
            var m = dns.GetType().GetMethod("AnswerAsync", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!;
            var q = Moat.Networking.Dns.DnsMessage.BuildQuery(1234, "allowed.test", 1);
            var t = (Task<byte[]?>)m.Invoke(dns, [Fixture.Controller.AddressOf(sb.Id)!, q, 512])!;
            var done = await Task.WhenAny(t, Task.Delay(5000));
            direct += done == t ? " answer=" + (t.IsFaulted ? t.Exception!.ToString() : Convert.ToHexString(t.Result ?? [])) : " answer timed out";
        }
        catch (Exception ex)
        {
            direct = ex.ToString();
        }
        ran = ran with { Stdout = ran.Stdout + "\nDIRECT " + direct };
        Assert.Fail(ran.Stdout + "\n" + ran.Stderr + "\n" + string.Join("\n", log.Select(e => System.Text.Json.JsonSerializer.Serialize(e))));
    }
}
