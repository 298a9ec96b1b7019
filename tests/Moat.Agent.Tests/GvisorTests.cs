using System.Diagnostics;
using System.Text.Json.Nodes;
using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests;

/// <summary>
/// The agent under gVisor (runsc), which implements Linux in user space and differs in places
/// (no setfsuid, no close_range flags, its own procfs). A minimal OCI bundle: busybox as the
/// rootfs, the published agent bind-mounted read-only at /.moat, a host directory at
/// /.moat/chan, runsc --host-uds=create so the agent's socket is a real host socket. Skipped
/// where runsc or a static busybox is missing.
/// </summary>
public sealed class GvisorTests
{
    private static readonly string? Runsc = new[] { "/usr/bin/runsc", "/usr/local/bin/runsc" }.FirstOrDefault(File.Exists);
    private static readonly string? Busybox = new[] { "/usr/bin/busybox", "/bin/busybox" }.FirstOrDefault(File.Exists);

    private static async Task<(AgentProcess Agent, string Root, string Id)> StartAsync()
    {
        string dir = Path.Combine(Path.GetTempPath(), "moat-agent-gv-" + Guid.NewGuid().ToString("N")[..10]);
        // MOAT_AGENT_TEST_ROOTFS: an unpacked image to use instead (it is modified).
        string root = Environment.GetEnvironmentVariable("MOAT_AGENT_TEST_ROOTFS") ?? Path.Combine(dir, "rootfs");
        string chan = Path.Combine(dir, "chan");
        Directory.CreateDirectory(chan);
        if (!Directory.Exists(Path.Combine(root, "bin")))
        {
            foreach (var d in new[] { "bin", "tmp", "proc", "dev" })
                Directory.CreateDirectory(Path.Combine(root, d));
            File.Copy(Busybox!, Path.Combine(root, "bin", "busybox"));
            foreach (var tool in new[] { "sh", "ls", "cat", "stat", "id", "sha256sum", "cut", "mkfifo", "ln", "echo", "sleep", "readlink" })
                File.CreateSymbolicLink(Path.Combine(root, "bin", tool), "busybox");
        }
        Directory.CreateDirectory(Path.Combine(root, ".moat"));
        string[] caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP"];
        var capArray = new JsonArray(caps.Select(c => (JsonNode)c).ToArray());
        var config = new JsonObject
        {
            ["ociVersion"] = "1.0.0",
            ["process"] = new JsonObject
            {
                ["terminal"] = false,
                ["user"] = new JsonObject { ["uid"] = 0, ["gid"] = 0 },
                ["args"] = new JsonArray("/.moat/lib/ld-linux-x86-64.so.2", "--library-path", "/.moat/lib", "/.moat/moat-agent", "--listen", "unix:/.moat/chan/agent.sock"),
                ["env"] = new JsonArray("PATH=/bin"),
                ["cwd"] = "/",
                ["capabilities"] = new JsonObject { ["bounding"] = capArray.DeepClone(), ["effective"] = capArray.DeepClone(), ["permitted"] = capArray.DeepClone() },
            },
            ["root"] = new JsonObject { ["path"] = root, ["readonly"] = false },
            ["mounts"] = new JsonArray(
                new JsonObject { ["destination"] = "/proc", ["type"] = "proc", ["source"] = "proc" },
                new JsonObject { ["destination"] = "/dev", ["type"] = "tmpfs", ["source"] = "tmpfs", ["options"] = new JsonArray("nosuid", "mode=755") },
                new JsonObject { ["destination"] = "/.moat", ["type"] = "bind", ["source"] = AgentBinary.Directory, ["options"] = new JsonArray("rbind", "ro") },
                new JsonObject { ["destination"] = "/.moat/chan", ["type"] = "bind", ["source"] = chan, ["options"] = new JsonArray("rbind", "rw") }),
            ["linux"] = new JsonObject { ["namespaces"] = new JsonArray(new JsonObject { ["type"] = "pid" }, new JsonObject { ["type"] = "mount" }, new JsonObject { ["type"] = "ipc" }, new JsonObject { ["type"] = "uts" }, new JsonObject { ["type"] = "network" }) },
        };
        await File.WriteAllTextAsync(Path.Combine(dir, "config.json"), config.ToJsonString());
        string id = "moat-agent-test-" + Guid.NewGuid().ToString("N")[..10];
        var agent = await AgentProcess.StartCommandAsync(Runsc!, ["--network=none", "--host-uds=create", "--ignore-cgroups", "run", "--bundle", dir, id], dir, Path.Combine(chan, "agent.sock"));
        return (agent, root, id);
    }

