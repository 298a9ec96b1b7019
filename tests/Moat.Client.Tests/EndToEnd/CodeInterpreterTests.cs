using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// The native code interpreter, <c>/v1/sandboxes/{id}/code</c>: stateful contexts (the same
/// kernels E2B's <c>/execute</c> on port 49999 drives), buffered and NDJSON-streamed runs, errors
/// with tracebacks, timeouts, and another tenant kept out.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class CodeInterpreterTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private Task<Sandbox> CreateInterpreterAsync() => CreateAsync(o =>
    {
        o.Template = "code-interpreter-v1";
        o.MemoryMiB = 512;
        o.DiskMiB = 512;
    });

    [SkippableFact]
    public async Task Code_keeps_state_in_the_default_context_and_returns_the_last_expression()
    {
        var sandbox = await CreateInterpreterAsync();
        using var http = Http(Server.AdminKey);
        var first = await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "x = 41\nprint('set x')\nx + 1" });
        Assert.Equal("set x\n", first.Stdout);
        Assert.Null(first.Error);
        var main = Assert.Single(first.Results, r => r.IsMainResult);
        Assert.Equal("42", main.Formats["text"].GetString());
        var second = await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "x * 2" });
        Assert.Equal("82", Assert.Single(second.Results).Formats["text"].GetString());
        Assert.True(second.ExecutionCount > first.ExecutionCount, $"execution count {first.ExecutionCount} then {second.ExecutionCount}");

        var failed = await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "def inner():\n    return 1 / 0\ninner()" });
        Assert.NotNull(failed.Error);
        Assert.Equal("ZeroDivisionError", failed.Error.Name);
        Assert.Equal("division by zero", failed.Error.Value);
        Assert.Contains("return 1 / 0", failed.Error.Traceback);
        // The context survives its exception.
        Assert.Equal("82", Assert.Single((await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "x * 2" })).Results).Formats["text"].GetString());
    }

    [SkippableFact]
    public async Task Contexts_are_separate_and_restart_clears_them_javascript_and_bash_included()
    {
        var sandbox = await CreateInterpreterAsync();
        using var http = Http(Server.AdminKey);
        var python = await CreateContextAsync(http, sandbox.Id, new CreateCodeContextRequest { Cwd = "/tmp" });
        Assert.Equal("python", python.Language);
        Assert.Equal("/tmp", python.Cwd);
        await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "y = 'mine'", ContextId = python.Id });
        // A string's text is the string itself, as E2B's interpreter gives it (not its repr).
        Assert.Equal("mine", Assert.Single((await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "y", ContextId = python.Id })).Results).Formats["text"].GetString());
        Assert.Equal("NameError", (await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "y" })).Error?.Name);

        var listed = await http.GetFromJsonAsync($"/v1/sandboxes/{sandbox.Id}/code/contexts", MoatJson.Default.CodeContextListResponse, Timeout);
        Assert.Contains(listed!.Contexts, c => c.Id == python.Id);
        using (var restart = await http.PostAsync($"/v1/sandboxes/{sandbox.Id}/code/contexts/{python.Id}/restart", null, Timeout))
            Assert.Equal(HttpStatusCode.NoContent, restart.StatusCode);
        Assert.Equal("NameError", (await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "y", ContextId = python.Id })).Error?.Name);
        using (var remove = await http.DeleteAsync($"/v1/sandboxes/{sandbox.Id}/code/contexts/{python.Id}", Timeout))
            Assert.Equal(HttpStatusCode.NoContent, remove.StatusCode);
        using (var gone = await http.PostAsync($"/v1/sandboxes/{sandbox.Id}/code", Body(new CodeRequestDto { Code = "1", ContextId = python.Id }), Timeout))
            Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);

        var js = await CreateContextAsync(http, sandbox.Id, new CreateCodeContextRequest { Language = "javascript" });
        await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "let n = 20", ContextId = js.Id });
        Assert.Equal("42", Assert.Single((await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "n * 2 + 2", ContextId = js.Id })).Results).Formats["text"].GetString());

        var bash = await CreateContextAsync(http, sandbox.Id, new CreateCodeContextRequest { Language = "bash" });
        await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "cd /etc && WHO=moat", ContextId = bash.Id });
        Assert.Equal("/etc\nmoat\n", (await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "pwd; echo $WHO", ContextId = bash.Id })).Stdout);

        using var bad = await http.PostAsync($"/v1/sandboxes/{sandbox.Id}/code/contexts", Body(new CreateCodeContextRequest { Language = "cobol" }), Timeout);
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
    }

    [SkippableFact]
    public async Task A_stream_delivers_output_as_it_is_printed_and_a_timeout_ends_the_run()
    {
        var sandbox = await CreateInterpreterAsync();
        using var http = Http(Server.AdminKey);
        using var request = new HttpRequestMessage(HttpMethod.Post, $"/v1/sandboxes/{sandbox.Id}/code")
        {
            Content = Body(new CodeRequestDto { Code = "import time\nprint('one', flush=True)\ntime.sleep(1)\nprint('two')\n'done'" }),
        };
        request.Headers.Accept.ParseAdd("application/x-ndjson");
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Timeout);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(Timeout), Encoding.UTF8);
        var events = new List<(DateTime At, CodeEventDto Event)>();
        while (await reader.ReadLineAsync(Timeout) is { } line)
            events.Add((DateTime.UtcNow, JsonSerializer.Deserialize(line, MoatJson.Default.CodeEventDto)!));
        var one = events.First(e => e.Event.Stdout?.Contains("one", StringComparison.Ordinal) == true);
        var two = events.First(e => e.Event.Stdout?.Contains("two", StringComparison.Ordinal) == true);
        Assert.True(two.At - one.At > TimeSpan.FromMilliseconds(500), "the first line arrived before the cell finished");
        Assert.Equal("done", events.Single(e => e.Event.Result is not null).Event.Result!.Formats["text"].GetString());
        Assert.NotNull(events[^1].Event.End);

        var slow = await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "import time\ntime.sleep(60)", TimeoutSeconds = 1 });
        Assert.True(slow.TimedOut, "a run past its timeout says so");
        // The default context still answers afterwards.
        Assert.Equal("2", Assert.Single((await RunAsync(http, sandbox.Id, new CodeRequestDto { Code = "1 + 1" })).Results).Formats["text"].GetString());
    }

    [SkippableFact]
    public async Task Another_tenant_cannot_run_code_or_see_contexts()
    {
        var sandbox = await CreateInterpreterAsync();
        var keys = (Moat.Server.Auth.ApiKeyService)Server.Services.GetService(typeof(Moat.Server.Auth.ApiKeyService))!;
        var (_, otherKey) = await keys.CreateAsync("tenant-code-other", "admin", "other tenant", cancellationToken: Timeout);
        using var other = Http(otherKey);
        using (var run = await other.PostAsync($"/v1/sandboxes/{sandbox.Id}/code", Body(new CodeRequestDto { Code = "1" }), Timeout))
            Assert.Equal(HttpStatusCode.NotFound, run.StatusCode);
        using (var list = await other.GetAsync($"/v1/sandboxes/{sandbox.Id}/code/contexts", Timeout))
            Assert.Equal(HttpStatusCode.NotFound, list.StatusCode);
        using (var create = await other.PostAsync($"/v1/sandboxes/{sandbox.Id}/code/contexts", Body(new CreateCodeContextRequest()), Timeout))
            Assert.Equal(HttpStatusCode.NotFound, create.StatusCode);
    }

    private HttpClient Http(string key)
    {
        var http = new HttpClient { BaseAddress = Server.Url, Timeout = TimeSpan.FromMinutes(2) };
        http.DefaultRequestHeaders.Authorization = new("Bearer", key);
        return http;
    }

    private static StringContent Body(CodeRequestDto body) => new(JsonSerializer.Serialize(body, MoatJson.Default.CodeRequestDto), Encoding.UTF8, "application/json");

    private static StringContent Body(CreateCodeContextRequest body) => new(JsonSerializer.Serialize(body, MoatJson.Default.CreateCodeContextRequest), Encoding.UTF8, "application/json");

    private async Task<CodeResultDto> RunAsync(HttpClient http, string id, CodeRequestDto request)
    {
        using var response = await http.PostAsync($"/v1/sandboxes/{id}/code", Body(request), Timeout);
        var text = await response.Content.ReadAsStringAsync(Timeout);
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"POST /code answered {(int)response.StatusCode}: {text}");
        return JsonSerializer.Deserialize(text, MoatJson.Default.CodeResultDto)!;
    }

    private async Task<CodeContextDto> CreateContextAsync(HttpClient http, string id, CreateCodeContextRequest request)
    {
        using var response = await http.PostAsync($"/v1/sandboxes/{id}/code/contexts", Body(request), Timeout);
        var text = await response.Content.ReadAsStringAsync(Timeout);
        Assert.True(response.StatusCode == HttpStatusCode.Created, $"POST /code/contexts answered {(int)response.StatusCode}: {text}");
        return JsonSerializer.Deserialize(text, MoatJson.Default.CodeContextDto)!;
    }
}
