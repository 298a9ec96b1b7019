using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>The remote verbs of the <c>moat</c> CLI, run as a process against the test server.</summary>
[Collection(ServerCollection.Name)]
public sealed class CliTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private readonly ITestOutputHelper _output = output;

    [SkippableFact]
    public async Task Sandbox_verbs_create_list_get_extend_and_kill()
    {
        var created = await MoatAsync("sandbox", "create", "--isolation", "container", "--memory", "256", "--disk", "256", "--timeout", "300", "--env", "GREETING=hi", "--metadata", "suite=cli");
        Assert.Equal(0, created.Exit);
        var id = created.Stdout.Trim();
        Assert.Matches("^sb[a-z0-9]{18}$", id);
        try
        {
            var table = await MoatAsync("sandbox", "ls");
            Assert.Equal(0, table.Exit);
            var row = table.Stdout.Split('\n').Single(l => l.Contains(id, StringComparison.Ordinal));
            Assert.Contains("running", row);
            Assert.Contains("container", row);
            Assert.Contains("base", row);
            Assert.Contains("in ", row);

            var json = await MoatAsync("sandbox", "ls", "--state", "running", "--json");
            var list = JsonSerializer.Deserialize(json.Stdout, MoatJson.Default.SandboxListResponse)!;
            Assert.Contains(list.Sandboxes, s => s.Id == id && s.Metadata["suite"] == "cli");

            var get = await MoatAsync("sandbox", "get", id, "--json");
            var info = JsonSerializer.Deserialize(get.Stdout, MoatJson.Default.SandboxDto)!;
            Assert.Equal("running", info.State);
            Assert.Equal(["GREETING"], info.EnvKeys);
            var human = await MoatAsync("sandbox", "get", id);
            Assert.Contains("memory", human.Stdout);

            var extended = await MoatAsync("sandbox", "timeout", id, "3600");
            Assert.Equal(0, extended.Exit);
            Assert.Contains("expires at", extended.Stdout);
            var after = await Client.GetSandboxAsync(id, Timeout);
            Assert.True(after.ExpiresAt > DateTimeOffset.UtcNow.AddMinutes(55));
        }
        finally
        {
            var kill = await MoatAsync("sandbox", "kill", id);
            Assert.Equal(0, kill.Exit);
        }
        Assert.Equal("stopped", (await Client.GetSandboxAsync(id, Timeout)).State);
        var dead = await MoatAsync("exec", id, "--", "true");
        Assert.Equal(1, dead.Exit);
        Assert.Matches(@"^moat: .+ \(sandbox_not_running\)\n$", dead.Stderr);
    }

    [SkippableFact]
    public async Task Exec_streams_output_passes_stdin_and_the_exit_code_through()
    {
        var sandbox = await CreateAsync();

        var mixed = await MoatAsync("exec", sandbox.Id, "--", "sh", "-c", "echo out; echo err >&2; exit 3");
        var stdin = await MoatWithStdinAsync("hello from the cli\n", "exec", sandbox.Id, "--", "python3", "-c", "import sys; print(sys.stdin.read().upper(), end='')");
        var options = await MoatAsync("exec", sandbox.Id, "--cwd", "/tmp", "--env", "A=1", "--user", "root", "--", "sh", "-c", "echo $A $(pwd) $(id -u)");
        var timedOut = await MoatAsync("exec", sandbox.Id, "--timeout", "1", "--", "sleep", "30");

        Assert.Equal((3, "out\n", "err\n"), (mixed.Exit, mixed.Stdout, mixed.Stderr));
        Assert.Equal((0, "HELLO FROM THE CLI\n"), (stdin.Exit, stdin.Stdout));
        Assert.Equal("1 /tmp 0\n", options.Stdout);
        Assert.Equal(124, timedOut.Exit);
        Assert.Matches(@"^moat: the command was killed by its timeout.*\n$", timedOut.Stderr);
    }

    [SkippableFact]
    public async Task Files_verbs_move_bytes_in_and_out_exactly()
    {
        var sandbox = await CreateAsync();
        var data = RandomNumberGenerator.GetBytes(300_000);
        var local = Path.Combine(Path.GetTempPath(), "moat-cli-" + Guid.NewGuid().ToString("N"));
        await File.WriteAllBytesAsync(local, data);
        try
        {
            Assert.Equal(0, (await MoatAsync("files", "write", sandbox.Id, "/home/user/in/blob.bin", local)).Exit);
            Assert.Equal(0, (await MoatWithStdinAsync("piped text\n", "files", "write", sandbox.Id, "/home/user/in/note.txt", "--mode", "0600")).Exit);
            Assert.Equal(0, (await MoatAsync("files", "read", sandbox.Id, "/home/user/in/blob.bin", "-o", local + ".out")).Exit);
            Assert.Equal(data, await File.ReadAllBytesAsync(local + ".out"));
            var note = await MoatAsync("files", "read", sandbox.Id, "/home/user/in/note.txt");
            Assert.Equal("piped text\n", note.Stdout);

            Assert.Equal(0, (await MoatAsync("files", "mkdir", sandbox.Id, "/home/user/in/sub/dir")).Exit);
            var table = await MoatAsync("files", "ls", sandbox.Id, "/home/user/in");
            Assert.Contains(table.Stdout.Split('\n'), l => l.Contains("blob.bin") && l.Contains("300000") && l.Contains("file"));
            Assert.Contains(table.Stdout.Split('\n'), l => l.Contains("note.txt") && l.Contains("0600"));
            var json = await MoatAsync("files", "ls", sandbox.Id, "/home/user/in", "--depth", "3", "--json");
            var entries = JsonSerializer.Deserialize(json.Stdout, MoatJson.Default.FileListResponse)!.Entries;
            Assert.Contains(entries, e => e.Path == "/home/user/in/sub/dir" && e.Type == "dir");

            Assert.Equal(0, (await MoatAsync("files", "rm", sandbox.Id, "/home/user/in/sub")).Exit);
            Assert.False(await sandbox.Files.ExistsAsync("/home/user/in/sub", Timeout));
            var missing = await MoatAsync("files", "read", sandbox.Id, "/home/user/in/sub/dir");
            Assert.Equal(1, missing.Exit);
            Assert.EndsWith("(not_found)\n", missing.Stderr);
        }
        finally
        {
            File.Delete(local);
            File.Delete(local + ".out");
        }
    }

    [SkippableFact]
    public async Task Template_and_key_verbs()
    {
        var templates = await MoatAsync("template", "ls");
        Assert.Equal(0, templates.Exit);
        Assert.Contains(templates.Stdout.Split('\n'), l => l.TrimStart().StartsWith("base", StringComparison.Ordinal));

        var created = await MoatAsync("key", "create", "--name", "cli-test", "--role", "member");
        Assert.Equal(0, created.Exit);
        var key = created.Stdout.Trim();
        Assert.Matches("^moat_[0-9a-f]{52}$", key);
        var keyId = key["moat_".Length..][..12];

        var list = await MoatAsync("key", "ls");
        Assert.Contains(list.Stdout.Split('\n'), l => l.Contains(keyId) && l.Contains("cli-test") && l.Contains("member"));
        // The connection options belong to the verbs, not to `moat` itself.
        var misplaced = await MoatAsync("--api-key", key, "template", "ls");
        Assert.Equal(2, misplaced.Exit);
        Assert.Contains("--api-key", misplaced.Stderr);
        var memberList = await MoatAsync("template", "ls", "--api-key", key);
        Assert.Equal(0, memberList.Exit);

        Assert.Equal(0, (await MoatAsync("key", "revoke", keyId)).Exit);
        var revoked = await MoatAsync("template", "ls", "--api-key", key);
        Assert.Equal(1, revoked.Exit);
        Assert.EndsWith("(unauthenticated)\n", revoked.Stderr);
    }

    [SkippableFact]
    public async Task Errors_are_one_line_with_exit_1_for_the_api_and_2_for_usage()
    {
        var unknown = await MoatAsync("sandbox", "get", "sb00000000000000000x");
        var badPair = await MoatAsync("sandbox", "create", "--env", "NOEQUALS");
        var badNumber = await MoatAsync("sandbox", "create", "--memory", "lots");
        var badUrl = await MoatAsync("sandbox", "ls", "--url", "ftp://nowhere");
        var unreachable = await MoatAsync("sandbox", "ls", "--url", "http://127.0.0.1:1");
        var badRequest = await MoatAsync("sandbox", "create", "--isolation", "warp-drive");

        Assert.Equal((1, "moat: sandbox 'sb00000000000000000x' does not exist (sandbox_not_found)\n"), (unknown.Exit, unknown.Stderr));
        Assert.Equal((2, "moat: --env takes K=V, got 'NOEQUALS'\n"), (badPair.Exit, badPair.Stderr));
        Assert.Equal(2, badNumber.Exit);
        Assert.StartsWith("moat: ", badNumber.Stderr);
        Assert.Equal(2, badUrl.Exit);
        Assert.Equal(1, unreachable.Exit);
        Assert.Contains("cannot reach the Moat server at http://127.0.0.1:1/", unreachable.Stderr);
        Assert.Equal(1, badRequest.Exit);
        Assert.EndsWith("(invalid_isolation)\n", badRequest.Stderr);
        foreach (var r in new[] { unknown, badPair, badNumber, badUrl, unreachable, badRequest })
        {
            Assert.Equal("", r.Stdout);
            Assert.Single(r.Stderr.TrimEnd('\n').Split('\n'));
        }
    }

    [SkippableFact]
    public async Task Snapshot_verbs_create_fork_list_and_delete()
    {
        var source = await CreateAsync();
        await source.Files.WriteAsync("/home/user/notes.txt", "kept\n", Timeout);
        var name = "cli-snap-" + Guid.NewGuid().ToString("N")[..8];
        var created = await MoatAsync("snapshot", "create", source.Id, name);
        Assert.Equal(0, created.Exit);
        Assert.StartsWith(name + "\t", created.Stdout);

        var table = await MoatAsync("snapshot", "ls");
        Assert.Contains(table.Stdout.Split('\n'), l => l.Contains(name, StringComparison.Ordinal) && l.Contains(source.Id, StringComparison.Ordinal));
        var restored = await MoatAsync("sandbox", "create", "--template", name, "--isolation", "container", "--timeout", "120");
        Assert.Equal(0, restored.Exit);
        var restoredId = restored.Stdout.Trim();
        Assert.Equal("kept\n", (await MoatAsync("exec", restoredId, "--", "cat", "/home/user/notes.txt")).Stdout);
        Assert.Equal(1, (await MoatAsync("snapshot", "rm", name)).Exit); // in use
        Assert.Equal(0, (await MoatAsync("sandbox", "kill", restoredId)).Exit);
        Assert.Equal(0, (await MoatAsync("snapshot", "rm", name)).Exit);

        var forked = await MoatAsync("snapshot", "fork", source.Id, "--count", "2");
        Assert.Equal(0, forked.Exit);
        var ids = forked.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, ids.Length);
        foreach (var id in ids)
        {
            Assert.Equal("kept\n", (await MoatAsync("exec", id, "--", "cat", "/home/user/notes.txt")).Stdout);
            Assert.Equal(0, (await MoatAsync("sandbox", "kill", id)).Exit);
        }
        var bad = await MoatAsync("snapshot", "fork", source.Id, "--count", "0");
        Assert.Equal(2, bad.Exit);
    }

    private Task<(int Exit, string Stdout, string Stderr)> MoatAsync(params string[] args) => RunCliAsync(null, args);

    private Task<(int Exit, string Stdout, string Stderr)> MoatWithStdinAsync(string stdin, params string[] args) => RunCliAsync(stdin, args);

    private async Task<(int Exit, string Stdout, string Stderr)> RunCliAsync(string? stdin, string[] args)
    {
        var env = new Dictionary<string, string> { ["MOAT_URL"] = Server.Url.AbsoluteUri, ["MOAT_API_KEY"] = Server.AdminKey };
        var result = await MoatCli.RunAsync(env, stdin, TimeSpan.FromMinutes(2), _output.WriteLine, args);
        return (result.Exit, result.Stdout, result.Stderr);
    }
}