    private static async Task StopAsync(AgentProcess agent, string id)
    {
        using (var kill = Process.Start(Runsc!, ["kill", id, "KILL"]))
            await kill.WaitForExitAsync();
        await agent.WaitForExitAsync(TimeSpan.FromSeconds(10));
        using (var delete = Process.Start(Runsc!, ["delete", "-force", id]))
            await delete.WaitForExitAsync();
        await agent.DisposeAsync();
    }

    [SkippableFact]
    public async Task Under_gvisor_commands_and_files_work_as_the_user()
    {
        Skip.If(Runsc is null || Busybox is null || Environment.UserName != "root", "needs runsc, a static busybox and root");
        var (agent, root, id) = await StartAsync();
        try
        {
            await using var client = await agent.ConnectAsync();
            Assert.Equal("1000 1000\n", (await client.RunAsync(new ExecRequest { Argv = { "/bin/sh", "-c", "echo $(id -u) $(id -g)" } })).Stdout);

            // File operations as the user: gVisor has no setfsuid, the agent switches euid instead.
            var stream = await client.StartAsync(new Request { FileWrite = new FileWriteRequest { Path = "/home/user/data/blob.bin", CreateParents = true, User = "user" } });
            await client.SendDataAsync(stream, FrameType.FileData, new byte[100_000], final: true);
            var written = await stream.CollectAsync();
            Assert.Null(written.Error);
            Assert.Equal(1000u, written.Final.FileInfo.Uid);
            var ran = await client.RunAsync(new ExecRequest { Argv = { "/bin/sh", "-c", "sha256sum /home/user/data/blob.bin | cut -d' ' -f1; stat -c '%U %a' /home/user/data/blob.bin /home/user/data" } });
            Assert.True(ran.Stderr.Length == 0, ran.Stderr);
            Assert.EndsWith("\nuser 644\nuser 755\n", ran.Stdout);

            // The user's permissions apply, and the agent is root again afterwards.
            var secret = await client.RunAsync(new ExecRequest { User = "root", Argv = { "/bin/sh", "-c", "echo s > /secret; chmod 600 /secret" } });
            Assert.Equal(0, secret.Exit!.ExitCode);
            Assert.Equal("permission_denied", (await client.RequestAsync(new Request { FileRead = new FileReadRequest { Path = "/secret", User = "user" } })).Error!.Code);
            Assert.Equal("s\n", System.Text.Encoding.UTF8.GetString((await client.RequestAsync(new Request { FileRead = new FileReadRequest { Path = "/secret" } })).FileBytes));

            // FIFOs are refused at once; symlinks resolve inside.
            await client.RunAsync(new ExecRequest { User = "root", Argv = { "/bin/sh", "-c", "mkfifo /tmp/fifo; ln -s / /tmp/root-link" } });
            Assert.Equal("not_a_file", (await client.RequestAsync(new Request { FileRead = new FileReadRequest { Path = "/tmp/fifo" } })).Error!.Code);
            var viaLink = await client.StartAsync(new Request { FileWrite = new FileWriteRequest { Path = "/tmp/root-link/tmp/through-link" } });
            await client.SendDataAsync(viaLink, FrameType.FileData, "inside"u8.ToArray(), final: true);
            Assert.Null((await viaLink.CollectAsync()).Error);
            // (runsc keeps /tmp in its own tmpfs: read it back through the agent.)
            Assert.Equal("inside", System.Text.Encoding.UTF8.GetString((await client.RequestAsync(new Request { FileRead = new FileReadRequest { Path = "/tmp/through-link" } })).FileBytes));

            // Only 0, 1 and 2 reach a command.
            var fds = await client.RunAsync(new ExecRequest { User = "root", Argv = { "/bin/ls", "-l", "/proc/self/fd" } });
            var links = System.Text.RegularExpressions.Regex.Matches(fds.Stdout, @"\s(\d+) -> (.*)$", System.Text.RegularExpressions.RegexOptions.Multiline)
                .ToDictionary(m => int.Parse(m.Groups[1].Value), m => m.Groups[2].Value);
            Assert.Contains(2, links.Keys);
            Assert.All(links.Where(kv => kv.Key > 2), kv => Assert.Matches(@"/proc/(\d+|self)/fd$", kv.Value));
        }
        finally
        {
            await StopAsync(agent, id);
        }
    }
}
