using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Moat.Client.Tests.Infrastructure;

/// <summary>
/// A headless Debian <c>chromium</c> driven over the DevTools protocol (one WebSocket to the
/// browser, pages attached as flat sessions). Small on purpose: navigate, evaluate, wait, screenshot.
/// </summary>
public sealed class Chromium : IAsyncDisposable
{
    /// <summary>Where Debian installs it.</summary>
    public const string ExecutablePath = "/usr/bin/chromium";

    private readonly Process _process;
    private readonly ClientWebSocket _socket = new();
    private readonly string _profile;
    private readonly ConcurrentDictionary<int, TaskCompletionSource<JsonElement>> _pending = new();
    private readonly ConcurrentDictionary<string, BrowserPage> _pages = new();
    private readonly SemaphoreSlim _sendGate = new(1, 1);
    private readonly CancellationTokenSource _stop = new();
    private Task _reader = Task.CompletedTask;
    private int _nextId;

    private Chromium(Process process, string profile)
    {
        _process = process;
        _profile = profile;
    }

    /// <summary>Why the browser cannot run here (null when it can).</summary>
    public static string? Unavailable => File.Exists(ExecutablePath) ? null : $"{ExecutablePath} is not installed (apt-get install chromium; build/setup.sh installs it)";

    /// <summary>Starts a headless browser with a fresh profile.</summary>
    public static async Task<Chromium> StartAsync(CancellationToken cancellationToken)
    {
        var profile = Directory.CreateTempSubdirectory("moat-chromium-").FullName;
        var start = new ProcessStartInfo(ExecutablePath)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        // --no-sandbox: the tests run as root, where Chromium's own sandbox refuses to start.
        foreach (var arg in new[]
        {
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync", "--disable-component-update",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", $"--user-data-dir={profile}", "--window-size=1280,900", "about:blank",
        })
            start.ArgumentList.Add(arg);
        var process = Process.Start(start) ?? throw new InvalidOperationException("chromium did not start");
        var browser = new Chromium(process, profile);
        _ = process.StandardOutput.BaseStream.CopyToAsync(Stream.Null, CancellationToken.None);
        var url = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var stderr = new StringBuilder();
        _ = Task.Run(async () =>
        {
            while (await process.StandardError.ReadLineAsync(CancellationToken.None) is { } line)
            {
                lock (stderr)
                    stderr.AppendLine(line);
                const string marker = "DevTools listening on ";
                if (line.StartsWith(marker, StringComparison.Ordinal))
                    url.TrySetResult(line[marker.Length..].Trim());
            }
            url.TrySetException(new InvalidOperationException("chromium exited before it listened: " + stderr));
        }, CancellationToken.None);
        try
        {
            var ws = await url.Task.WaitAsync(TimeSpan.FromSeconds(30), cancellationToken);
            await browser._socket.ConnectAsync(new Uri(ws), cancellationToken);
            browser._reader = Task.Run(browser.ReadLoopAsync, CancellationToken.None);
            return browser;
        }
        catch
        {
            await browser.DisposeAsync();
            throw;
        }
    }

    /// <summary>Opens a new tab (its own sessionStorage) at about:blank.</summary>
    public async Task<BrowserPage> NewPageAsync(CancellationToken cancellationToken)
    {
        var target = await SendAsync(null, "Target.createTarget", new JsonObject { ["url"] = "about:blank" }, cancellationToken);
        var targetId = target.GetProperty("targetId").GetString()!;
        var attach = await SendAsync(null, "Target.attachToTarget", new JsonObject { ["targetId"] = targetId, ["flatten"] = true }, cancellationToken);
        var page = new BrowserPage(this, attach.GetProperty("sessionId").GetString()!, targetId);
        _pages[page.SessionId] = page;
        await page.SendAsync("Page.enable", null, cancellationToken);
        await page.SendAsync("Runtime.enable", null, cancellationToken);
        await page.SendAsync("Emulation.setDeviceMetricsOverride", new JsonObject { ["width"] = 1280, ["height"] = 900, ["deviceScaleFactor"] = 1, ["mobile"] = false }, cancellationToken);
        return page;
    }

