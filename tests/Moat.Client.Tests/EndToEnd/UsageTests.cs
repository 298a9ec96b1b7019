using System.Globalization;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>Usage metering against a sandbox that burned a known amount of CPU.</summary>
[Collection(ServerCollection.Name)]
public sealed class UsageTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    private readonly ITestOutputHelper _output = output;

    [SkippableFact]
    public async Task A_sandbox_that_burned_three_cpu_seconds_is_metered_within_ten_percent()
    {
        var (tenant, key) = await TenancyKit.NewTenantAsync(Server, "usage", cancellationToken: Timeout);
        using var client = Server.Client(key);
        double burned;
        await using (var sandbox = await TenancyKit.SandboxAsync(client, Timeout, o => o.MemoryMiB = 512))
        {
            // The shell spins until its own CPU time (utime + stime, in clock ticks) reaches 3 s, however
            // long a loaded host makes that take, and then prints what it used. No process is forked in the loop.
            var run = await sandbox.Commands.RunAsync(
                ["sh", "-c", "while :; do read -r l < /proc/$$/stat; set -- $l; t=$(( ${14} + ${15} )); [ $t -ge 300 ] && break; done; echo $t"],
                new CommandOptions { Timeout = TimeSpan.FromMinutes(2) }, Timeout);
            Assert.Equal(0, run.ExitCode);
            burned = int.Parse(run.Stdout.Trim(), CultureInfo.InvariantCulture) / 100.0;
        }

        var day = Assert.Single(await client.GetUsageAsync(cancellationToken: Timeout));
        _output.WriteLine($"burned {burned:0.00} s of CPU; metered {day.VcpuSeconds:0.000} vCPU-s, {day.MemoryGiBSeconds:0.000} GiB-s over {day.SandboxSeconds:0.000} s");

        Assert.Equal(tenant.Id, day.TenantId);
        Assert.Equal(DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture), day.Day);
        Assert.InRange(day.VcpuSeconds, burned * 0.9, burned * 1.1);
        Assert.True(day.SandboxSeconds >= burned * 0.9, $"alive {day.SandboxSeconds} s but burned {burned} s of CPU on one vCPU");
        // Memory is the limit (0.5 GiB) times the time alive.
        Assert.Equal(0.5 * day.SandboxSeconds, day.MemoryGiBSeconds, 0.01);

        var csv = (await client.GetUsageCsvAsync(cancellationToken: Timeout)).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("tenant,day,vcpu_seconds,memory_gib_seconds,disk_gib_hours,sandbox_seconds,cost,currency", csv[0]);
        var row = Assert.Single(csv.Skip(1)).Split(',');
        Assert.Equal(tenant.Id, row[0]);
        Assert.Equal(day.VcpuSeconds, double.Parse(row[2], CultureInfo.InvariantCulture));

        // Another tenant sees none of it.
        var (_, otherKey) = await TenancyKit.NewTenantAsync(Server, "usage-other", cancellationToken: Timeout);
        using var other = Server.Client(otherKey);
        Assert.Empty(await other.GetUsageAsync(cancellationToken: Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.GetUsageAsync(tenant: tenant.Id, cancellationToken: Timeout));
        await Assert.ThrowsAsync<MoatValidationException>(() => other.GetUsageAsync(from: "yesterday", cancellationToken: Timeout));
    }
}
