using System.Diagnostics;
using System.Text;
using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol.Messages;

namespace Moat.Agent.Tests;

/// <summary>
/// The agent as PID 1 of its own pid namespace (unshare, with a private /proc), as in a sandbox.
/// Accounts are not touched (--no-setup-accounts): the root file system here is the host's.
/// </summary>
public sealed class Pid1Tests
{
    private static async Task<(AgentProcess Agent, int AgentPid)> StartAsPid1Async()
    {
        var agent = await AgentProcess.StartAsync(null, "unshare --pid --fork --mount-proc --kill-child", "--no-setup-accounts");
        // The agent is the child of unshare.
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var children = File.ReadAllText($"/proc/{agent.Pid}/task/{agent.Pid}/children").Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (children.Length == 1)
                return (agent, int.Parse(children[0]));
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), "unshare started no agent");
            await Task.Delay(10);
        }
    }

    private static ExecRequest Shell(string script)
    {
        var e = new ExecRequest { User = "root" };
        e.Argv.AddRange(["/bin/sh", "-c", script]);
        return e;
    }

    [Fact]
    public async Task As_pid_1_it_reaps_orphans()
    {
        var (agent, agentPid) = await StartAsPid1Async();
        await using var _ = agent;
        await using var client = await agent.ConnectAsync();
        var r = await client.RunAsync(Shell("echo $$; (sleep 0.3 &); (sleep 0.3 &); exit 0"));
        Assert.Equal("1", (await client.RunAsync(Shell("cat /proc/1/stat | cut -d' ' -f1"))).Stdout.Trim());
        await Task.Delay(1200);
        // Nothing left below the agent: the orphans were re-parented to it and reaped, not left as zombies.
        var left = (await client.RunAsync(Shell("for p in /proc/[0-9]*; do [ \"$(cut -d' ' -f3 $p/stat)\" = Z ] && echo zombie; done; echo end"))).Stdout;
        Assert.Equal("end\n", left);
    }

    [Fact]
    public async Task As_pid_1_it_refuses_connections_from_inside_the_sandbox()
    {
        var (agent, _) = await StartAsPid1Async();
        await using var __ = agent;
        await using var client = await agent.ConnectAsync();
        string script = $"import socket; s=socket.socket(socket.AF_UNIX); s.connect('{agent.SocketPath}'); s.settimeout(5); print(repr(s.recv(10)))";
        var e = new ExecRequest { User = "root" };
        e.Argv.AddRange(["/usr/bin/python3", "-c", script]);
        var r = await client.RunAsync(e);
        Assert.Equal("b''", r.Stdout.Trim());
        // The host's connection was not replaced.
        Assert.Equal("still\n", (await client.ShellAsync("echo still")).Stdout);
        Assert.Null(client.GoAway);
    }

    [Fact]
    public async Task As_pid_1_SIGTERM_ends_everything_in_the_namespace()
    {
        var (agent, agentPid) = await StartAsPid1Async();
        await using var _ = agent;
        await using var client = await agent.ConnectAsync();
        // A daemon that left the command entirely: double fork plus setsid, TERM ignored.
        var r = await client.RunAsync(Shell("setsid sh -c 'trap \"\" TERM; sleep 100' > /dev/null 2>&1 < /dev/null & sleep 0.2; echo started"));
        Assert.Equal("started\n", r.Stdout);
        var before = Descendants(agentPid);
        Assert.NotEmpty(before);
        Posix.Kill(agentPid, 15);
        Assert.True(await agent.WaitForExitAsync(TimeSpan.FromSeconds(8)), "unshare/agent did not exit");
        await ExecTests.WaitGoneAsync(before);
    }

    private static List<int> Descendants(int root)
    {
        var result = new List<int>();
        var queue = new Queue<int>([root]);
        while (queue.TryDequeue(out int pid))
        {
            foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
            {
                string text;
                try
                {
                    text = File.ReadAllText(Path.Combine(task, "children"));
                }
                catch (IOException)
                {
                    continue;
                }
                foreach (var c in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                {
                    result.Add(int.Parse(c));
                    queue.Enqueue(int.Parse(c));
                }
            }
        }
        return result;
    }
}
