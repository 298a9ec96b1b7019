using System.Diagnostics;
using System.Text;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>
/// More of SECURITY.md's catalogue, on every tier: runtime escapes, exhaustion of threads, inodes
/// and /dev/shm, output floods, the default-deny network, ptrace, and lifecycle races. Verdicts
/// come from the host where the attack aims at the host.
/// </summary>
public sealed class AttackTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task The_agent_binary_and_proc_exe_cannot_be_overwritten(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var hostAgent = Path.Combine(Repo.AgentDirectory, "moat-agent");
        var before = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(await File.ReadAllBytesAsync(hostAgent)));
        // CVE-2019-5736 class: write through /proc/<pid>/exe of a process the platform started.
        var ran = await ShAsync(sb.Id, "for p in /proc/1/exe /proc/self/exe; do (echo pwned > $p) 2>/dev/null && echo wrote-$p; done; (echo pwned > /.moat/moat-agent) 2>/dev/null && echo wrote-agent; echo done", user: "root");
        Assert.DoesNotContain("wrote-/proc/1/exe", ran.Stdout);
        // Host oracle: the agent binary on the host is unchanged, whatever the sandbox's view says.
        Assert.Equal(before, Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(await File.ReadAllBytesAsync(hostAgent))));
        // CVE-2024-21626 class: a cwd through a leaked descriptor. Only 0-2 exist, so /proc/self/fd/N
        // for anything else is absent and a command started there is refused.
        var ex = await Assert.ThrowsAsync<MoatException>(() => ShAsync(sb.Id, "pwd", cwd: "/proc/self/fd/7"));
        Assert.Equal(ErrorKind.InvalidArgument, ex.Kind);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Ptrace_of_other_processes_is_denied(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var ran = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "import ctypes,os; libc=ctypes.CDLL(None,use_errno=True); r=libc.ptrace(16, 1, 0, 0); print(r, ctypes.get_errno())"], User = "root" });
        // PTRACE_ATTACH to the agent (pid 1) fails: EPERM from seccomp or from missing capabilities.
        Assert.StartsWith("-1 ", ran.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_thread_bomb_stops_at_the_limit(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, pids: 128);
        try
        {
            var ran = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "import threading,time\nn=0\ntry:\n  while True:\n    threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); n+=1\nexcept Exception as e: print('stopped', n < 1000)"], Timeout = TimeSpan.FromSeconds(20) });
            Assert.Contains("stopped True", ran.Stdout);
        }
        catch (AgentUnavailableException) when (tier == IsolationTier.Gvisor)
        {
            // gVisor (ptrace platform) maps threads to host tasks: the Sentry may be the one that runs out.
            var ended = await WaitForEndAsync(sb.Id, TimeSpan.FromSeconds(60));
            Assert.StartsWith(SandboxManager.PidsReason, ended.StateReason);
            return;
        }
        Assert.Equal("alive\n", (await ShAsync(sb.Id, "echo alive")).Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Inode_and_shm_exhaustion_stay_inside(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, diskMiB: 32, memoryMiB: 128);
        var inodes = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "import os\nos.makedirs('/home/user/i', exist_ok=True)\nn=0\ntry:\n  while n < 200000:\n    open(f'/home/user/i/{n}','w').close(); n+=1\nexcept OSError as e: print('stopped', e.errno)\nelse: print('not stopped')"], Timeout = TimeSpan.FromSeconds(60) });
        Assert.Contains("stopped 28", inodes.Stdout); // ENOSPC: out of inodes on the sandbox's own volume
        var shm = await ShAsync(sb.Id, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=1000 2>&1 | tail -1; rm -f /dev/shm/fill; echo after", timeout: TimeSpan.FromSeconds(60));
        Assert.Contains("after", shm.Stdout);
        Assert.Equal("alive\n", (await ShAsync(sb.Id, "rm -rf /home/user/i; echo alive")).Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task An_output_flood_without_newlines_keeps_host_memory_bounded(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        GC.Collect();
        long before = Process.GetCurrentProcess().WorkingSet64;
        await using var cmd = await Manager.StartCommandAsync(sb.Id, Tenant, new CommandSpec { Shell = "head -c 300000000 /dev/urandom" }, CancellationToken.None);
        long seen = 0;
        long peak = 0;
        int reads = 0;
        await foreach (var chunk in cmd.ReadOutputAsync())
        {
            seen += chunk.Data.Length;
            // A slow reader: the command blocks on its pipe; the host does not buffer for it.
            if (++reads % 200 == 0)
            {
                await Task.Delay(5);
                peak = Math.Max(peak, Process.GetCurrentProcess().WorkingSet64);
            }
        }
        Assert.Equal(300_000_000, seen);
        Assert.True(peak - before < 200L << 20, $"host working set grew by {(peak - before) >> 20} MiB while streaming 300 MB");
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Nothing_leaves_a_sandbox_without_network(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var probe = """
            import socket
            for host, port in (("1.1.1.1", 53), ("169.254.169.254", 80), ("10.0.0.1", 80), ("192.168.0.1", 80)):
                s = socket.socket(); s.settimeout(3)
                try:
                    s.connect((host, port)); print(host, "connected")
                except OSError as e:
                    print(host, "refused", e.errno)
            try:
                socket.getaddrinfo("example.com", 443); print("dns answered")
            except OSError:
                print("no dns")
            s = socket.socket(socket.AF_INET6); s.settimeout(3)
            try:
                s.connect(("2606:4700:4700::1111", 53)); print("v6 connected")
            except OSError as e:
                print("v6 refused", e.errno)
            """;
        await Manager.WriteFileAsync(sb.Id, Tenant, "/tmp/net.py", new MemoryStream(Encoding.UTF8.GetBytes(probe)), null, 0, CancellationToken.None);
        var ran = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "/tmp/net.py"], Timeout = TimeSpan.FromSeconds(60) });
        Assert.DoesNotContain("connected", ran.Stdout);
        Assert.Contains("no dns", ran.Stdout);
        // Only loopback exists.
        var links = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "-c", "import socket; print([n for _, n in socket.if_nameindex()])"] });
        Assert.Equal("['lo']\n", links.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Deleting_during_an_exec_ends_both_cleanly(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var instance = await InstanceAsync(sb.Id);
        var running = Manager.RunCommandAsync(sb.Id, Tenant, new CommandSpec { Shell = "while :; do echo tick; sleep 0.1; done" }, default, CancellationToken.None);
        await Task.Delay(500);
        var deletes = await Task.WhenAll(Enumerable.Range(0, 3).Select(_ => Manager.DeleteAsync(sb.Id, Tenant, CancellationToken.None)).Select(async t => { await t; return true; }));
        Assert.All(deletes, Assert.True);
        var ex = await Assert.ThrowsAnyAsync<MoatException>(() => running);
        Assert.IsType<AgentUnavailableException>(ex);
        Assert.Empty(HostOracle.Leftovers(instance, Path.Combine(Node.DataDirectory, tier == IsolationTier.Gvisor ? "runsc-state" : "runc-state")));
        var afterwards = await Assert.ThrowsAsync<MoatException>(() => ShAsync(sb.Id, "true"));
        Assert.Equal("sandbox_not_running", afterwards.Code);
    }
}
