using System.Net;
using System.Text.Json;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>
/// The web dashboard in a real headless Chromium against the real server: sign-in, the pages,
/// the buttons (checked through the API, not through what the page says), and hostile sandbox
/// data shown as text. MOAT_SCREENSHOTS=1 saves a screenshot per page into docs/img.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class DashboardTests(ServerFixture server, DashboardFixture dashboard, ITestOutputHelper output) : EndToEndTest(server, output), IClassFixture<DashboardFixture>
{
    private readonly ITestOutputHelper _output = output;

    // Would set a global if it ever ran as markup; the page must show it as text.
    private const string Xss = "<img src=x onerror=window.__xss=1>";

    private async Task<BrowserPage> OpenAsync()
    {
        Skip.If(dashboard.Unavailable is not null, dashboard.Unavailable);
        var page = await dashboard.Browser!.NewPageAsync(Timeout);
        await page.NavigateAsync(Server.Url, Timeout);
        return page;
    }

    private async Task SignInAsync(BrowserPage page, string key)
    {
        await page.WaitForAsync("document.querySelector('#signin-key')", Timeout);
        await page.TypeAsync("#signin-key", key, Timeout);
        await page.ClickAsync("#signin-submit", Timeout);
    }

    private async Task<BrowserPage> SignedInAsync(string key, string hash)
    {
        var page = await OpenAsync();
        await SignInAsync(page, key);
        await page.WaitForAsync("!document.querySelector('#nav').hidden", Timeout);
        await page.EvaluateAsync($"location.hash = {JsonSerializer.Serialize(hash)}", Timeout);
        return page;
    }

    private static async Task AssertNoScriptRanAsync(BrowserPage page, CancellationToken cancellationToken)
    {
        Assert.Equal(JsonValueKind.Undefined, (await page.EvaluateAsync("window.__xss", cancellationToken)).ValueKind);
        Assert.Equal(0, (await page.EvaluateAsync("document.querySelectorAll('img').length", cancellationToken)).GetInt32());
        Assert.DoesNotContain(page.Problems, p => p.StartsWith("dialog", StringComparison.Ordinal));
    }

    [SkippableFact]
    public async Task A_bad_key_is_refused_with_an_error_and_a_good_key_lists_the_tenants_sandboxes()
    {
        var (_, key) = await TenancyKit.NewTenantAsync(Server, "dash", cancellationToken: Timeout);
        using var client = Server.Client(key);
        await using var sandbox = await TenancyKit.SandboxAsync(client, Timeout, o => o.Metadata = new Dictionary<string, string> { ["owner"] = "dashboard" });
        // Another tenant's sandbox (the admin's) must not be listed.
        var foreign = await CreateAsync();
        var page = await OpenAsync();

        await SignInAsync(page, "moat_not_a_real_key_000000000000");
        await page.WaitForAsync("document.querySelector('#signin-error')", Timeout);
        Assert.Contains("not accepted", await page.TextAsync("#signin-error", Timeout), StringComparison.Ordinal);
        Assert.Equal(JsonValueKind.Null, (await page.EvaluateAsync("sessionStorage.getItem('moat.apiKey')", Timeout)).ValueKind);
        await DashboardFixture.ShootAsync(page, "signin", Timeout);

        await SignInAsync(page, key);
        await page.WaitForAsync($"document.querySelector('a[data-id=\"{sandbox.Id}\"]')", Timeout);
        var row = await page.EvaluateAsync($"[...document.querySelector('a[data-id=\"{sandbox.Id}\"]').closest('tr').cells].map(c => c.textContent)", Timeout);
        var cells = row.EnumerateArray().Select(c => c.GetString()).ToList();
        Assert.Equal(["running", "container", "base"], cells.Skip(1).Take(3));
        Assert.Equal(0, (await page.EvaluateAsync($"document.querySelectorAll('a[data-id=\"{foreign.Id}\"]').length", Timeout)).GetInt32());
        // Sparklines are drawn (with data once the metrics endpoint exists, "no data" before).
        await page.WaitForAsync("document.querySelectorAll('canvas.spark[data-drawn]').length >= 2", Timeout);
        await DashboardFixture.ShootAsync(page, "sandboxes", Timeout);

        await page.ClickAsync("#signout", Timeout);
        await page.WaitForAsync("document.querySelector('#signin-key')", Timeout);
        Assert.Equal(JsonValueKind.Null, (await page.EvaluateAsync("sessionStorage.getItem('moat.apiKey')", Timeout)).ValueKind);
        await page.CloseAsync();
    }

    [SkippableFact]
    public async Task The_sandbox_page_shows_output_logs_files_and_hostile_names_as_text()
    {
        // An allowlist, so that a name lookup the policy refuses lands in the egress log.
        var sandbox = await CreateAsync(o => o.Network = new Moat.Contracts.NetworkDto { Mode = "allow", Allow = ["allowed.example"] });
        await sandbox.Files.WriteAsync($"/home/user/{Xss}.txt", "hostile name", Timeout);
        await sandbox.Files.WriteAsync("/home/user/hello.txt", "hello from the sandbox\n", Timeout);
        var run = await sandbox.Commands.RunAsync(["sh", "-c", $"echo dashboard-output; printf '%s\\n' '{Xss}'; nslookup denied-by-policy.example >/dev/null 2>&1; true"], cancellationToken: Timeout);
        Assert.Equal(0, run.ExitCode);
        using var http = TenancyKit.Http(Server, Server.AdminKey);
        bool hasLogs = (await http.GetAsync($"v1/sandboxes/{sandbox.Id}/logs", Timeout)).StatusCode != HttpStatusCode.NotFound;
        var downloads = Directory.CreateTempSubdirectory("moat-dash-dl-").FullName;
        try
        {
            var page = await SignedInAsync(Server.AdminKey, $"#/sandboxes/{sandbox.Id}");
            await page.WaitForAsync("document.querySelector('#sandbox-state')?.textContent === 'running'", Timeout);

            // Files: the hostile name is a text node, the download fetches the bytes with the key.
            await page.WaitForAsync($"[...document.querySelectorAll('#files-list .file-name')].some(e => e.textContent === {JsonSerializer.Serialize(Xss + ".txt")})", Timeout);
            await dashboard.Browser!.AllowDownloadsAsync(downloads, Timeout);
            await page.ClickAsync("button.file-download[data-path='/home/user/hello.txt']", Timeout);
            var saved = Path.Combine(downloads, "hello.txt");
            for (int i = 0; i < 100 && !File.Exists(saved); i++)
                await Task.Delay(100, Timeout);
            Assert.Equal("hello from the sandbox\n", await File.ReadAllTextAsync(saved, Timeout));

            // Upload through a real file input.
            await page.EvaluateAsync("(() => { const i = document.querySelector('#file-upload'); const t = new DataTransfer(); t.items.add(new File(['uploaded from the browser'], 'from-browser.txt')); i.files = t.files; i.dispatchEvent(new Event('change')); })()", Timeout);
            await page.WaitForAsync("document.querySelector('#files-status .ok')", Timeout);
            Assert.Equal("uploaded from the browser", await sandbox.Files.ReadTextAsync("/home/user/from-browser.txt", Timeout));
            await page.WaitForAsync("[...document.querySelectorAll('#files-list .file-name')].some(e => e.textContent === 'from-browser.txt')", Timeout);

            // A command typed into the page: its hostile output is shown verbatim.
            await page.TypeAsync("#exec-shell", $"echo typed-in-page; printf '%s' '{Xss}'", Timeout);
            await page.EvaluateAsync("document.querySelector('#exec-shell').form.requestSubmit()", Timeout);
            await page.WaitForAsync("document.querySelector('#exec-output').textContent.includes('[exit 0')", Timeout);
            var shown = await page.TextAsync("#exec-output", Timeout);
            Assert.Contains("typed-in-page", shown, StringComparison.Ordinal);
            Assert.Contains(Xss, shown, StringComparison.Ordinal);

            if (hasLogs)
            {
                await page.WaitForAsync("document.querySelector('#logs').textContent.includes('dashboard-output')", Timeout);
                Assert.Contains(Xss, await page.TextAsync("#logs", Timeout), StringComparison.Ordinal);
            }
            else
            {
                await page.WaitForAsync("document.querySelector('#logs').textContent.startsWith('no data')", Timeout);
            }
            // The audit card lists this sandbox's command (admin keys read their tenant's audit).
            await page.WaitForAsync("document.querySelector('#audit table') && document.querySelector('#audit').textContent.includes('command')", Timeout);
            // The egress card shows what the API's log says: each destination, or that there was none.
            var egress = JsonDocument.Parse(await http.GetStringAsync($"v1/sandboxes/{sandbox.Id}/network/log", Timeout)).RootElement.GetProperty("events");
            _output.WriteLine($"egress log: {egress.GetRawText()}");
            if (egress.GetArrayLength() == 0)
                await page.WaitForAsync("document.querySelector('#egress').textContent.includes('No connection attempts')", Timeout);
            else
                await page.WaitForAsync($"document.querySelector('#egress').textContent.includes({JsonSerializer.Serialize(egress[0].GetProperty("name").GetString())}) && document.querySelectorAll('#egress tbody tr').length === {egress.GetArrayLength()}", Timeout);
            await page.WaitForAsync("document.querySelector('#metrics-note').textContent !== ''", Timeout);
            await AssertNoScriptRanAsync(page, Timeout);
            await DashboardFixture.ShootAsync(page, "sandbox", Timeout);
            await page.CloseAsync();
        }
        finally
        {
            Directory.Delete(downloads, recursive: true);
        }
    }

    [SkippableFact]
    public async Task Pause_resume_and_kill_buttons_act_on_the_sandbox()
    {
        var sandbox = await CreateAsync();
        var page = await SignedInAsync(Server.AdminKey, $"#/sandboxes/{sandbox.Id}");
        await page.WaitForAsync("document.querySelector('#sandbox-state')?.textContent === 'running' && !document.querySelector('#btn-pause').disabled", Timeout);

        await page.ClickAsync("#btn-pause", Timeout);
        await page.WaitForAsync("document.querySelector('#sandbox-state')?.textContent === 'paused'", Timeout);
        Assert.Equal("paused", (await sandbox.GetInfoAsync(Timeout)).State);

        await page.ClickAsync("#btn-resume", Timeout);
        await page.WaitForAsync("document.querySelector('#sandbox-state')?.textContent === 'running'", Timeout);
        Assert.Equal("running", (await sandbox.GetInfoAsync(Timeout)).State);

        // The first click only arms the button.
        await page.ClickAsync("#btn-kill", Timeout);
        await Task.Delay(300, Timeout);
        Assert.Equal("running", (await sandbox.GetInfoAsync(Timeout)).State);
        await page.ClickAsync("#btn-kill", Timeout);
        await page.WaitForAsync("document.querySelector('#action-status .ok')", Timeout);
        using var http = TenancyKit.Http(Server, Server.AdminKey);
        var after = await http.GetAsync($"v1/sandboxes/{sandbox.Id}", Timeout);
        if (after.StatusCode != HttpStatusCode.NotFound)
            Assert.Contains((await sandbox.GetInfoAsync(Timeout)).State, new[] { "stopping", "stopped" });
        await page.CloseAsync();
    }

    [SkippableFact]
    public async Task Templates_usage_and_audit_pages_show_the_api_and_verify_the_chain()
    {
        var sandbox = await CreateAsync();
        await sandbox.Commands.RunAsync(["true"], cancellationToken: Timeout);
        var page = await SignedInAsync(Server.AdminKey, "#/templates");
        await page.WaitForAsync("[...document.querySelectorAll('#templates .template-name')].some(e => e.textContent === 'base')", Timeout);
        await DashboardFixture.ShootAsync(page, "templates", Timeout);

        await page.EvaluateAsync("location.hash = '#/usage'", Timeout);
        await page.WaitForAsync("document.querySelectorAll('#usage canvas.chart').length >= 4", Timeout);
        // The rows are the API's rows for the range the page asked for.
        var from = (await page.EvaluateAsync("document.querySelector('#usage-from').value", Timeout)).GetString();
        var to = (await page.EvaluateAsync("document.querySelector('#usage-to').value", Timeout)).GetString();
        using var http = TenancyKit.Http(Server, Server.AdminKey);
        var days = JsonDocument.Parse(await http.GetStringAsync($"v1/usage?from={from}&to={to}", Timeout)).RootElement.GetProperty("days");
        if (days.GetArrayLength() == 0)
            Assert.Contains("No usage", await page.TextAsync("#usage", Timeout), StringComparison.Ordinal);
        else
            Assert.Equal(days.GetArrayLength(), (await page.EvaluateAsync("document.querySelectorAll('#usage tbody tr').length", Timeout)).GetInt32());
        await DashboardFixture.ShootAsync(page, "usage", Timeout);

        // An admin key reads its tenant's trail but may not verify the chain (operator only).
        await page.EvaluateAsync("location.hash = '#/audit'", Timeout);
        await page.WaitForAsync("document.querySelector('#audit-records table')", Timeout);
        await page.ClickAsync("#audit-verify", Timeout);
        await page.WaitForAsync("document.querySelector('#audit-verdict .error')", Timeout);
        Assert.Contains("operator", await page.TextAsync("#audit-verdict", Timeout), StringComparison.Ordinal);
        await page.CloseAsync();

        var op = await SignedInAsync(await TenancyKit.OperatorKeyAsync(Server), "#/audit");
        await op.WaitForAsync("document.querySelector('#audit-records table')", Timeout);
        await op.TypeAsync("#audit-sandbox", sandbox.Id, Timeout);
        await op.EvaluateAsync("document.querySelector('#audit-kind').value = 'command'", Timeout);
        await op.ClickAsync("#audit-apply", Timeout);
        await op.WaitForAsync($"document.querySelector('#audit-records').textContent.includes('1 records match')", Timeout);
        Assert.Equal(1, (await op.EvaluateAsync("document.querySelectorAll('#audit-records tbody tr').length", Timeout)).GetInt32());
        await op.ClickAsync("#audit-verify", Timeout);
        await op.WaitForAsync("document.querySelector('#audit-valid')", Timeout);
        Assert.StartsWith("Chain intact", await op.TextAsync("#audit-valid", Timeout), StringComparison.Ordinal);
        await DashboardFixture.ShootAsync(op, "audit", Timeout);
        await op.CloseAsync();
    }
}
