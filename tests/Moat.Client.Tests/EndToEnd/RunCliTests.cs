using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// The `moat run` contract of BRIEF.md, as a user meets it: output on stdout and stderr as
/// produced, the command's exit code, 124 for the timeout, 137 for memory, 2 for a bad option or
/// an unavailable tier — embedded (no server) and remote (MOAT_URL), on every tier here.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class RunCliTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private readonly ITestOutputHelper _output = output;

    // One data directory for every embedded run of this class: the built-in template is imported once.
    private static readonly string EmbeddedData = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "moat-run-cli-" + Environment.ProcessId);

    public static TheoryData<string, string> Modes => new()
    {
        { "embedded", "container" }, { "embedded", "gvisor" }, { "embedded", "microvm" },
        { "remote", "container" }, { "remote", "gvisor" }, { "remote", "microvm" },
    };

    private async Task RequireTierAsync(string tier)
    {
        var caps = await Client.GetCapabilitiesAsync(Timeout);
        var status = caps.Tiers.Single(t => t.Name == tier);
        Skip.IfNot(status.Usable, $"tier {tier} is not usable on this host: {status.Reason}");
    }

    private Task<CliResult> RunAsync(string mode, string? stdin, params string[] args)
    {
        var env = new Dictionary<string, string>();
        if (mode == "remote")
        {
            env["MOAT_URL"] = Server.Url.AbsoluteUri;
            env["MOAT_API_KEY"] = Server.AdminKey;
        }
        else
        {
            env["MOAT_DATA"] = EmbeddedData;
            env["MOAT_ARTIFACTS"] = System.IO.Path.Combine(Repo.Root, "artifacts");
        }
        return MoatCli.RunAsync(env, stdin, TimeSpan.FromMinutes(3), _output.WriteLine, ["run", .. args]);
    }

    [SkippableTheory, MemberData(nameof(Modes))]
    public async Task Output_and_exit_code_pass_through(string mode, string tier)
    {
        await RequireTierAsync(tier);
        var hello = await RunAsync(mode, null, "--isolation", tier, "--", "python3", "-c", "print(42)");
        Assert.Equal(new CliResult(0, "42\n", ""), hello);
        var mixed = await RunAsync(mode, null, "--isolation", tier, "--", "sh", "-c", "echo out; echo err >&2; exit 3");
        Assert.Equal(new CliResult(3, "out\n", "err\n"), mixed);
        var options = await RunAsync(mode, null, "--isolation", tier, "--env", "A=1", "--env", "B=two words", "--workdir", "/tmp", "--user", "root", "--", "sh", "-c", "echo \"$A $B $(pwd) $(id -u)\"");
        Assert.Equal("1 two words /tmp 0\n", options.Stdout);
        var piped = await RunAsync(mode, "line one\nline two\n", "--isolation", tier, "--", "tr", "a-z", "A-Z");
        Assert.Equal("LINE ONE\nLINE TWO\n", piped.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Modes))]
    public async Task The_timeout_exits_124_and_says_why(string mode, string tier)
    {
        await RequireTierAsync(tier);
        var started = DateTime.UtcNow;
        var ran = await RunAsync(mode, null, "--isolation", tier, "--timeout", "2", "--", "sh", "-c", "echo begun; sleep 600");
        Assert.Equal(124, ran.Exit);
        Assert.Equal("begun\n", ran.Stdout);
        Assert.Contains("timeout", ran.Stderr);
        // The sleep was cut, not waited out (a slow microVM boot under TCG included).
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(300), $"took {DateTime.UtcNow - started}");
    }

    [SkippableTheory, MemberData(nameof(Modes))]
    public async Task The_memory_limit_exits_137_and_says_why(string mode, string tier)
    {
        await RequireTierAsync(tier);
        var ran = await RunAsync(mode, null, "--isolation", tier, "--memory", "96", "--", "python3", "-c", "x = []\nwhile True: x.append(bytearray(8 << 20))");
        if (tier == "gvisor" && ran.Exit == 1 && ran.Stderr.Contains("MemoryError"))
            return; // gVisor may refuse the allocation itself: stopped at the limit all the same.
        Assert.Equal(137, ran.Exit);
        Assert.Contains("memory limit", ran.Stderr);
    }

    [SkippableTheory]
    [InlineData("embedded")]
    [InlineData("remote")]
    public async Task Bad_options_exit_2_with_a_one_line_reason(string mode)
    {
        foreach (var args in new[]
        {
            new[] { "--isolation", "warp-drive", "--", "true" },
            ["--memory", "lots", "--", "true"],
            ["--timeout", "-1", "--", "true"],
            ["--env", "NOEQUALS", "--", "true"],
            ["--network", "sideways", "--", "true"],
            ["--no-such-option", "--", "true"],
            ["--template", "no-such-template", "--", "true"],
        })
        {
            var ran = await RunAsync(mode, null, args);
            Assert.True(ran.Exit == 2, $"{string.Join(' ', args)}: exit {ran.Exit} {ran.Stderr}");
            Assert.Equal("", ran.Stdout);
            Assert.Single(ran.Stderr.TrimEnd('\n').Split('\n'));
            Assert.StartsWith("moat: ", ran.Stderr);
        }
    }

    [SkippableTheory]
    [InlineData("embedded")]
    [InlineData("remote")]
    public async Task An_unavailable_tier_exits_2_with_the_reason(string mode)
    {
        var caps = await Client.GetCapabilitiesAsync(Timeout);
        var unusable = caps.Tiers.FirstOrDefault(t => !t.Usable);
        Skip.If(unusable is null, "every tier is usable on this host");
        var ran = await RunAsync(mode, null, "--isolation", unusable!.Name, "--", "true");
        Assert.Equal(2, ran.Exit);
        Assert.Contains(unusable.Name, ran.Stderr);
        Assert.Single(ran.Stderr.TrimEnd('\n').Split('\n'));
    }

    [SkippableTheory]
    [InlineData("embedded")]
    [InlineData("remote")]
    public async Task A_missing_program_exits_127(string mode)
    {
        var ran = await RunAsync(mode, null, "--isolation", "container", "--", "no-such-program-at-all");
        Assert.Equal(127, ran.Exit);
        Assert.Contains("no-such-program-at-all", ran.Stderr);
    }
}
