using Moat.Contracts;

namespace Moat.Client.Tests.Unit;

/// <summary>The README's example compiles against the public API (it is not run: it needs a server).</summary>
public sealed class ReadmeSampleTests
{
    [Fact]
    public void The_readme_sample_compiles() => Assert.NotNull((Func<CancellationToken, Task>)SampleAsync);

    private static async Task SampleAsync(CancellationToken ct)
    {

        using var client = MoatClient.FromEnvironment();           // MOAT_URL (default http://127.0.0.1:8080), MOAT_API_KEY
        // or: new MoatClient(new MoatClientOptions { BaseUrl = new Uri("http://127.0.0.1:8080"), ApiKey = "moat_..." });

        CapabilitiesResponse caps = await client.GetCapabilitiesAsync(ct);

        await using Sandbox sb = await client.CreateSandboxAsync(new SandboxCreateOptions
        {
            Template = "base", Isolation = "container", MemoryMiB = 512, Cpus = 1, DiskMiB = 1024,
            Timeout = TimeSpan.FromMinutes(5),
            Env = { ["MODE"] = "test" }, Metadata = { ["owner"] = "me" },
        }, ct);                                                      // disposing kills it (KillOnDispose = false to keep it)

        CommandResult r = await sb.Commands.RunAsync("echo hi", ct);                       // shell line: /bin/sh -c
        CommandResult p = await sb.Commands.RunAsync(["python3", "-c", "print(1)"], new CommandOptions
        {
            Cwd = "/tmp", User = "root", Stdin = "input", Timeout = TimeSpan.FromSeconds(30),
            Env = { ["A"] = "1" },
            OnStdout = s => Console.Write(s),                        // callbacks: output is streamed as produced
            OnStderr = s => Console.Error.Write(s),
            ThrowOnNonZero = true,                                   // CommandExitException on exit != 0
        }, ct);

        await foreach (CommandEvent e in sb.Commands.StreamAsync("make test", ct))
        {
            switch (e)
            {
                case CommandEvent.Started s: break;                  // s.Pid
                case CommandEvent.Stdout o: Console.Write(o.Text); break;
                case CommandEvent.Stderr o: Console.Error.Write(o.Text); break;
                case CommandEvent.Exited x: break;                   // x.ExitCode, x.TimedOut, x.OomKilled, x.Duration
            }
        }                                                            // leaving the loop early kills the command

        await sb.Files.WriteAsync("/home/user/a.txt", "text", ct);   // string, ReadOnlyMemory<byte> or Stream (streamed)
        string text = await sb.Files.ReadTextAsync("/home/user/a.txt", ct);
        await using Stream download = await sb.Files.OpenReadAsync("/home/user/big.bin", ct);
        IReadOnlyList<FileEntryDto> entries = await sb.Files.ListAsync("/home/user", depth: 2, ct);
        await sb.Files.AsUser("root").MakeDirAsync("/opt/tool", ct);

        await sb.SetTimeoutAsync(TimeSpan.FromMinutes(10), ct);
        SandboxDto info = await sb.GetInfoAsync(ct);

        Sandbox again = await client.ConnectAsync(sb.Id, ct);
        IReadOnlyList<SandboxDto> running = await client.ListSandboxesAsync(state: "running", metadata: new Dictionary<string, string> { ["owner"] = "me" }, cancellationToken: ct);
        RunResponse one = await client.RunAsync(new RunRequest { Language = "python", Code = "print(1)" }, ct);
        _ = (caps, r, p, text, download, entries, info, again, running, one);
    }
}
