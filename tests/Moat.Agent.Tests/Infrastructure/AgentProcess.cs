using System.Diagnostics;
using System.Text;

namespace Moat.Agent.Tests.Infrastructure;

/// <summary>
/// A real moat-agent started on the host (not as PID 1) through its bundled loader, exactly as a
/// sandbox starts it, listening on a socket in a private temporary directory.
/// </summary>
public sealed class AgentProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();

    private AgentProcess(Process process, string dir)
    {
        _process = process;
        Dir = dir;
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
                lock (_stderr)
                    _stderr.AppendLine(e.Data);
        };
        process.BeginErrorReadLine();
    }

    public string Dir { get; }

    public string SocketPath { get; private init; } = "";

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    public string Stderr
    {
        get { lock (_stderr) return _stderr.ToString(); }
    }

    public static Task<AgentProcess> StartAsync(params string[] extraArgs) => StartAsync(null, null, extraArgs);

    /// <summary>
    /// Starts the agent; <paramref name="listen"/> overrides the default Unix socket and
    /// <paramref name="wrapperCommand"/> runs it under another program (unshare, strace).
    /// </summary>
    public static async Task<AgentProcess> StartAsync(string? listen, string? wrapperCommand, params string[] extraArgs)
    {
        string dir = Path.Combine(Path.GetTempPath(), "moat-agent-test-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(dir);
        // MOAT_AGENT_TEST_WRAPPER (e.g. "strace -f -o /tmp/x") runs the agent under a tool.
        var wrapper = (wrapperCommand ?? Environment.GetEnvironmentVariable("MOAT_AGENT_TEST_WRAPPER"))?.Split(' ', StringSplitOptions.RemoveEmptyEntries) ?? [];
        var args = new List<string>(wrapper.Skip(1));
        if (wrapper.Length > 0)
            args.Add(AgentBinary.Loader);
        args.AddRange(["--library-path", Path.Combine(AgentBinary.Directory, "lib"), AgentBinary.Agent, "--listen", listen ?? "unix:" + Path.Combine(dir, "agent.sock"), "--exit-on-stdin-eof"]);
        args.AddRange(extraArgs);
        return await StartCommandAsync(wrapper.Length > 0 ? wrapper[0] : AgentBinary.Loader, args, dir, listen is null ? Path.Combine(dir, "agent.sock") : null);
    }

    /// <summary>Starts any command line that runs an agent; waits for <paramref name="socketPath"/> to appear when given.</summary>
    public static async Task<AgentProcess> StartCommandAsync(string fileName, IEnumerable<string> args, string dir, string? socketPath)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        // The agent must not pass its own environment to commands; give it something to leak.
        psi.Environment["MOAT_AGENT_SECRET"] = "must-not-leak";
        var process = Process.Start(psi)!;
        var agent = new AgentProcess(process, dir) { SocketPath = socketPath ?? Path.Combine(dir, "agent.sock") };
        var sw = Stopwatch.StartNew();
        while (socketPath is not null && !File.Exists(socketPath))
        {
            if (process.HasExited)
                throw new InvalidOperationException($"the agent exited with {process.ExitCode}: {agent.Stderr}");
            if (sw.Elapsed > TimeSpan.FromSeconds(20))
                throw new TimeoutException("the agent did not create its socket: " + agent.Stderr);
            await Task.Delay(5);
        }
        return agent;
    }

    /// <summary>Connects and completes the handshake.</summary>
    public Task<AgentClient> ConnectAsync(bool autoGrant = true) => AgentClient.ConnectAsync(SocketPath, autoGrant: autoGrant);

    public void Signal(int signal) => Posix.Kill(_process.Id, signal);

    /// <summary>Closes the agent's stdin, as the death of the process that started it would.</summary>
    public void CloseStdin() => _process.StandardInput.Close();

    /// <summary>The direct children of a process, when the process wraps the agent.</summary>
    private List<int> Children(int pid)
    {
        try
        {
            if (File.ReadAllText($"/proc/{pid}/comm").Trim().StartsWith("ld-linux"))
                return [pid]; // the agent itself
            return File.ReadAllText($"/proc/{pid}/task/{pid}/children").Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToList();
        }
        catch (IOException)
        {
            return [];
        }
    }

    public async Task<bool> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>
    /// Deletes a test directory without ever crossing into another file system: a rootfs test
    /// mounts /dev (the host's devtmpfs!) below it, which must never be emptied.
    /// </summary>
    internal static void DeleteTree(string path)
    {
        try
        {
            var rootDevice = Posix.Device(path);
            if (rootDevice is null)
                return;
            Delete(path, rootDevice.Value);
        }
        catch (Exception)
        {
            // Best effort: a leftover temporary directory is harmless.
        }

        static void Delete(string dir, ulong device)
        {
            if (Posix.Device(dir) != device)
                return; // a mount point: leave it alone
            foreach (var entry in new DirectoryInfo(dir).EnumerateFileSystemInfos())
            {
                if (entry is DirectoryInfo d && d.LinkTarget is null)
                    Delete(d.FullName, device);
                else
                    entry.Delete();
            }
            System.IO.Directory.Delete(dir);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            // Under a wrapper (unshare) the agent is its child: signal the agent itself, so that
            // the wrapper reaps it and exits, rather than killing the wrapper and leaving the
            // agent to the machine's init as a zombie.
            foreach (int child in Children(_process.Id))
                Posix.Kill(child, 15);
            if (!await WaitForExitAsync(TimeSpan.FromSeconds(5)))
                Posix.Kill(_process.Id, 15);
            if (!await WaitForExitAsync(TimeSpan.FromSeconds(5)))
                _process.Kill();
        }
        _process.Dispose();
        DeleteTree(Dir);
    }
}

/// <summary>The few POSIX calls the tests make.</summary>
internal static class Posix
{
    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static extern int Kill(int pid, int signal);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mkfifo", SetLastError = true)]
    public static extern int MkFifo(string path, int mode);

    /// <summary>st_dev of a path (not following a final symlink), or null.</summary>
    public static ulong? Device(string path)
    {
        // struct stat on x86-64: st_dev is the first field (8 bytes).
        var buffer = new byte[256];
        return lstat(path, buffer) == 0 ? BitConverter.ToUInt64(buffer, 0) : null;
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int lstat(string path, byte[] buffer);
}
