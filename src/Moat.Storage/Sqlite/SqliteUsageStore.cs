using System.Globalization;
using Microsoft.Data.Sqlite;
using Moat.Core.State;

namespace Moat.Storage.Sqlite;

/// <summary>Daily usage per tenant in SQLite (amounts are added, never overwritten).</summary>
public sealed class SqliteUsageStore(SqliteDatabase database) : IUsageStore
{
    /// <inheritdoc />
    public Task AddAsync(string tenantId, DateOnly day, UsageAmounts amounts, CancellationToken cancellationToken) => database.WriteAsync(c =>
    {
        using var command = new SqliteCommand("""
            INSERT INTO usage_daily (tenant_id, day, vcpu_seconds, memory_gib_seconds, disk_gib_hours, sandbox_seconds) VALUES ($tenant, $day, $cpu, $mem, $disk, $secs)
            ON CONFLICT(tenant_id, day) DO UPDATE SET vcpu_seconds = vcpu_seconds + excluded.vcpu_seconds, memory_gib_seconds = memory_gib_seconds + excluded.memory_gib_seconds,
                disk_gib_hours = disk_gib_hours + excluded.disk_gib_hours, sandbox_seconds = sandbox_seconds + excluded.sandbox_seconds
            """, c);
        command.Parameters.AddWithValue("$tenant", tenantId);
        command.Parameters.AddWithValue("$day", day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture));
        command.Parameters.AddWithValue("$cpu", amounts.VcpuSeconds);
        command.Parameters.AddWithValue("$mem", amounts.MemoryGiBSeconds);
        command.Parameters.AddWithValue("$disk", amounts.DiskGiBHours);
        command.Parameters.AddWithValue("$secs", amounts.SandboxSeconds);
        return command.ExecuteNonQuery();
    }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<(string TenantId, DateOnly Day, UsageAmounts Amounts)>> QueryAsync(string? tenantId, DateOnly from, DateOnly to, CancellationToken cancellationToken) => database.ReadAsync(c =>
    {
        using var command = new SqliteCommand("SELECT tenant_id, day, vcpu_seconds, memory_gib_seconds, disk_gib_hours, sandbox_seconds FROM usage_daily WHERE day >= $from AND day <= $to" + (tenantId is null ? "" : " AND tenant_id = $tenant") + " ORDER BY day, tenant_id", c);
        command.Parameters.AddWithValue("$from", from.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture));
        command.Parameters.AddWithValue("$to", to.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture));
        if (tenantId is not null)
            command.Parameters.AddWithValue("$tenant", tenantId);
        using var reader = command.ExecuteReader();
        var list = new List<(string, DateOnly, UsageAmounts)>();
        while (reader.Read())
            list.Add((reader.GetString(0), DateOnly.ParseExact(reader.GetString(1), "yyyy-MM-dd", CultureInfo.InvariantCulture), new UsageAmounts(reader.GetDouble(2), reader.GetDouble(3), reader.GetDouble(4), reader.GetDouble(5))));
        return (IReadOnlyList<(string TenantId, DateOnly Day, UsageAmounts Amounts)>)list;
    });
}
