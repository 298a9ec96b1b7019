using Moat.Client.Tests.Infrastructure;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>One headless Chromium for the dashboard tests (each test opens its own tabs).</summary>
public sealed class DashboardFixture : IAsyncLifetime
{
    /// <summary>The browser (null when it cannot run here).</summary>
    public Chromium? Browser { get; private set; }

    /// <summary>Why the dashboard tests cannot run here.</summary>
    public string? Unavailable { get; private set; }

    /// <summary>Whether to save a screenshot per page into docs/img (MOAT_SCREENSHOTS=1).</summary>
    public static bool Screenshots => Environment.GetEnvironmentVariable("MOAT_SCREENSHOTS") == "1";

    public async Task InitializeAsync()
    {
        Unavailable = Chromium.Unavailable;
        if (Unavailable is not null)
        {
            Console.WriteLine($"dashboard tests skipped: {Unavailable}");
            return;
        }
        using var start = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        Browser = await Chromium.StartAsync(start.Token);
    }

    /// <summary>Saves docs/img/dashboard-NAME.png when screenshots are asked for.</summary>
    public static async Task ShootAsync(BrowserPage page, string name, CancellationToken cancellationToken)
    {
        if (!Screenshots)
            return;
        // Let canvases and the last refresh settle.
        await Task.Delay(400, cancellationToken);
        await page.ScreenshotAsync(Path.Combine(Repo.Root, "docs", "img", $"dashboard-{name}.png"), cancellationToken);
    }

    public async Task DisposeAsync()
    {
        if (Browser is not null)
            await Browser.DisposeAsync();
    }
}
