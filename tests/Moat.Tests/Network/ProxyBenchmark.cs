using System.Diagnostics;
using System.Text;
using Moat.Core.Sandboxes;
using Xunit.Abstractions;

namespace Moat.Tests.Network;

/// <summary>
/// Egress proxy cost, measured inside the test world: the same Python client fetches from the same
/// world server once from a container sandbox in mode open (through the proxy) and once from the
/// world namespace itself (direct). Runs only with MOAT_BENCH=1; prints numbers, asserts none.
/// </summary>
public sealed class ProxyBenchmark(NetworkFixture fixture, ITestOutputHelper output) : NetworkTestBase(fixture)
{
    private static readonly string Client = $$"""
        import socket, time, sys
        def fetch(path):
            s = socket.create_connection(("{{TestWorld.Other}}", 80), 10)
            s.sendall(("GET %s HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n" % path).encode())
            n = 0
            while True:
                b = s.recv(262144)
                if not b: break
                n += len(b)
            s.close()
            return n
        fetch("/")
        lat = []
        for i in range(200):
            t = time.perf_counter(); fetch("/"); lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        size = 64 << 20
        t = time.perf_counter(); got = fetch("/big/%d" % size); dt = time.perf_counter() - t
        print("p50_ms=%.3f p90_ms=%.3f mib_s=%.1f bytes=%d" % (lat[100], lat[180], got / dt / 1048576, got))
        """;

    [SkippableFact]
    public async Task ProxyVersusDirect()
    {
        Skip.If(Environment.GetEnvironmentVariable("MOAT_BENCH") != "1", "a benchmark: set MOAT_BENCH=1 to run it");
        var id = await CreateAsync(IsolationTier.Container, "open");
        await Manager.WriteFileAsync(id, TenantId, "/tmp/bench.py", new MemoryStream(Encoding.UTF8.GetBytes(Client)), null, 0, CancellationToken.None);
        var file = Path.Combine(Path.GetTempPath(), $"moat-bench-{Guid.NewGuid():N}.py");
        await File.WriteAllTextAsync(file, Client);
        try
        {
            for (int round = 0; round < 2; round++)
            {
                var proxied = await Manager.RunCommandAsync(id, TenantId, new CommandSpec { Argv = ["python3", "/tmp/bench.py"], Timeout = TimeSpan.FromMinutes(3) }, default, CancellationToken.None);
                output.WriteLine("proxy:  " + Encoding.UTF8.GetString(proxied.Stdout).Trim() + Encoding.UTF8.GetString(proxied.Stderr).Trim());
                var psi = new ProcessStartInfo("ip", ["netns", "exec", World.WorldNamespace, "python3", file]) { RedirectStandardOutput = true, RedirectStandardError = true };
                using var direct = Process.Start(psi)!;
                var text = await direct.StandardOutput.ReadToEndAsync() + await direct.StandardError.ReadToEndAsync();
                await direct.WaitForExitAsync();
                output.WriteLine("direct: " + text.Trim());
            }
        }
        finally
        {
            File.Delete(file);
        }
    }
}
