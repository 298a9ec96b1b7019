using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Runtimes;
using Moat.Core.Sandboxes;
using Moat.Storage.Oci;
using Moat.Storage.Rootfs;

namespace Moat.Storage.Templates;

/// <summary>A filesystem snapshot of a sandbox, kept as a template of its tenant.</summary>
public sealed record SandboxSnapshot(TemplateRecord Template, string SandboxId, int ChangedEntries);

/// <summary>
/// Filesystem snapshots and forks. A snapshot freezes the sandbox, writes everything its writable
/// layer holds (what its commands changed on top of its template) as one more layer in the image
/// store, and saves the template's layers plus that one under a new name: an ordinary template of
/// the tenant that outlives the sandbox, is listed and deleted like any other, and starts new
/// sandboxes (restore) in the time any template does — nothing is copied per sandbox. A fork is a
/// snapshot under a hidden name (kept while a fork lives) and N sandboxes started from it with
/// the source's policy, each a fresh sandbox with its own id, hostname and kernel randomness.
/// Running processes and memory are not part of it (the tiers' memory snapshots are separate);
/// neither is /tmp, which lives on the sandbox's scratch volume like a tmpfs would.
/// </summary>
public sealed partial class SandboxSnapshots(TemplateStore templates, SandboxManager manager, ILogger<SandboxSnapshots> logger)
{
    /// <summary>Most sandboxes one fork call may start.</summary>
    public const int MaxForks = 50;

    /// <summary>What <see cref="TemplateRecord.Source"/> of a snapshot starts with; the source sandbox's id follows.</summary>
    public const string SourcePrefix = "snapshot of ";

    /// <summary>Whether a template is one of the tenant's snapshots.</summary>
    public static bool IsSnapshotOf(TemplateRecord template, string tenant) =>
        template.Tenant == tenant && template.Source.StartsWith(SourcePrefix, StringComparison.Ordinal);

    /// <summary>The sandbox a snapshot was taken from.</summary>
    public static string? SourceSandbox(TemplateRecord template) =>
        template.Source.StartsWith(SourcePrefix, StringComparison.Ordinal) ? template.Source[SourcePrefix.Length..].Split(' ')[0] : null;

    /// <summary>What ends the <see cref="TemplateRecord.Source"/> of a memory snapshot, around the tier's name.</summary>
    private const string MemoryMarker = " [memory ";

    /// <summary>The tier whose memory checkpoint a snapshot holds, or null for a filesystem snapshot (or any other template).</summary>
    public static IsolationTier? CheckpointTierOf(TemplateRecord template)
    {
        if (!template.Source.StartsWith(SourcePrefix, StringComparison.Ordinal))
            return null;
        int at = template.Source.LastIndexOf(MemoryMarker, StringComparison.Ordinal);
        return at < 0 || !template.Source.EndsWith(']') ? null : IsolationTiers.TryParse(template.Source[(at + MemoryMarker.Length)..^1]);
    }

    /// <summary>The kind of a snapshot: <c>memory</c> or <c>filesystem</c>.</summary>
    public static string KindOf(TemplateRecord template) => CheckpointTierOf(template) is null ? SnapshotKindNames.Filesystem : SnapshotKindNames.Memory;

    private static readonly IReadOnlyDictionary<string, long> NoBaseline = new Dictionary<string, long>();

    /// <summary>The kind a request names (null: <c>filesystem</c>, the kind every tier takes), validated.</summary>
    public static string ParseKind(string? kind) => kind?.Trim().ToLowerInvariant() switch
    {
        null or "" or SnapshotKindNames.Filesystem => SnapshotKindNames.Filesystem,
        SnapshotKindNames.Memory => SnapshotKindNames.Memory,
        _ => throw MoatException.Invalid("invalid_kind", $"kind must be \"memory\" or \"filesystem\", got \"{kind}\""),
    };

