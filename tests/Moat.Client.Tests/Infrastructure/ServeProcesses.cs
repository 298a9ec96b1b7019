using System.Diagnostics;
using System.Text.Json.Nodes;

namespace Moat.Client.Tests.Infrastructure;

/// <summary>What the tests that run the real <c>moat serve</c> binary share.</summary>
internal static class ServeProcesses
{
    /// <summary>
    /// Ends what a test left: its sandboxes (deleted through the API), the server (<paramref name="stop"/>),
    /// and its data directory — unless something is still mounted in it, a leak the test reports.
    /// </summary>
    public static async Task CleanUpAsync(Process? server, Func<HttpClient> http, Func<Task> stop, string data)
    {
        if (server is { HasExited: false })
        {
            using var client = http();
            try
            {
                var list = JsonNode.Parse(await client.GetStringAsync("v1/sandboxes"))!["sandboxes"]!.AsArray();
                foreach (var s in list)
                    await client.DeleteAsync($"v1/sandboxes/{(string)s!["id"]!}");
            }
            catch (HttpRequestException)
            {
            }
            await stop();
        }
        server?.Dispose();
        if (!File.ReadAllText("/proc/self/mountinfo").Contains(data, StringComparison.Ordinal))
        {
            try
            {
                Directory.Delete(data, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SysKill(int pid, int signal);

    /// <summary>kill(2): a signal to a process the test started.</summary>
    public static void Signal(int pid, int signal) => SysKill(pid, signal);
}
