using System.Diagnostics;
using System.Text;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;

namespace Moat.Core.Host;

/// <summary>How to run a host command.</summary>
public sealed record HostCommandOptions
{
    /// <summary>Fail with <see cref="HostCommandException"/> on a non-zero exit.</summary>
    public bool Check { get; init; } = true;
    /// <summary>Kill the command after this long.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Bytes of stdout and of stderr kept; the rest is dropped.</summary>
    public int MaxOutput { get; init; } = 1 << 20;
    /// <summary>Bytes written to stdin, then closed.</summary>
    public byte[]? Stdin { get; init; }
    /// <summary>Extra environment.</summary>
    public IReadOnlyDictionary<string, string>? Env { get; init; }
    /// <summary>
    /// For commands that hand their stdout/stderr to a long-lived child (<c>runc run -d</c>):
    /// do not wait for end-of-file; after the exit, keep forwarding lines from the inherited
    /// pipes to this callback until the child closes them.
    /// </summary>
    public Action<string>? InheritedOutput { get; init; }
}

/// <summary>What a host command did.</summary>
public sealed record HostCommandResult(int ExitCode, string Stdout, string Stderr, TimeSpan Elapsed);

/// <summary>A host command failed.</summary>
public sealed class HostCommandException(string command, HostCommandResult result)
    : MoatException(ErrorKind.Internal, "host_command_failed", $"{command} exited with {result.ExitCode}: {Tail(result.Stderr.Length > 0 ? result.Stderr : result.Stdout)}")
{
    /// <summary>The result.</summary>
    public HostCommandResult Result { get; } = result;

    private static string Tail(string s)
    {
        s = s.Trim();
        return s.Length > 2000 ? "…" + s[^2000..] : s;
    }
}

/// <summary>The one way Moat runs programs on the host (runc, runsc, qemu, mount helpers...).</summary>
public sealed partial class ProcessRunner(ILogger<ProcessRunner> logger)
{
    /// <summary>Runs a program to completion.</summary>
    public async Task<HostCommandResult> RunAsync(string program, IEnumerable<string> args, HostCommandOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new HostCommandOptions();
        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
            psi.ArgumentList.Add(arg);
        if (options.Env is not null)
        {
            foreach (var (k, v) in options.Env)
                psi.Environment[k] = v;
        }
        var clock = Stopwatch.StartNew();
        using var process = new Process { StartInfo = psi };
        try
        {
            process.Start();
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            throw new MoatException(ErrorKind.Unavailable, "host_program_missing", $"cannot run {program}: {ex.Message}", ex);
        }
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.Timeout);
        try
        {
            if (options.Stdin is { } stdin)
                await process.StandardInput.BaseStream.WriteAsync(stdin, timeout.Token).ConfigureAwait(false);
            process.StandardInput.Close();

            string stdout, stderr;
            if (options.InheritedOutput is { } sink)
            {
                await process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
                if (process.ExitCode != 0)
                {
                    // Failed: no child kept the pipes, so they end right after the program's message.
                    stdout = await ReadBoundedAsync(process.StandardOutput, options.MaxOutput, timeout.Token).ConfigureAwait(false);
                    stderr = await ReadBoundedAsync(process.StandardError, options.MaxOutput, timeout.Token).ConfigureAwait(false);
                }
                else
                {
                    Forward(process.StandardOutput, sink);
                    Forward(process.StandardError, sink);
                    stdout = stderr = "";
                }
            }
            else
            {
                var outTask = ReadBoundedAsync(process.StandardOutput, options.MaxOutput, timeout.Token);
                var errTask = ReadBoundedAsync(process.StandardError, options.MaxOutput, timeout.Token);
                await process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
                stdout = await outTask.ConfigureAwait(false);
                stderr = await errTask.ConfigureAwait(false);
            }
            var result = new HostCommandResult(process.ExitCode, stdout, stderr, clock.Elapsed);
            LogRan(logger, program, result.ExitCode, result.Elapsed.TotalMilliseconds);
            if (options.Check && result.ExitCode != 0)
                throw new HostCommandException($"{Path.GetFileName(program)} {string.Join(' ', psi.ArgumentList.Take(3))}", result);
            return result;
        }
        catch (OperationCanceledException) when (!process.HasExited)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }
            if (cancellationToken.IsCancellationRequested)
                throw;
            throw new MoatException(ErrorKind.Timeout, "host_command_timeout", $"{program} did not finish within {options.Timeout.TotalSeconds:0} s");
        }
    }

    private static async Task<string> ReadBoundedAsync(StreamReader reader, int max, CancellationToken cancellationToken)
    {
        var sb = new StringBuilder();
        var buffer = new char[8192];
        int n;
        while ((n = await reader.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
        {
            int room = max - sb.Length;
            if (room > 0)
                sb.Append(buffer, 0, Math.Min(room, n));
        }
        return sb.ToString();
    }

    /// <summary>
    /// Forwards lines from a pipe a sandbox holds to <paramref name="sink"/> until it closes. The
    /// other end belongs to the sandbox: lines are cut at 4 KiB and forwarding stops after 1 MiB.
    /// </summary>
    private static void Forward(StreamReader reader, Action<string> sink) => _ = Task.Run(async () =>
    {
        var buffer = new char[4096];
        var line = new StringBuilder();
        long forwarded = 0;
        try
        {
            int n;
            while ((n = await reader.ReadAsync(buffer).ConfigureAwait(false)) > 0)
            {
                forwarded += n;
                if (forwarded > 1 << 20)
                    continue;
                for (int i = 0; i < n; i++)
                {
                    if (buffer[i] == '\n' || line.Length >= 4096)
                    {
                        sink(line.ToString());
                        line.Clear();
                        if (buffer[i] == '\n')
                            continue;
                    }
                    line.Append(buffer[i]);
                }
            }
            if (line.Length > 0)
                sink(line.ToString());
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
        }
        finally
        {
            reader.Dispose();
        }
    });

    [LoggerMessage(Level = LogLevel.Debug, Message = "{Program} exited {ExitCode} in {Milliseconds:0.0} ms")]
    private static partial void LogRan(ILogger logger, string program, int exitCode, double milliseconds);
}
