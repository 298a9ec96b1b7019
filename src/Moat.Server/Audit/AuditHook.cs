using System.Globalization;
using System.Text;
using System.Text.Json;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;

namespace Moat.Server.Audit;

/// <summary>Audit records of what happens inside sandboxes: commands (argv, user, cwd, exit, duration), file writes, lifecycle.</summary>
public sealed class AuditHook(AuditLog log) : ISandboxHook
{
    /// <inheritdoc />
    public void OnLifecycle(SandboxRecord record, string kind, HostUsage? usage)
    {
        var scope = AuditScope.Current;
        if (scope is not null && kind == SandboxEvents.Created)
            scope.CreatedSandboxId = record.Id;
        log.Append(AuditKinds.Lifecycle, kind, record.TenantId, KeyOf(scope, record), record.Id, record.StateReason is { } reason ? $"{record.State.Name()}: {reason}" : record.State.Name(),
            Json(w =>
            {
                w.WriteString("tier", record.Spec.Tier.Name());
                w.WriteString("template", record.Spec.Template);
                w.WriteNumber("cpus", record.Spec.Resources.Cpus);
                w.WriteNumber("memoryMiB", record.Spec.Resources.MemoryMiB);
                w.WriteNumber("diskMiB", record.Spec.Resources.DiskMiB);
                if (usage is not null)
                    w.WriteNumber("cpuSeconds", Math.Round(usage.CpuTime.TotalSeconds, 3));
            }));
    }

    /// <summary>The key behind the current request, when it acts on this tenant's sandbox.</summary>
    private static string? KeyOf(AuditScope? scope, SandboxRecord record) =>
        scope?.Caller is { } caller && caller.TenantId == record.TenantId ? caller.KeyId : null;

    /// <inheritdoc />
    public void OnCommand(SandboxRecord record, CommandAuditInfo command) =>
        log.Append(AuditKinds.Command, command.Detached ? "exec.background" : "exec", record.TenantId, KeyOf(AuditScope.Current, record), record.Id,
            command.Exit is { } exit ? "exit " + exit.ExitCode.ToString(CultureInfo.InvariantCulture) + (exit.TimedOut ? " (timed out)" : "") + (exit.OomKilled ? " (oom)" : "") : "no exit (channel lost)",
            Json(w =>
            {
                w.WriteStartArray("argv");
                foreach (var a in command.Argv)
                    w.WriteStringValue(a);
                w.WriteEndArray();
                w.WriteString("user", command.User);
                w.WriteString("cwd", command.Cwd);
                if (command.Exit is { } e)
                {
                    w.WriteNumber("exitCode", e.ExitCode);
                    if (e.Signal != 0)
                        w.WriteNumber("signal", e.Signal);
                }
                w.WriteNumber("durationMs", Math.Round(command.Duration.TotalMilliseconds, 1));
            }));

    /// <inheritdoc />
    public void OnFileWritten(SandboxRecord record, string path, long size, string sha256, string user) =>
        log.Append(AuditKinds.File, "file.write", record.TenantId, KeyOf(AuditScope.Current, record), record.Id, "written", Json(w =>
        {
            w.WriteString("path", path);
            w.WriteNumber("size", size);
            w.WriteString("sha256", sha256);
            w.WriteString("user", user);
        }));

    /// <inheritdoc />
    public void OnEgress(SandboxRecord record, Moat.Core.Networking.EgressEvent attempt) =>
        log.Append(AuditKinds.Network, attempt.Protocol == "dns" ? "network.dns" : "network.connect", record.TenantId, null, record.Id, attempt.Verdict, Json(w =>
        {
            w.WriteString("protocol", attempt.Protocol);
            if (attempt.Name is not null)
                w.WriteString("name", attempt.Name);
            if (attempt.Address is not null)
                w.WriteString("address", attempt.Address);
            if (attempt.RequestedAddress is not null)
                w.WriteString("requestedAddress", attempt.RequestedAddress);
            w.WriteNumber("port", attempt.Port);
            w.WriteString("verdict", attempt.Verdict);
            if (attempt.Reason is not null)
                w.WriteString("reason", attempt.Reason);
            w.WriteNumber("bytesOut", attempt.BytesOut);
            w.WriteNumber("bytesIn", attempt.BytesIn);
            w.WriteNumber("durationMs", Math.Round(attempt.DurationMs, 1));
            if (attempt.End is not null)
                w.WriteString("end", attempt.End);
            w.WriteString("started", attempt.Time.ToString("O", CultureInfo.InvariantCulture));
            w.WriteNumber("logSeq", attempt.Seq);
        }));

    internal static string Json(Action<Utf8JsonWriter> body)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }
}

/// <summary>Kinds of audit records.</summary>
public static class AuditKinds
{
    /// <summary>An API request.</summary>
    public const string Api = "api";
    /// <summary>A command run in a sandbox.</summary>
    public const string Command = "command";
    /// <summary>A file written through the API.</summary>
    public const string File = "file";
    /// <summary>A sandbox created or ended.</summary>
    public const string Lifecycle = "lifecycle";
    /// <summary>A connection attempt or DNS question of a sandbox (allowed or denied).</summary>
    public const string Network = "network";

    /// <summary>Whether a kind is known.</summary>
    public static bool IsKnown(string kind) => kind is Api or Command or File or Lifecycle or Network;
}
