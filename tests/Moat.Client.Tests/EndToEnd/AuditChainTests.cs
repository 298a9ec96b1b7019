using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;
using Moat.Core.State;
using Moat.Server.Audit;
using Moat.Storage.Sqlite;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>The audit chain on its own SQLite file (no server): the cases a live server cannot stage deterministically, like removing the newest record.</summary>
public sealed class AuditChainTests : IAsyncLifetime
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), "moat-audit-" + Guid.NewGuid().ToString("N")[..8] + ".db");
    private SqliteDatabase _database = null!;
    private AuditLog _log = null!;

    public async Task InitializeAsync()
    {
        _database = new SqliteDatabase(_path);
        _log = new AuditLog(new SqliteAuditStore(_database), TimeProvider.System, NullLogger<AuditLog>.Instance);
        await _log.StartAsync(CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        await _log.StopAsync(CancellationToken.None);
        _log.Dispose();
        _database.Dispose();
        foreach (var f in new[] { _path, _path + "-wal", _path + "-shm" })
            File.Delete(f);
    }

    private async Task AppendAsync(int n)
    {
        for (int i = 0; i < n; i++)
            _log.Append("api", $"GET /v1/thing/{i}", "t1", "k1", null, "200", $$"""{"i":{{i}}}""");
        await _log.FlushAsync(CancellationToken.None);
    }

    private void Sql(string sql)
    {
        using var c = _database.Open();
        using var command = new SqliteCommand(sql, c);
        command.ExecuteNonQuery();
    }

    [Fact]
    public async Task An_intact_chain_verifies_and_each_record_links_to_the_one_before()
    {
        await AppendAsync(50);

        var result = await _log.VerifyAsync(CancellationToken.None);
        Assert.True(result.Valid, result.Problem);
        Assert.Equal(50, result.Records);
        var all = await new SqliteAuditStore(_database).QueryAsync(new AuditQuery(), CancellationToken.None);
        Assert.Equal(AuditLog.Genesis, all[0].PrevHash);
        for (int i = 1; i < all.Count; i++)
            Assert.Equal(all[i - 1].Hash, all[i].PrevHash);
    }

    [Fact]
    public async Task Removing_the_newest_records_is_detected_by_the_head()
    {
        await AppendAsync(10);
        Sql("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq >= 9;");

        var result = await _log.VerifyAsync(CancellationToken.None);

        Assert.False(result.Valid);
        Assert.Equal(9, result.FirstBadSeq);
        Assert.Contains("newest records were removed", result.Problem);
    }

    [Fact]
    public async Task A_rewritten_chain_with_recomputed_hashes_still_fails_at_the_head()
    {
        await AppendAsync(5);
        // The attacker edits a record and recomputes its hash — but the next record still links to the old one.
        var store = new SqliteAuditStore(_database);
        var second = (await store.QueryAsync(new AuditQuery { AfterSeq = 1, Limit = 1 }, CancellationToken.None))[0];
        var forged = second with { Result = "403" };
        Sql($"DROP TRIGGER audit_log_no_update; UPDATE audit_log SET result = '403', hash = '{AuditLog.HashOf(forged with { Hash = "" })}' WHERE seq = 2;");

        var result = await _log.VerifyAsync(CancellationToken.None);

        Assert.False(result.Valid);
        Assert.Equal(3, result.FirstBadSeq);
        Assert.Contains("does not link", result.Problem);
    }

    [Fact]
    public async Task The_chain_continues_across_a_restart()
    {
        await AppendAsync(3);
        await _log.StopAsync(CancellationToken.None);
        _log.Dispose();
        _log = new AuditLog(new SqliteAuditStore(_database), TimeProvider.System, NullLogger<AuditLog>.Instance);
        await _log.StartAsync(CancellationToken.None);

        await AppendAsync(3);

        var result = await _log.VerifyAsync(CancellationToken.None);
        Assert.True(result.Valid, result.Problem);
        Assert.Equal(6, result.Records);
    }
}
