using System.Diagnostics;
using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests;

/// <summary>
/// The agent as a sandbox runs it: PID 1 of a new pid and mount namespace, chrooted into a root
/// file system that holds nothing but /.moat (the published layout) and one static program — no
/// libc, no shell, no /etc. It mounts /proc, /sys and /dev itself (--init-mounts, private to the
/// namespace) and creates the sandbox user.
/// </summary>
public sealed class SandboxRootfsTests
{
    private const string Probe = """
        #include <stdio.h>
        #include <stdlib.h>
        #include <unistd.h>
        int main(void) {
            char cwd[256];
            if (!getcwd(cwd, sizeof cwd)) return 2;
            printf("%d %d %s %s %s\n", (int)getuid(), (int)getgid(), cwd, getenv("HOME"), getenv("USER"));
            return 0;
        }
        """;

    private static async Task<(AgentProcess Agent, string Root)> StartInRootfsAsync()
    {
        string dir = Path.Combine(Path.GetTempPath(), "moat-agent-rootfs-" + Guid.NewGuid().ToString("N")[..12]);
        string root = Path.Combine(dir, "rootfs");
        string moat = Path.Combine(root, ".moat");
        Directory.CreateDirectory(Path.Combine(moat, "lib"));
        Directory.CreateDirectory(Path.Combine(moat, "chan"));
        Directory.CreateDirectory(Path.Combine(root, "bin"));
        File.Copy(AgentBinary.Agent, Path.Combine(moat, "moat-agent"));
        foreach (var lib in Directory.GetFiles(Path.Combine(AgentBinary.Directory, "lib")))
            File.Copy(lib, Path.Combine(moat, "lib", Path.GetFileName(lib)));
        File.WriteAllText(Path.Combine(dir, "probe.c"), Probe);
        var gcc = Process.Start(new ProcessStartInfo("gcc", ["-static", "-O2", "-o", Path.Combine(root, "bin", "probe"), Path.Combine(dir, "probe.c")]) { RedirectStandardError = true })!;
        string gccErrors = await gcc.StandardError.ReadToEndAsync();
        await gcc.WaitForExitAsync();
        Assert.True(gcc.ExitCode == 0, gccErrors);

        var agent = await AgentProcess.StartCommandAsync("unshare",
            ["--pid", "--fork", "--mount", "--propagation", "private", "--kill-child", "--root", root,
             "/.moat/lib/ld-linux-x86-64.so.2", "--library-path", "/.moat/lib", "/.moat/moat-agent",
             "--listen", "unix:/.moat/chan/agent.sock", "--init-mounts", "--exit-on-stdin-eof"],
            dir, Path.Combine(moat, "chan", "agent.sock"));
        return (agent, root);
    }

    [Fact]
    public async Task In_an_empty_rootfs_the_agent_creates_the_user_and_runs_commands_as_it()
    {
        var (agent, root) = await StartInRootfsAsync();
        await using var _ = agent;
        await using var client = await agent.ConnectAsync();

        var exec = new ExecRequest();
        exec.Argv.Add("/bin/probe");
        var r = await client.RunAsync(exec);
        Assert.Equal("1000 1000 /home/user /home/user user\n", r.Stdout);

        Assert.Contains("user:x:1000:1000::/home/user:/bin/sh", await File.ReadAllTextAsync(Path.Combine(root, "etc", "passwd")));
        Assert.Contains("user:x:1000:", await File.ReadAllTextAsync(Path.Combine(root, "etc", "group")));
        var tmp = (await client.RequestAsync(new Request { Stat = new StatRequest { Path = "/tmp" } })).Final.FileInfo;
        Assert.Equal(0x3FFu /* 01777 */, tmp.Mode & 0xFFF);

        var home = (await client.RequestAsync(new Request { Stat = new StatRequest { Path = "/home/user" } })).Final.FileInfo;
        Assert.Equal((1000u, 1000u, "user", "user"), (home.Uid, home.Gid, home.Owner, home.Group));

        // The agent mounted its own /proc: PID 1 is the agent.
        var cmdline = await client.RequestAsync(new Request { FileRead = new FileReadRequest { Path = "/proc/1/cmdline" } });
        Assert.Contains("moat-agent", System.Text.Encoding.UTF8.GetString(cmdline.FileBytes));

        var devNull = (await client.RequestAsync(new Request { Stat = new StatRequest { Path = "/dev/null" } })).Final.FileInfo;
        Assert.Equal(FileType.CharDevice, devNull.Type);
        var devFd = (await client.RequestAsync(new Request { Stat = new StatRequest { Path = "/dev/fd" } })).Final.FileInfo;
        Assert.Equal("/proc/self/fd", devFd.SymlinkTarget);

        // Files written as the user belong to the user and land inside the rootfs.
        var stream = await client.StartAsync(new Request { FileWrite = new FileWriteRequest { Path = "notes.txt", User = "user" } });
        await client.SendDataAsync(stream, FrameType.FileData, "hello"u8.ToArray(), final: true);
        var written = (await stream.CollectAsync()).Final.FileInfo;
        Assert.Equal("/home/user/notes.txt", written.Path);
        Assert.Equal(1000u, written.Uid);
        Assert.Equal("hello", await File.ReadAllTextAsync(Path.Combine(root, "home", "user", "notes.txt")));

        var root0 = new ExecRequest { User = "root" };
        root0.Argv.Add("/bin/probe");
        Assert.Equal("0 0 /root / root\n".Replace(" /root /", Directory.Exists(Path.Combine(root, "root")) ? " /root /root" : " / /root"), (await client.RunAsync(root0)).Stdout);
    }
}
