using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>
/// A server that goes away and comes back: running sandboxes are re-adopted (their agent answers
/// on the same socket), and what cannot be re-adopted is ended and cleaned — including a sandbox
/// whose root user replaced the agent's socket with a listener of its own.
/// </summary>
public sealed class RestartTests
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_restarted_node_readopts_running_sandboxes(IsolationTier tier)
    {
        var first = new NodeFixture { Abandon = true };
        await first.InitializeAsync();
        var status = (await first.Manager.Runtimes.StatusAsync(CancellationToken.None)).Single(s => s.Tier == tier);
        if (!status.Usable)
        {
            first.Abandon = false;
            await first.DisposeAsync();
            Skip.If(true, $"tier {tier.Name()} is not usable on this host: {status.Reason}");
        }
        var sandbox = await first.Manager.CreateAsync(NodeFixture.Spec(tier), NodeFixture.Tenant, CancellationToken.None);
        await first.Manager.RunCommandAsync(sandbox.Id, NodeFixture.Tenant, new CommandSpec { Shell = "echo kept > /home/user/state" }, default, CancellationToken.None);
        await first.DisposeAsync(); // the "server" goes away; the sandbox keeps running

        var second = NodeFixture.OnExisting(first.DataDirectory);
        try
        {
            await second.InitializeAsync();
            var record = await second.Manager.GetAsync(sandbox.Id, NodeFixture.Tenant, CancellationToken.None);
            Assert.Equal(SandboxState.Running, record.State);
            var ran = await second.Manager.RunCommandAsync(sandbox.Id, NodeFixture.Tenant, new CommandSpec { Shell = "cat /home/user/state" }, default, CancellationToken.None);
            Assert.Equal("kept\n", System.Text.Encoding.UTF8.GetString(ran.Stdout));
        }
        finally
        {
            await second.DisposeAsync();
        }
        Assert.Empty(HostOracle.Leftovers(sandbox.Instance!, Path.Combine(first.DataDirectory, "runc-state")));
    }

    [SkippableFact]
    public async Task An_impersonated_agent_socket_fails_only_that_sandbox()
    {
        var first = new NodeFixture { Abandon = true };
        await first.InitializeAsync();
        var sandbox = await first.Manager.CreateAsync(NodeFixture.Spec(IsolationTier.Container), NodeFixture.Tenant, CancellationToken.None);
        var honest = await first.Manager.CreateAsync(NodeFixture.Spec(IsolationTier.Container), NodeFixture.Tenant, CancellationToken.None);
        // Root code inside replaces the agent's socket with its own listener, then waits for the host.
        var fake = "import socket,os,time\nos.unlink('/.moat/chan/agent.sock')\ns=socket.socket(socket.AF_UNIX); s.bind('/.moat/chan/agent.sock'); s.listen(1)\nopen('/tmp/ready','w').close()\nc,_=s.accept(); c.recv(64); c.sendall(b'\\x00'*64); time.sleep(60)";
        await first.Manager.WriteFileAsync(sandbox.Id, NodeFixture.Tenant, "/tmp/fake.py", new MemoryStream(System.Text.Encoding.UTF8.GetBytes(fake)), "root", 0, CancellationToken.None);
        await using (var impostor = await first.Manager.StartCommandAsync(sandbox.Id, NodeFixture.Tenant, new CommandSpec { Argv = ["python3", "/tmp/fake.py"], User = "root", KeepOutput = true }, CancellationToken.None))
        {
            for (int i = 0; i < 100; i++)
            {
                var ready = await first.Manager.RunCommandAsync(sandbox.Id, NodeFixture.Tenant, new CommandSpec { Shell = "test -e /tmp/ready && echo yes || true" }, default, CancellationToken.None);
                if (ready.Stdout.Length > 0)
                    break;
                await Task.Delay(100);
            }
        }
        await first.DisposeAsync();

        var second = NodeFixture.OnExisting(first.DataDirectory);
        try
        {
            await second.InitializeAsync();
            var impersonated = await second.Manager.GetAsync(sandbox.Id, NodeFixture.Tenant, CancellationToken.None);
            Assert.Equal(SandboxState.Failed, impersonated.State);
            Assert.Contains("impersonated", impersonated.StateReason);
            Assert.Empty(HostOracle.Leftovers(sandbox.Instance!, Path.Combine(first.DataDirectory, "runc-state")));
            // The other sandbox was re-adopted and works.
            var ran = await second.Manager.RunCommandAsync(honest.Id, NodeFixture.Tenant, new CommandSpec { Argv = ["echo", "fine"] }, default, CancellationToken.None);
            Assert.Equal("fine\n", System.Text.Encoding.UTF8.GetString(ran.Stdout));
        }
        finally
        {
            await second.DisposeAsync();
        }
    }
}