    /// <summary>Lets downloads land in <paramref name="directory"/>.</summary>
    public Task AllowDownloadsAsync(string directory, CancellationToken cancellationToken) =>
        SendAsync(null, "Browser.setDownloadBehavior", new JsonObject { ["behavior"] = "allow", ["downloadPath"] = directory }, cancellationToken);

    internal async Task<JsonElement> SendAsync(string? sessionId, string method, JsonObject? parameters, CancellationToken cancellationToken)
    {
        int id = Interlocked.Increment(ref _nextId);
        var message = new JsonObject { ["id"] = id, ["method"] = method, ["params"] = parameters ?? new JsonObject() };
        if (sessionId is not null)
            message["sessionId"] = sessionId;
        var reply = new TaskCompletionSource<JsonElement>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = reply;
        var bytes = Encoding.UTF8.GetBytes(message.ToJsonString());
        await _sendGate.WaitAsync(cancellationToken);
        try
        {
            await _socket.SendAsync(bytes, WebSocketMessageType.Text, true, cancellationToken);
        }
        finally
        {
            _sendGate.Release();
        }
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        try
        {
            return await reply.Task.WaitAsync(timeout.Token);
        }
        finally
        {
            _pending.TryRemove(id, out _);
        }
    }

    private async Task ReadLoopAsync()
    {
        var buffer = new byte[1 << 16];
        using var message = new MemoryStream();
        try
        {
            while (_socket.State == WebSocketState.Open)
            {
                var result = await _socket.ReceiveAsync(buffer, _stop.Token);
                if (result.MessageType == WebSocketMessageType.Close)
                    break;
                message.Write(buffer, 0, result.Count);
                if (!result.EndOfMessage)
                    continue;
                using var doc = JsonDocument.Parse(message.ToArray());
                message.SetLength(0);
                var root = doc.RootElement;
                if (root.TryGetProperty("id", out var idElement))
                {
                    if (_pending.TryGetValue(idElement.GetInt32(), out var reply))
                    {
                        if (root.TryGetProperty("error", out var error))
                            reply.TrySetException(new InvalidOperationException("DevTools: " + error.GetRawText()));
                        else
                            reply.TrySetResult(root.GetProperty("result").Clone());
                    }
                }
                else if (root.TryGetProperty("sessionId", out var session) && _pages.TryGetValue(session.GetString()!, out var page))
                {
                    page.OnEvent(root.GetProperty("method").GetString()!, root.TryGetProperty("params", out var p) ? p.Clone() : default);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (WebSocketException)
        {
        }
        foreach (var pending in _pending.Values)
            pending.TrySetException(new InvalidOperationException("the DevTools connection closed"));
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _socket.Abort();
        _socket.Dispose();
        try
        {
            await _reader;
        }
        catch (Exception)
        {
        }
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
            }
        }
        catch (InvalidOperationException)
        {
        }
        catch (TimeoutException)
        {
        }
        _process.Dispose();
        try
        {
            Directory.Delete(_profile, recursive: true);
        }
        catch (IOException)
        {
        }
        _stop.Dispose();
        _sendGate.Dispose();
    }
}

/// <summary>One tab of <see cref="Chromium"/>.</summary>
public sealed class BrowserPage(Chromium browser, string sessionId, string targetId)
{
    internal string SessionId { get; } = sessionId;

    /// <summary>Uncaught exceptions, console errors and dialogs (alert/confirm) the page produced.</summary>
    public ConcurrentQueue<string> Problems { get; } = new();

    internal Task<JsonElement> SendAsync(string method, JsonObject? parameters, CancellationToken cancellationToken) =>
        browser.SendAsync(SessionId, method, parameters, cancellationToken);

    internal void OnEvent(string method, JsonElement parameters)
    {
        switch (method)
        {
            case "Runtime.exceptionThrown":
                Problems.Enqueue("exception: " + parameters.GetProperty("exceptionDetails").GetRawText());
                break;
            case "Runtime.consoleAPICalled" when parameters.GetProperty("type").GetString() is "error" or "assert":
                Problems.Enqueue("console: " + parameters.GetProperty("args").GetRawText());
                break;
            case "Page.javascriptDialogOpening":
                Problems.Enqueue("dialog: " + parameters.GetProperty("message").GetString());
                _ = SendAsync("Page.handleJavaScriptDialog", new JsonObject { ["accept"] = false }, CancellationToken.None);
                break;
        }
    }

