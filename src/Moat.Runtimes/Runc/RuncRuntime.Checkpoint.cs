using Moat.Core.Host;
using Moat.Core.Runtimes;

namespace Moat.Runtimes.Runc;

/// <summary>
/// The container tier takes filesystem snapshots only. Its memory snapshots would need CRIU, and
/// CRIU works only where <c>criu check</c> passes (on kernels of the kind Moat is developed on it
/// fails on the vDSO); until a CRIU path exists the tier says so, with what <c>criu check</c> said.
/// </summary>
public sealed partial class RuncRuntime : ISandboxRuntime
{
    private string? _criuVerdict;

    /// <inheritdoc />
    public string? MemorySnapshotProblem => _criuVerdict ??= CriuVerdict(Runner);

    private static string CriuVerdict(ProcessRunner runner)
    {
        try
        {
            var check = runner.RunAsync("criu", ["check"], new HostCommandOptions { Check = false, Timeout = TimeSpan.FromSeconds(20) }, CancellationToken.None).GetAwaiter().GetResult();
            if (check.ExitCode != 0)
            {
                var why = (check.Stderr + check.Stdout).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? "no output";
                return $"CRIU cannot checkpoint on this kernel (`criu check` fails: {why})";
            }
            return "CRIU checkpoints of containers are not supported by Moat yet (`criu check` passes here)";
        }
        catch (Core.Errors.MoatException)
        {
            return "CRIU is not installed, and container memory snapshots would need it";
        }
    }
}
