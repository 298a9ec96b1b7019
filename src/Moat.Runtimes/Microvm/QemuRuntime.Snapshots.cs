using Moat.Core.Runtimes;

namespace Moat.Runtimes.Microvm;

/// <summary>Snapshots of the microVM tier (kept apart from the machine's lifecycle code).</summary>
public sealed partial class QemuRuntime
{
    /// <summary>
    /// The guest's disk is not readable by the host while the VM runs, so there is no filesystem
    /// snapshot; the memory snapshot (QEMU migration to a file with the disk overlay) is not built yet.
    /// </summary>
    public IReadOnlyList<string> SnapshotKinds => [];

    /// <inheritdoc />
    public string? MemorySnapshotProblem => "microVM memory snapshots (QEMU migration to a file with the disk overlay) are not implemented yet";
}
