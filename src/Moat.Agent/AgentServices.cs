using Moat.Agent.Core;
using Moat.Agent.Files;
using Moat.Agent.Processes;
using Moat.Agent.Usage;
using Moat.Agent.Users;

namespace Moat.Agent;

/// <summary>What every session shares: the I/O loop, the commands, files, usage and shutdown.</summary>
internal sealed class AgentServices
{
    public required EventLoop Loop { get; init; }
    public required ProcessSupervisor Processes { get; init; }
    public required FileService Files { get; init; }
    public required UsageCollector Usage { get; init; }
    public required WorkerPool Workers { get; init; }
    public required ShutdownCoordinator Shutdown { get; init; }
    public required IdleTrimmer Idle { get; init; }
    public required long StartedUnixMs { get; init; }
    public required string KernelRelease { get; init; }
}

/// <summary>Facts about this build of the agent.</summary>
internal static class AgentInfo
{
    public static string Version => typeof(AgentInfo).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";
}