    /// <summary>
    /// Snapshots a sandbox as the template <paramref name="name"/>: its files (<c>filesystem</c>, a
    /// running or paused sandbox), or its processes, memory and files (<c>memory</c>, a running
    /// sandbox of a tier that can checkpoint).
    /// </summary>
    public async Task<SandboxSnapshot> SnapshotAsync(string sandboxId, string tenantId, string name, string kind, CancellationToken cancellationToken)
    {
        TemplateStore.ValidName(name);
        kind = ParseKind(kind);
        if (await templates.GetExactAsync(name, tenantId, cancellationToken).ConfigureAwait(false) is not null)
            throw new MoatException(ErrorKind.Conflict, "template_exists", $"a template named '{name}' exists already: pick another name or delete it first");
        return await CaptureAsync(sandboxId, tenantId, name, hidden: false, kind == SnapshotKindNames.Memory, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Starts <paramref name="count"/> sandboxes, each with its own identity, from the current state
    /// of a sandbox: its files (<c>filesystem</c>) or its running processes too (<c>memory</c>).
    /// </summary>
    public async Task<IReadOnlyList<SandboxRecord>> ForkAsync(string sandboxId, string tenantId, int count, string kind, CancellationToken cancellationToken)
    {
        if (count < 1 || count > MaxForks)
            throw MoatException.Invalid("invalid_count", $"count must be between 1 and {MaxForks}, got {count}");
        kind = ParseKind(kind);
        var source = await manager.GetAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        await SweepForkTemplatesAsync(tenantId, cancellationToken).ConfigureAwait(false);
        var hidden = ForkPrefix + Guid.NewGuid().ToString("N")[..12];
        var snapshot = await CaptureAsync(sandboxId, tenantId, hidden, hidden: true, kind == SnapshotKindNames.Memory, cancellationToken).ConfigureAwait(false);
        var forks = new List<SandboxRecord>(count);
        try
        {
            for (int i = 0; i < count; i++)
            {
                var spec = source.Spec with
                {
                    Template = hidden,
                    Metadata = new Dictionary<string, string>(source.Spec.Metadata) { ["moat.forkedFrom"] = sandboxId },
                };
                forks.Add(await manager.CreateAsync(spec, tenantId, cancellationToken).ConfigureAwait(false));
            }
            LogForked(logger, sandboxId, count, snapshot.ChangedEntries);
            return forks;
        }
        catch
        {
            foreach (var fork in forks)
                await manager.DeleteAsync(fork.Id, tenantId, CancellationToken.None).ConfigureAwait(false);
            await templates.DeleteAsync(hidden, tenantId, CancellationToken.None).ConfigureAwait(false);
            DeleteCheckpoint(snapshot.Template);
            throw;
        }
    }

    /// <summary>
    /// A fork's hidden template keeps its layers referenced (so the layer collector leaves them)
    /// while a fork lives; the ones no live sandbox uses any more are removed here.
    /// </summary>
    private async Task SweepForkTemplatesAsync(string tenantId, CancellationToken cancellationToken)
    {
        var names = await templates.HiddenNamesAsync(tenantId, ForkPrefix).ConfigureAwait(false);
        if (names.Count == 0)
            return;
        var live = await manager.ListAsync(new Moat.Core.State.SandboxQuery { TenantId = tenantId, States = SandboxStates.Alive, Limit = int.MaxValue }, cancellationToken).ConfigureAwait(false);
        var used = live.Select(s => s.Spec.Template).ToHashSet(StringComparer.Ordinal);
        foreach (var name in names.Where(n => !used.Contains(n)))
        {
            var record = await templates.GetExactAsync(name, tenantId, cancellationToken).ConfigureAwait(false);
            await templates.DeleteAsync(name, tenantId, cancellationToken).ConfigureAwait(false);
            if (record is not null)
                DeleteCheckpoint(record);
        }
    }

    /// <summary>Removes the memory checkpoint of a snapshot whose template was deleted (nothing for a filesystem snapshot).</summary>
    public void DeleteCheckpoint(TemplateRecord template)
    {
        if (CheckpointTierOf(template) is null)
            return;
        var directory = manager.CheckpointDirectory(templates.ToImage(template).Id);
        try
        {
            if (Directory.Exists(directory))
                Directory.Delete(directory, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            LogCheckpointCleanupFailed(logger, template.Name, ex.Message);
        }
    }

    private const string ForkPrefix = "~fork-";

    private async Task<SandboxSnapshot> CaptureAsync(string sandboxId, string tenantId, string name, bool hidden, bool memory, CancellationToken cancellationToken)
    {
        var sandbox = await manager.GetAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        if (memory)
        {
            if (sandbox.State != SandboxState.Running)
                throw new MoatException(ErrorKind.Conflict, "sandbox_not_running", $"sandbox {sandboxId} is {sandbox.State.Name()}: only a running sandbox can be snapshotted with its memory (resume it first)");
            if (manager.Runtimes.Find(sandbox.Spec.Tier) is { } runtime && !runtime.SnapshotKinds.Contains(SnapshotKindNames.Memory))
                throw SandboxManager.MemoryUnsupported(runtime);
        }
        if (sandbox.State is not (SandboxState.Running or SandboxState.Paused))
            throw new MoatException(ErrorKind.Conflict, "sandbox_not_running", $"sandbox {sandboxId} is {sandbox.State.Name()}: only a running or paused sandbox can be snapshotted");
        var upper = Path.Combine(OverlayRootfs.LayoutOf(Path.Combine(manager.Options.DataDirectory, "sandboxes", sandboxId)).ScratchMount, "upper");
        if (sandbox.Spec.Tier == IsolationTier.Microvm || !Directory.Exists(upper))
            throw new MoatException(ErrorKind.Unavailable, "snapshot_tier_unsupported", $"filesystem snapshots of {sandbox.Spec.Tier.Name()} sandboxes are not available yet: the microVM's disk is not readable by the host while it runs (use the container or gvisor tier)");
        var template = await templates.GetAsync(sandbox.Spec.Template, tenantId, cancellationToken).ConfigureAwait(false)
            ?? throw new MoatException(ErrorKind.Conflict, "template_gone", $"the template '{sandbox.Spec.Template}' of sandbox {sandboxId} no longer exists");

        string? layer = null;
        int entries = 0;
        async Task CaptureLayerAsync(CancellationToken ct)
        {
            layer = await templates.AddTarLayerAsync(async tar =>
            {
                entries = await LayerDiff.WriteAsync(upper, NoBaseline, LayerDiff.PlatformEntries, tar, templates.Images.Limits, ct).ConfigureAwait(false);
                return entries;
            }, ct).ConfigureAwait(false);
        }

        // A memory snapshot's image is unique (its checkpoint directory is named by it), a
        // filesystem snapshot's follows its content.
        string nonce = memory ? Guid.NewGuid().ToString("N") : "";
        string? checkpoint = null;
        if (memory)
        {
            // The tier freezes the sandbox for the save and lets the layer be read meanwhile:
            // files and memory are of one instant.
            var staging = manager.CheckpointDirectory(".staging-" + nonce);
            try
            {
                await manager.CheckpointAsync(sandboxId, tenantId, staging, CaptureLayerAsync, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                TryDelete(staging);
                throw;
            }
            checkpoint = staging;
        }
        else
        {
            // Frozen, nothing in the sandbox can change the tree while it is read; a sandbox the
            // caller had paused stays paused.
            bool pausedHere = false;
            if (sandbox.State == SandboxState.Running)
            {
                await manager.PauseAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
                pausedHere = true;
            }
            try
            {
                await CaptureLayerAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                if (pausedHere)
                    await manager.ResumeAsync(sandboxId, tenantId, CancellationToken.None).ConfigureAwait(false);
            }
        }
        var layers = template.Layers.ToList();
        if (layer is not null)
            layers.Add(layer);
        var record = new TemplateRecord
        {
            Tenant = tenantId,
            Name = name,
            ImageId = ImageAssembly.DigestOf(Encoding.UTF8.GetBytes(string.Join('\n', layers) + JsonSerializer.Serialize(template.Config, StorageJson.Default.ImageConfig) + nonce)),
            Layers = layers,
            Config = template.Config,
            Start = template.Start,
            Source = $"{SourcePrefix}{sandboxId} ({template.Name})" + (memory ? $"{MemoryMarker}{sandbox.Spec.Tier.Name()}]" : ""),
        };
        TemplateRecord saved;
        try
        {
            if (checkpoint is not null)
                Directory.Move(checkpoint, manager.CheckpointDirectory(templates.ToImage(record).Id));
            saved = hidden
                ? await templates.SaveHiddenAsync(record, cancellationToken).ConfigureAwait(false)
                : await templates.SaveAsync(record, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            if (checkpoint is not null)
            {
                TryDelete(checkpoint);
                TryDelete(manager.CheckpointDirectory(templates.ToImage(record).Id));
            }
            throw;
        }
        LogSnapshot(logger, sandboxId, memory ? SnapshotKindNames.Memory : SnapshotKindNames.Filesystem, name, entries);
        return new SandboxSnapshot(saved, sandboxId, entries);
    }

    private static void TryDelete(string directory)
    {
        try
        {
            if (Directory.Exists(directory))
                Directory.Delete(directory, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId}: {Kind} snapshot {Name} ({Entries} changed entries)")]
    private static partial void LogSnapshot(ILogger logger, string sandboxId, string kind, string name, int entries);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Snapshot {Name}: its memory checkpoint could not be removed: {Error}")]
    private static partial void LogCheckpointCleanupFailed(ILogger logger, string name, string error);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId}: forked {Count} sandboxes ({Entries} changed entries)")]
    private static partial void LogForked(ILogger logger, string sandboxId, int count, int entries);
}
