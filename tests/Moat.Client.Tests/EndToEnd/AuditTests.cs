using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Data.Sqlite;
using Moat.Client.Tests.Infrastructure;
using Moat.Contracts;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>The audit trail of a real server: what it records, how it is queried and exported, and that tampering with its database is detected.</summary>
[Collection(ServerCollection.Name)]
public sealed class AuditTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [SkippableFact]
    public async Task Api_actions_commands_file_writes_and_lifecycle_are_recorded_for_the_tenant_only()
    {
        var (tenant, key) = await TenancyKit.NewTenantAsync(Server, "audit", cancellationToken: Timeout);
        var (_, otherKey) = await TenancyKit.NewTenantAsync(Server, "audit-other", cancellationToken: Timeout);
        using var client = Server.Client(key);
        string id;
        var content = "audited content\n"u8.ToArray();
        await using (var sandbox = await TenancyKit.SandboxAsync(client, Timeout))
        {
            id = sandbox.Id;
            var run = await sandbox.Commands.RunAsync(["sh", "-c", "pwd; exit 3"], new CommandOptions { Cwd = "/tmp" }, Timeout);
            Assert.Equal(3, run.ExitCode);
            await sandbox.Files.WriteAsync("/home/user/notes.txt", content, Timeout);
        }

        var records = await client.QueryAuditAsync(new Dictionary<string, string> { ["sandbox"] = id }, Timeout);
        var keyId = (await client.ListKeysAsync(Timeout)).Single(k => k.Role == "admin").Id;

        var create = Assert.Single(records, r => r.Kind == "api" && r.Action == "POST /v1/sandboxes/");
        Assert.Equal(keyId, create.KeyId);
        Assert.Equal(tenant.Id, create.TenantId);
        Assert.StartsWith("201", create.Result);
        var exec = Assert.Single(records, r => r.Kind == "command");
        using (var data = JsonDocument.Parse(exec.Data!))
        {
            Assert.Equal(["sh", "-c", "pwd; exit 3"], data.RootElement.GetProperty("argv").EnumerateArray().Select(a => a.GetString()));
            Assert.Equal("user", data.RootElement.GetProperty("user").GetString());
            Assert.Equal("/tmp", data.RootElement.GetProperty("cwd").GetString());
            Assert.Equal(3, data.RootElement.GetProperty("exitCode").GetInt32());
            Assert.True(data.RootElement.GetProperty("durationMs").GetDouble() >= 0);
        }
        Assert.Equal("exit 3", exec.Result);
        Assert.Equal(keyId, exec.KeyId);
        var file = Assert.Single(records, r => r.Kind == "file");
        using (var data = JsonDocument.Parse(file.Data!))
        {
            Assert.Equal("/home/user/notes.txt", data.RootElement.GetProperty("path").GetString());
            Assert.Equal(content.Length, data.RootElement.GetProperty("size").GetInt64());
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(content)), data.RootElement.GetProperty("sha256").GetString());
        }
        Assert.Equal(keyId, file.KeyId);
        Assert.Contains(records, r => r.Kind == "lifecycle" && r.Action == "sandbox.created");
        Assert.Contains(records, r => r.Kind == "lifecycle" && r.Action == "sandbox.ended" && r.Result!.Contains("deleted", StringComparison.Ordinal));
        Assert.Contains(records, r => r.Kind == "api" && r.Action == "DELETE /v1/sandboxes/{id}" && r.Result == "204");
        // Chained: every record carries the hash of the record before it in the whole chain.
        Assert.All(records, r => Assert.Matches("^[0-9a-f]{64}$", r.PrevHash));

        var commandsOnly = await client.QueryAuditAsync(new Dictionary<string, string> { ["kind"] = "command", ["sandbox"] = id }, Timeout);
        Assert.Equal([exec.Seq], commandsOnly.Select(r => r.Seq));
        var since = await client.QueryAuditAsync(new Dictionary<string, string> { ["sandbox"] = id, ["since"] = exec.Time.ToString("O") }, Timeout);
        Assert.DoesNotContain(since, r => r.Seq < exec.Seq && r.Time < exec.Time);

        var lines = (await client.ExportAuditAsync(new Dictionary<string, string> { ["sandbox"] = id }, Timeout)).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(records.Select(r => r.Seq), lines.Select(l => JsonSerializer.Deserialize(l, TenancyJson.Default.AuditRecordDto)!.Seq));

        using var other = Server.Client(otherKey);
        Assert.Empty(await other.QueryAuditAsync(new Dictionary<string, string> { ["sandbox"] = id }, Timeout));
        await Assert.ThrowsAsync<MoatNotFoundException>(() => other.QueryAuditAsync(new Dictionary<string, string> { ["tenant"] = tenant.Id }, Timeout));
        await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => other.VerifyAuditAsync(Timeout));
    }

    [SkippableFact]
    public async Task Verify_detects_a_record_edited_or_deleted_in_the_database()
    {
        var (_, key) = await TenancyKit.NewTenantAsync(Server, "tamper", cancellationToken: Timeout);
        using var client = Server.Client(key);
        string id;
        await using (var sandbox = await TenancyKit.SandboxAsync(client, Timeout))
        {
            id = sandbox.Id;
            await sandbox.Commands.RunAsync("echo one", Timeout);
            await sandbox.Commands.RunAsync("echo two", Timeout);
        }
        using var op = Server.Client(await TenancyKit.OperatorKeyAsync(Server));
        var before = await op.VerifyAuditAsync(Timeout);
        Assert.True(before.Valid, before.Problem);
        var target = (await client.QueryAuditAsync(new Dictionary<string, string> { ["sandbox"] = id, ["kind"] = "command" }, Timeout))[0];

        using var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path.Combine(Server.DataDirectory, "moat.db"), Pooling = false }.ToString());
        await db.OpenAsync(Timeout);
        // Append-only as the server runs it: the database itself refuses edits.
        var refused = await Assert.ThrowsAsync<SqliteException>(() => Exec(db, "UPDATE audit_log SET result = 'exit 0' WHERE seq = $seq", target.Seq));
        Assert.Contains("append-only", refused.Message);
        await Exec(db, "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;");
        try
        {
            // Edited: one field of one record.
            await Exec(db, "UPDATE audit_log SET data = replace(data, 'echo one', 'echo nothing') WHERE seq = $seq", target.Seq);
            var edited = await op.VerifyAuditAsync(Timeout);
            Assert.False(edited.Valid);
            Assert.Equal(target.Seq, edited.FirstBadSeq);
            Assert.Contains("edited", edited.Problem);
            await Exec(db, "UPDATE audit_log SET data = replace(data, 'echo nothing', 'echo one') WHERE seq = $seq", target.Seq);
            Assert.True((await op.VerifyAuditAsync(Timeout)).Valid);

            // Deleted: the record is gone (kept here to put back).
            var row = await ReadRowAsync(db, target.Seq);
            await Exec(db, "DELETE FROM audit_log WHERE seq = $seq", target.Seq);
            var deleted = await op.VerifyAuditAsync(Timeout);
            Assert.False(deleted.Valid);
            Assert.Equal(target.Seq, deleted.FirstBadSeq);
            Assert.Contains("missing", deleted.Problem);

            // The CLI says so too, with a failing exit code.
            var cli = await CliAsync("audit", "verify");
            Assert.Equal(1, cli.Exit);
            Assert.Contains($"broken at record {target.Seq}", cli.Stderr);

            await RestoreRowAsync(db, row);
            Assert.True((await op.VerifyAuditAsync(Timeout)).Valid);
            var ok = await CliAsync("audit", "verify");
            Assert.Equal(0, ok.Exit);
            Assert.Contains("audit chain intact", ok.Stdout);
        }
        finally
        {
            await Exec(db, """
                CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                """);
        }
    }

    private async Task<CliResult> CliAsync(params string[] args)
    {
        var env = new Dictionary<string, string> { ["MOAT_URL"] = Server.Url.AbsoluteUri, ["MOAT_API_KEY"] = await TenancyKit.OperatorKeyAsync(Server) };
        return await MoatCli.RunAsync(env, null, TimeSpan.FromMinutes(2), null, args);
    }

    private static async Task Exec(SqliteConnection db, string sql, long? seq = null)
    {
        using var command = new SqliteCommand(sql, db);
        if (seq is { } s)
            command.Parameters.AddWithValue("$seq", s);
        await command.ExecuteNonQueryAsync();
    }

    private static async Task<object?[]> ReadRowAsync(SqliteConnection db, long seq)
    {
        using var command = new SqliteCommand("SELECT seq, time, kind, tenant_id, key_id, sandbox_id, action, result, data, prev_hash, hash FROM audit_log WHERE seq = $seq", db);
        command.Parameters.AddWithValue("$seq", seq);
        using var reader = await command.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());
        var row = new object?[11];
        reader.GetValues(row!);
        return row;
    }

    private static async Task RestoreRowAsync(SqliteConnection db, object?[] row)
    {
        using var command = new SqliteCommand("INSERT INTO audit_log (seq, time, kind, tenant_id, key_id, sandbox_id, action, result, data, prev_hash, hash) VALUES ($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", db);
        for (int i = 0; i < row.Length; i++)
            command.Parameters.AddWithValue("$" + i, row[i] ?? DBNull.Value);
        await command.ExecuteNonQueryAsync();
    }
}
