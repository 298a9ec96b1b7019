using Microsoft.Extensions.Options;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Runtimes.Agent;

/// <summary>
/// The agent as a read-only image layer: <c>/.moat/moat-agent</c>, <c>/.moat/lib/</c> (loader and
/// libraries) and <c>/.moat/chan/</c>, stacked above the template's layers. Being part of the
/// overlay rather than a bind mount, it shows no host path inside the sandbox, and it shadows
/// anything an image puts at /.moat.
/// </summary>
public sealed class AgentLayer(IOptions<SandboxManagerOptions> options)
{
    private readonly object _gate = new();
    private string? _path;
    private string? _stampSeen;

    /// <summary>Where the published agent is (moat-agent and lib/).</summary>
    public string SourceDirectory => options.Value.AgentDirectory;

    /// <summary>The layer directory for the current agent build, made once per build.</summary>
    public string Path
    {
        get
        {
            var source = options.Value.AgentDirectory;
            var stamp = Stamp(source);
            lock (_gate)
            {
                if (_path is not null && _stampSeen == stamp)
                    return _path;
                _path = Ensure(source, stamp);
                _stampSeen = stamp;
                return _path;
            }
        }
    }

    private string Ensure(string source, string stamp)
    {
        var layers = System.IO.Path.Combine(options.Value.DataDirectory, "layers");
        var target = System.IO.Path.Combine(layers, $"moat-agent-{stamp}");
        if (Directory.Exists(target))
            return target;
        var staging = $"{target}.{Environment.ProcessId}.partial";
        if (Directory.Exists(staging))
            Directory.Delete(staging, recursive: true);
        var moat = System.IO.Path.Combine(staging, ".moat");
        Directory.CreateDirectory(System.IO.Path.Combine(moat, "lib"));
        Directory.CreateDirectory(System.IO.Path.Combine(moat, "chan"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        File.Copy(System.IO.Path.Combine(source, "moat-agent"), System.IO.Path.Combine(moat, "moat-agent"));
        foreach (var lib in Directory.EnumerateFiles(System.IO.Path.Combine(source, "lib")))
            File.Copy(lib, System.IO.Path.Combine(moat, "lib", System.IO.Path.GetFileName(lib)));
        try
        {
            Directory.Move(staging, target);
        }
        catch (IOException) when (Directory.Exists(target))
        {
            // Another process staged the same build first.
            Directory.Delete(staging, recursive: true);
        }
        return target;
    }

    private static string Stamp(string source)
    {
        var agent = System.IO.Path.Combine(source, "moat-agent");
        if (!File.Exists(agent))
            throw new MoatException(ErrorKind.Unavailable, "agent_missing", $"moat-agent is not built (looked in '{source}'); run ./run.sh");
        var stampFile = System.IO.Path.Combine(source, ".stamp");
        if (File.Exists(stampFile))
            return File.ReadAllText(stampFile).Trim()[..16];
        var info = new FileInfo(agent);
        return $"{info.Length:x}{info.LastWriteTimeUtc.Ticks:x}"[..16];
    }
}
