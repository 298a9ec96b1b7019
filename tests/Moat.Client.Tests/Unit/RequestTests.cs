using System.Net;
using System.Text;
using System.Text.Json;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;

namespace Moat.Client.Tests.Unit;

/// <summary>What the SDK puts on the wire: routes, query strings, bodies, headers.</summary>
public sealed class RequestTests
{
    private static readonly HttpResponseMessage Ok = new(HttpStatusCode.OK);

    [Fact]
    public async Task List_builds_state_metadata_and_limit_query()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.OK, """{"sandboxes":[]}"""));
        using var client = StubHandler.Client(handler);

        await client.ListSandboxesAsync("running,stopped", new Dictionary<string, string> { ["team"] = "a b&c", ["k=1"] = "ü/?" }, limit: 5);

        var query = handler.Single().Uri.Query;
        Assert.Equal("?state=running%2Cstopped&metadata.team=a%20b%26c&metadata.k%3D1=%C3%BC%2F%3F&limit=5", query);
    }

    [Fact]
    public async Task List_without_filters_sends_no_query()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.OK, $$"""{"sandboxes":[{{StubHandler.SandboxJson}}]}"""));
        using var client = StubHandler.Client(handler);

        var list = await client.ListSandboxesAsync();

        Assert.Equal("/v1/sandboxes", handler.Single().PathAndQuery);
        Assert.Equal(StubHandler.SandboxId, Assert.Single(list).Id);
    }

    [Fact]
    public async Task Every_request_carries_the_bearer_key()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.OK, """{"templates":[]}"""));
        using var client = StubHandler.Client(handler);

        await client.ListTemplatesAsync();

        Assert.Equal("Bearer moat_test", handler.Single().Authorization);
    }

    [Fact]
    public async Task Base_url_path_prefix_is_kept()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.OK, """{"templates":[]}"""));
        using var client = StubHandler.Client(handler, "https://gateway.test/moat");

        await client.ListTemplatesAsync();

        Assert.Equal("https://gateway.test/moat/v1/templates", handler.Single().Uri.AbsoluteUri);
    }

    [Fact]
    public async Task Create_sends_resources_timeout_env_and_metadata()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.Created, StubHandler.SandboxJson));
        using var client = StubHandler.Client(handler);

        await using var sandbox = await client.CreateSandboxAsync(new SandboxCreateOptions
        {
            Template = "base",
            Isolation = "container",
            MemoryMiB = 512,
            Cpus = 1.5,
            DiskMiB = 1024,
            Timeout = TimeSpan.FromMinutes(5),
            Env = { ["A"] = "1" },
            Metadata = { ["owner"] = "me" },
        });

        var request = handler.Requests.First();
        Assert.Equal(HttpMethod.Post, request.Method);
        Assert.Equal("/v1/sandboxes", request.Uri.AbsolutePath);
        Assert.StartsWith("application/json", request.ContentType);
        var body = JsonSerializer.Deserialize(request.Body, MoatJson.Default.CreateSandboxRequest)!;
        Assert.Equal("base", body.Template);
        Assert.Equal("container", body.Isolation);
        Assert.Equal(512, body.Resources!.MemoryMiB);
        Assert.Equal(1.5, body.Resources.Cpus);
        Assert.Equal(1024, body.Resources.DiskMiB);
        Assert.Null(body.Resources.Pids);
        Assert.Equal(300, body.TimeoutSeconds);
        Assert.Equal("1", body.Env!["A"]);
        Assert.Equal("me", body.Metadata!["owner"]);
        Assert.Equal(StubHandler.SandboxId, sandbox.Id);
        Assert.Equal("running", sandbox.Info.State);
    }

    [Fact]
    public async Task Create_with_no_options_sends_an_empty_object()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.Created, StubHandler.SandboxJson));
        using var client = StubHandler.Client(handler);

        var sandbox = await client.CreateSandboxAsync();
        sandbox.KillOnDispose = false;

        Assert.Equal("{}", handler.Requests.First().BodyText);
    }

    [Fact]
    public async Task Buffered_run_sends_shell_or_argv_with_options()
    {
        var handler = StubHandler.WithSandbox(_ => StubHandler.Json(HttpStatusCode.OK, """{"exitCode":1,"stdout":"o","stderr":"e","stdoutTruncated":true,"durationMs":250,"timedOut":true}"""));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        var shell = await sandbox.Commands.RunAsync("echo hi");
        var argv = await sandbox.Commands.RunAsync(["python3", "-c", "print(1)"], new CommandOptions
        {
            Cwd = "/tmp",
            User = "root",
            Env = { ["X"] = "y" },
            StdinBytes = new byte[] { 0, 1, 255 },
            Timeout = TimeSpan.FromSeconds(2.5),
        });

        var calls = handler.Calls;
        var first = JsonSerializer.Deserialize(calls[0].Body, MoatJson.Default.ExecRequestDto)!;
        Assert.Equal("echo hi", first.Shell);
        Assert.Null(first.Cmd);
        Assert.DoesNotContain("ndjson", calls[0].Accept ?? "");
        var second = JsonSerializer.Deserialize(calls[1].Body, MoatJson.Default.ExecRequestDto)!;
        Assert.Equal(["python3", "-c", "print(1)"], second.Cmd);
        Assert.Equal("/tmp", second.Cwd);
        Assert.Equal("root", second.User);
        Assert.Equal("y", second.Env!["X"]);
        Assert.Equal("AAH/", second.StdinBase64);
        Assert.Equal(2.5, second.TimeoutSeconds);
        Assert.Equal(1, shell.ExitCode);
        Assert.Equal("o", shell.Stdout);
        Assert.Equal("e", shell.Stderr);
        Assert.True(shell.StdoutTruncated);
        Assert.True(shell.TimedOut);
        Assert.Equal(TimeSpan.FromMilliseconds(250), argv.Duration);
    }

    [Fact]
    public async Task Non_zero_exit_throws_when_asked()
    {
        var handler = StubHandler.WithSandbox(_ => StubHandler.Json(HttpStatusCode.OK, """{"exitCode":2,"stderr":"no such file"}"""));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        Assert.Equal(2, (await sandbox.Commands.RunAsync("false")).ExitCode);
        var ex = await Assert.ThrowsAsync<CommandExitException>(() => sandbox.Commands.RunAsync("false", new CommandOptions { ThrowOnNonZero = true }));
        Assert.Equal(2, ex.ExitCode);
        Assert.Contains("no such file", ex.Message);
    }

    [Fact]
    public async Task Bad_command_arguments_fail_before_any_request()
    {
        var handler = StubHandler.WithSandbox(_ => Ok);
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        Assert.Throws<ArgumentException>(() => { _ = sandbox.Commands.RunAsync(Array.Empty<string>()); });
        Assert.Throws<ArgumentException>(() => { _ = sandbox.Commands.RunAsync("x", new CommandOptions { Stdin = "a", StdinBytes = new byte[] { 1 } }); });
        Assert.Empty(handler.Calls);
    }

    [Fact]
    public async Task File_operations_escape_paths_and_pass_the_user()
    {
        var handler = StubHandler.WithSandbox(r => r.RequestUri!.AbsolutePath.EndsWith("/list")
            ? StubHandler.Json(HttpStatusCode.OK, """{"entries":[{"name":"a b?.txt","path":"/home/user/a b?.txt","type":"file","size":3,"mode":"0644","mtime":"2025-01-01T00:00:00Z"}],"truncated":false}""")
            : r.Method == HttpMethod.Delete || r.RequestUri!.AbsolutePath.EndsWith("/rename")
                ? new HttpResponseMessage(HttpStatusCode.NoContent)
                : StubHandler.Json(HttpStatusCode.OK, """{"name":"x","path":"/x","type":"dir","mode":"0755"}"""));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        var root = sandbox.Files.AsUser("root");

        var list = await sandbox.Files.ListAsync("/home/user/a b?.txt", depth: 2);
        await root.RemoveAsync("/tmp/x&y");
        await root.MakeDirAsync("/opt/new dir");
        await sandbox.Files.RenameAsync("/a", "/b c");
        await sandbox.Files.StatAsync("/etc/hosts");

        var calls = handler.Calls.Select(c => $"{c.Method} {c.PathAndQuery}").ToList();
        Assert.Equal(
            [
                "GET /v1/sandboxes/sb0123456789abcdefgh/files/list?path=%2Fhome%2Fuser%2Fa%20b%3F.txt&depth=2",
                "DELETE /v1/sandboxes/sb0123456789abcdefgh/files?path=%2Ftmp%2Fx%26y&user=root",
                "POST /v1/sandboxes/sb0123456789abcdefgh/files/mkdir?path=%2Fopt%2Fnew%20dir&user=root",
                "POST /v1/sandboxes/sb0123456789abcdefgh/files/rename?from=%2Fa&to=%2Fb%20c",
                "GET /v1/sandboxes/sb0123456789abcdefgh/files/stat?path=%2Fetc%2Fhosts",
            ],
            calls);
        Assert.Equal("a b?.txt", Assert.Single(list).Name);
    }

    [Fact]
    public async Task Write_sends_raw_bytes_with_mode_and_streams_leave_the_callers_stream_open()
    {
        var handler = StubHandler.WithSandbox(_ => StubHandler.Json(HttpStatusCode.OK, """{"name":"f","path":"/f","type":"file","size":3,"mode":"0600"}"""));
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);
        var data = new byte[] { 1, 2, 3, 250 };
        using var source = new MemoryStream(data);
        source.Position = 1;

        await sandbox.Files.WriteAsync("/f", "héllo");
        await sandbox.Files.WriteAsync("/f", data, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        await sandbox.Files.WriteAsync("/f", source);

        var calls = handler.Calls;
        Assert.All(calls, c => Assert.Equal(HttpMethod.Put, c.Method));
        Assert.Equal("héllo", calls[0].BodyText);
        Assert.Equal("?path=%2Ff", calls[0].Uri.Query);
        Assert.Equal(data, calls[1].Body);
        Assert.Equal("?path=%2Ff&mode=0600", calls[1].Uri.Query);
        Assert.Equal(data[1..], calls[2].Body);
        Assert.Equal(3, calls[2].ContentLength);
        Assert.Equal("application/octet-stream", calls[2].ContentType);
        Assert.True(source.CanRead, "the caller's stream stays open");
    }

    [Fact]
    public async Task Read_returns_the_bytes_and_exists_distinguishes_a_missing_file_from_a_missing_sandbox()
    {
        var bytes = Enumerable.Range(0, 256).Select(i => (byte)i).ToArray();
        var handler = StubHandler.WithSandbox(r =>
        {
            var path = Uri.UnescapeDataString(r.RequestUri!.Query);
            if (path.Contains("/missing"))
                return StubHandler.Error(HttpStatusCode.NotFound, "not_found", "no such file");
            if (path.Contains("/gone"))
                return StubHandler.Error(HttpStatusCode.NotFound, "sandbox_not_found", "no such sandbox");
            if (r.RequestUri.AbsolutePath.EndsWith("/stat"))
                return StubHandler.Json(HttpStatusCode.OK, """{"name":"f","path":"/f","type":"file","mode":"0644"}""");
            return new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent(bytes) };
        });
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        Assert.Equal(bytes, await sandbox.Files.ReadBytesAsync("/f"));
        await using (var stream = await sandbox.Files.OpenReadAsync("/f"))
        {
            var buffer = new MemoryStream();
            await stream.CopyToAsync(buffer);
            Assert.Equal(bytes, buffer.ToArray());
        }
        Assert.True(await sandbox.Files.ExistsAsync("/f"));
        Assert.False(await sandbox.Files.ExistsAsync("/missing"));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => sandbox.Files.ExistsAsync("/gone"));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => sandbox.Files.ReadTextAsync("/missing"));
    }

    [Fact]
    public async Task Timeout_and_keys_and_run_use_their_routes()
    {
        var handler = StubHandler.WithSandbox(r => r.RequestUri!.AbsolutePath switch
        {
            "/v1/run" => StubHandler.Json(HttpStatusCode.OK, """{"sandboxId":"sbx","exitCode":0,"stdout":"1\n"}"""),
            "/v1/keys" when r.Method == HttpMethod.Post => StubHandler.Json(HttpStatusCode.Created, """{"id":"k1","prefix":"moat_k1","role":"member","tenantId":"default","key":"moat_secret"}"""),
            "/v1/keys" => StubHandler.Json(HttpStatusCode.OK, """[{"id":"k1","prefix":"moat_k1","role":"member","tenantId":"default"}]"""),
            var p when p.StartsWith("/v1/keys/") => new HttpResponseMessage(HttpStatusCode.NoContent),
            _ => StubHandler.Json(HttpStatusCode.OK, StubHandler.SandboxJson),
        });
        using var client = StubHandler.Client(handler);
        var sandbox = await client.ConnectAsync(StubHandler.SandboxId);

        await sandbox.SetTimeoutAsync(TimeSpan.FromSeconds(599.2));
        var run = await client.RunAsync(new RunRequest { Language = "python", Code = "print(1)" });
        var key = await client.CreateKeyAsync("ci", "member");
        var keys = await client.ListKeysAsync();
        await client.RevokeKeyAsync("k1");

        var calls = handler.Calls;
        Assert.Equal("/v1/sandboxes/sb0123456789abcdefgh/timeout", calls[0].Uri.AbsolutePath);
        Assert.Equal("""{"timeoutSeconds":600}""", calls[0].BodyText);
        Assert.Equal("""{"language":"python","code":"print(1)"}""", calls[1].BodyText);
        Assert.Equal("1\n", run.Stdout);
        Assert.Equal("""{"name":"ci","role":"member"}""", calls[2].BodyText);
        Assert.Equal("moat_secret", key.Key);
        Assert.Equal("k1", Assert.Single(keys).Id);
        Assert.Equal("DELETE /v1/keys/k1", $"{calls[4].Method} {calls[4].PathAndQuery}");
    }

    [Fact]
    public async Task Control_requests_give_up_after_the_request_timeout()
    {
        var handler = new StubHandler(async (_, ct) =>
        {
            await Task.Delay(Timeout.Infinite, ct);
            throw new InvalidOperationException("unreachable");
        });
        using var client = StubHandler.Client(handler, requestTimeout: TimeSpan.FromMilliseconds(100));

        var ex = await Assert.ThrowsAsync<TimeoutException>(() => client.ListSandboxesAsync());
        Assert.Contains("GET /v1/sandboxes", ex.Message);
    }

    [Fact]
    public async Task Caller_cancellation_is_cancellation_not_timeout()
    {
        var handler = new StubHandler(async (_, ct) =>
        {
            await Task.Delay(Timeout.Infinite, ct);
            throw new InvalidOperationException("unreachable");
        });
        using var client = StubHandler.Client(handler);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(50));

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.GetCapabilitiesAsync(cts.Token));
    }

    [Fact]
    public async Task Health_check_is_false_when_the_server_is_unreachable()
    {
        var handler = new StubHandler((_, _) => throw new HttpRequestException("connection refused"));
        using var client = StubHandler.Client(handler);

        Assert.False(await client.IsHealthyAsync());
    }

    [Fact]
    public void Options_from_environment_validate_the_url()
    {
        Assert.Throws<ArgumentException>(() => MoatClientOptions.ParseUrl("ftp://x"));
        Assert.Throws<ArgumentException>(() => MoatClientOptions.ParseUrl("not a url"));
        Assert.Equal(new Uri("http://h:1/"), MoatClientOptions.ParseUrl(" http://h:1/ "));
    }

    [Fact]
    public void Sandbox_timeout_must_be_a_positive_number_of_seconds()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new SandboxCreateOptions { Timeout = TimeSpan.FromMilliseconds(10) }.ToRequest());
        Assert.Equal(2, new SandboxCreateOptions { Timeout = TimeSpan.FromSeconds(1.2) }.ToRequest().TimeoutSeconds);
        Assert.Null(new SandboxCreateOptions().ToRequest().Resources);
        _ = Encoding.UTF8;
    }

    [Fact]
    public async Task A_given_HttpClient_is_used_with_its_base_address_and_left_undisposed()
    {
        var handler = new StubHandler(_ => StubHandler.Json(HttpStatusCode.OK, """{"templates":[]}"""));
        using var http = new HttpClient(handler) { BaseAddress = new Uri("http://factory.test:9000/") };

        using (var client = new MoatClient(http, new MoatClientOptions { ApiKey = "moat_k" }))
            await client.ListTemplatesAsync();
        using (var explicitUrl = new MoatClient(http, new MoatClientOptions { BaseUrl = new Uri("http://other.test/"), ApiKey = "moat_k" }))
            await explicitUrl.ListTemplatesAsync();
        await http.GetAsync("/still-usable");

        var uris = handler.Requests.Select(r => r.Uri.AbsoluteUri).ToList();
        Assert.Equal(["http://factory.test:9000/v1/templates", "http://other.test/v1/templates", "http://factory.test:9000/still-usable"], uris);
        Assert.Equal("Bearer moat_k", handler.Requests.First().Authorization);
    }
}
