using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
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

    private static readonly IReadOnlyDictionary<string, long> NoBaseline = new Dictionary<string, long>();

    /// <summary>Snapshots the filesystem of a running or paused sandbox as the template <paramref name="name"/>.</summary>
    public async Task<SandboxSnapshot> SnapshotAsync(string sandboxId, string tenantId, string name, CancellationToken cancellationToken)
    {
        TemplateStore.ValidName(name);
        if (await templates.GetExactAsync(name, tenantId, cancellationToken).ConfigureAwait(false) is not null)
            throw new MoatException(ErrorKind.Conflict, "template_exists", $"a template named '{name}' exists already: pick another name or delete it first");
        return await CaptureAsync(sandboxId, tenantId, name, hidden: false, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Starts <paramref name="count"/> sandboxes, each with its own identity, from the current filesystem of a sandbox.</summary>
    public async Task<IReadOnlyList<SandboxRecord>> ForkAsync(string sandboxId, string tenantId, int count, CancellationToken cancellationToken)
    {
        if (count < 1 || count > MaxForks)
            throw MoatException.Invalid("invalid_count", $"count must be between 1 and {MaxForks}, got {count}");
        var source = await manager.GetAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        await SweepForkTemplatesAsync(tenantId, cancellationToken).ConfigureAwait(false);
        var hidden = ForkPrefix + Guid.NewGuid().ToString("N")[..12];
        var snapshot = await CaptureAsync(sandboxId, tenantId, hidden, hidden: true, cancellationToken).ConfigureAwait(false);
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
            await templates.DeleteAsync(name, tenantId, cancellationToken).ConfigureAwait(false);
    }

    private const string ForkPrefix = "~fork-";

    private async Task<SandboxSnapshot> CaptureAsync(string sandboxId, string tenantId, string name, bool hidden, CancellationToken cancellationToken)
    {
        var sandbox = await manager.GetAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        if (sandbox.State is not (SandboxState.Running or SandboxState.Paused))
            throw new MoatException(ErrorKind.Conflict, "sandbox_not_running", $"sandbox {sandboxId} is {sandbox.State.Name()}: only a running or paused sandbox can be snapshotted");
        var upper = Path.Combine(OverlayRootfs.LayoutOf(Path.Combine(manager.Options.DataDirectory, "sandboxes", sandboxId)).ScratchMount, "upper");
        if (sandbox.Spec.Tier == IsolationTier.Microvm || !Directory.Exists(upper))
            throw new MoatException(ErrorKind.Unavailable, "snapshot_tier_unsupported", $"filesystem snapshots of {sandbox.Spec.Tier.Name()} sandboxes are not available yet: the microVM's disk is not readable by the host while it runs (use the container or gvisor tier)");
        var template = await templates.GetAsync(sandbox.Spec.Template, tenantId, cancellationToken).ConfigureAwait(false)
            ?? throw new MoatException(ErrorKind.Conflict, "template_gone", $"the template '{sandbox.Spec.Template}' of sandbox {sandboxId} no longer exists");

        // Frozen, nothing in the sandbox can change the tree while it is read; a sandbox the caller
        // had paused stays paused.
        bool pausedHere = false;
        if (sandbox.State == SandboxState.Running)
        {
            await manager.PauseAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
            pausedHere = true;
        }
        string? layer;
        int entries = 0;
        try
        {
            layer = await templates.AddTarLayerAsync(async tar =>
            {
                entries = await LayerDiff.WriteAsync(upper, NoBaseline, LayerDiff.PlatformEntries, tar, templates.Images.Limits, cancellationToken).ConfigureAwait(false);
                return entries;
            }, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (pausedHere)
                await manager.ResumeAsync(sandboxId, tenantId, CancellationToken.None).ConfigureAwait(false);
        }
        var layers = template.Layers.ToList();
        if (layer is not null)
            layers.Add(layer);
        var record = new TemplateRecord
        {
            Tenant = tenantId,
            Name = name,
            ImageId = ImageAssembly.DigestOf(Encoding.UTF8.GetBytes(string.Join('\n', layers) + JsonSerializer.Serialize(template.Config, StorageJson.Default.ImageConfig))),
            Layers = layers,
            Config = template.Config,
            Start = template.Start,
            Source = $"{SourcePrefix}{sandboxId} ({template.Name})",
        };
        var saved = hidden
            ? await templates.SaveHiddenAsync(record, cancellationToken).ConfigureAwait(false)
            : await templates.SaveAsync(record, cancellationToken).ConfigureAwait(false);
        LogSnapshot(logger, sandboxId, name, entries);
        return new SandboxSnapshot(saved, sandboxId, entries);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId}: filesystem snapshot {Name} ({Entries} changed entries)")]
    private static partial void LogSnapshot(ILogger logger, string sandboxId, string name, int entries);

    [LoggerMessage(Level = LogLevel.Information, Message = "Sandbox {SandboxId}: forked {Count} sandboxes ({Entries} changed entries)")]
    private static partial void LogForked(ILogger logger, string sandboxId, int count, int entries);
}