    /// <summary>Loads a URL and waits for its load event.</summary>
    public async Task NavigateAsync(Uri url, CancellationToken cancellationToken)
    {
        await SendAsync("Page.navigate", new JsonObject { ["url"] = url.AbsoluteUri }, cancellationToken);
        await WaitForAsync("document.readyState === 'complete'", cancellationToken);
    }

    /// <summary>Evaluates a JavaScript expression (promises awaited) and returns its JSON value.</summary>
    public async Task<JsonElement> EvaluateAsync(string expression, CancellationToken cancellationToken)
    {
        var result = await SendAsync("Runtime.evaluate", new JsonObject { ["expression"] = expression, ["awaitPromise"] = true, ["returnByValue"] = true }, cancellationToken);
        if (result.TryGetProperty("exceptionDetails", out var error))
            throw new InvalidOperationException($"evaluating {expression}: {error.GetRawText()}");
        var value = result.GetProperty("result");
        return value.TryGetProperty("value", out var v) ? v : default;
    }

    /// <summary>The text of the first element matching a CSS selector ("" when none).</summary>
    public async Task<string> TextAsync(string selector, CancellationToken cancellationToken) =>
        (await EvaluateAsync($"document.querySelector({JsonSerializer.Serialize(selector)})?.textContent ?? ''", cancellationToken)).GetString() ?? "";

    /// <summary>Clicks the first element matching a CSS selector.</summary>
    public async Task ClickAsync(string selector, CancellationToken cancellationToken)
    {
        await WaitForAsync($"!!document.querySelector({JsonSerializer.Serialize(selector)})", cancellationToken);
        await EvaluateAsync($"document.querySelector({JsonSerializer.Serialize(selector)}).click()", cancellationToken);
    }

    /// <summary>Sets an input's value as typing would.</summary>
    public async Task TypeAsync(string selector, string text, CancellationToken cancellationToken)
    {
        await WaitForAsync($"!!document.querySelector({JsonSerializer.Serialize(selector)})", cancellationToken);
        await EvaluateAsync($"(() => {{ const e = document.querySelector({JsonSerializer.Serialize(selector)}); e.value = {JsonSerializer.Serialize(text)}; e.dispatchEvent(new Event('input', {{bubbles: true}})); }})()", cancellationToken);
    }

    /// <summary>Waits until a JavaScript expression is truthy (polling every 100 ms, 20 s at most).</summary>
    public async Task WaitForAsync(string expression, CancellationToken cancellationToken, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(20));
        string last = "";
        while (true)
        {
            try
            {
                var value = await EvaluateAsync($"!!({expression})", cancellationToken);
                if (value.ValueKind == JsonValueKind.True)
                    return;
            }
            catch (InvalidOperationException ex)
            {
                // A navigation in progress destroys the context; try again.
                last = ex.Message;
            }
            if (DateTime.UtcNow > deadline)
            {
                var body = "";
                try
                {
                    body = (await EvaluateAsync("document.body?.innerText ?? ''", cancellationToken)).GetString() ?? "";
                }
                catch (InvalidOperationException)
                {
                }
                throw new TimeoutException($"waited in vain for {expression} {last}\npage text:\n{body}\nproblems: {string.Join(" | ", Problems)}");
            }
            await Task.Delay(100, cancellationToken);
        }
    }

    /// <summary>Saves a PNG of the whole page.</summary>
    public async Task ScreenshotAsync(string path, CancellationToken cancellationToken)
    {
        var shot = await SendAsync("Page.captureScreenshot", new JsonObject { ["format"] = "png", ["captureBeyondViewport"] = true }, cancellationToken);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        await File.WriteAllBytesAsync(path, Convert.FromBase64String(shot.GetProperty("data").GetString()!), cancellationToken);
    }

    /// <summary>Closes the tab.</summary>
    public Task CloseAsync() => browser.SendAsync(null, "Target.closeTarget", new JsonObject { ["targetId"] = targetId }, CancellationToken.None);
}
