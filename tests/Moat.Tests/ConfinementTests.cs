using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>
/// What untrusted code can see and do inside a sandbox. Verdicts come from the host where the
/// attack aims at the host (its files, sysctls, processes); the sandbox's own report is only
/// used for what concerns the sandbox itself (its capabilities, its seccomp status).
/// </summary>
public sealed class ConfinementTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    private static Dictionary<string, string> Status(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(':', 2)).Where(p => p.Length == 2).ToDictionary(p => p[0].Trim(), p => p[1].Trim());

    [SkippableTheory]
    [InlineData(IsolationTier.Container, "user")]
    [InlineData(IsolationTier.Container, "root")]
    [InlineData(IsolationTier.Gvisor, "user")]
    [InlineData(IsolationTier.Gvisor, "root")]
    [InlineData(IsolationTier.Microvm, "user")]
    [InlineData(IsolationTier.Microvm, "root")]
    public async Task User_code_has_no_capabilities_and_no_new_privileges(IsolationTier tier, string user)
    {
        var sb = await CreateAsync(tier);
        var status = Status((await ShAsync(sb.Id, "cat /proc/self/status", user: user)).Stdout);
        Assert.Equal("0000000000000000", status["CapEff"]);
        Assert.Equal("0000000000000000", status["CapPrm"]);
        Assert.Equal("0000000000000000", status["CapBnd"]);
        // gVisor does not report ambient capabilities; where a kernel does, they are empty too.
        Assert.Equal("0000000000000000", status.GetValueOrDefault("CapAmb", "0000000000000000"));
        // prctl rather than /proc/self/status: gVisor's status file has no NoNewPrivs line.
        Assert.Equal("1\n", (await ShAsync(sb.Id, "python3 -c 'import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'", user: user)).Stdout);
        if (tier == IsolationTier.Container)
            Assert.Equal("2", status["Seccomp"]); // filter mode
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Nothing_of_the_platform_leaks_into_the_sandbox(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var instance = await InstanceAsync(sb.Id);
        var probe = await ShAsync(sb.Id, "cat /proc/1/environ 2>&1 | tr '\\0' '\\n'; echo ---; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '; echo ---; cat /proc/self/mountinfo; echo ---; env; ls -la /run /.moat /.moat/chan 2>&1", user: "root");
        var text = probe.Stdout + probe.Stderr;
        Assert.DoesNotContain(Node.DataDirectory, text);          // no host path of the sandbox's directory
        Assert.DoesNotContain(instance.Directory, text);
        Assert.DoesNotContain("MOAT_ADMIN_KEY", text);
        Assert.DoesNotContain("moat_", text);                     // no API key of any kind
        Assert.DoesNotContain("/var/lib/moat", text);
        if (tier == IsolationTier.Microvm)
        {
            // The agent's channel is a virtio-serial port with no node in the sandbox's /dev; root
            // cannot make one (mknod is denied) to reach it.
            var port = await ShAsync(sb.Id, "ls /dev | grep -c -e vport -e hvc -e ttyS -e '^vd' || true; "
                + "python3 -c \"import os,glob; d=open(glob.glob('/sys/class/virtio-ports/*/dev')[0]).read().split(':'); os.mknod('/tmp/port', 0o20600, os.makedev(int(d[0]), int(d[1])))\" 2>&1 | tail -1", user: "root");
            Assert.StartsWith("0\n", port.Stdout);
            Assert.Contains("Operation not permitted", port.Stdout);
        }
        else
        {
            // The agent's channel is not reachable by the unprivileged user.
            var user = await ShAsync(sb.Id, "ls /.moat/chan 2>&1; python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('/.moat/chan/agent.sock')\" 2>&1 | tail -1");
            Assert.True(user.Stdout.Contains("Permission denied") || user.Stdout.Contains("Invalid argument"), user.Stdout);
            Assert.DoesNotContain("agent.sock\n", user.Stdout);
        }
        // Only fds 0-2 are open in a command: no descriptor of the agent leaks.
        var fds = await ShAsync(sb.Id, "python3 -c 'import fcntl\nopen_fds=[]\nimport resource\nfor fd in range(resource.getrlimit(resource.RLIMIT_NOFILE)[1]):\n  try: fcntl.fcntl(fd, fcntl.F_GETFD); open_fds.append(fd)\n  except OSError: pass\nprint(open_fds)'");
        Assert.Equal("[0, 1, 2]\n", fds.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Masked_kernel_interfaces_are_empty_or_denied_and_host_values_unchanged(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var hostCorePattern = await File.ReadAllTextAsync("/proc/sys/kernel/core_pattern");
        var hostHostname = await File.ReadAllTextAsync("/proc/sys/kernel/hostname");
        var reads = await ShAsync(sb.Id, "for f in /proc/kcore /proc/keys /proc/sched_debug /proc/timer_list /proc/kallsyms; do printf '%s:%s\\n' $f $(head -c 64 $f 2>/dev/null | wc -c); done; ls /sys/firmware 2>&1 | wc -l", user: "root");
        foreach (var line in reads.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).SkipLast(1))
            Assert.EndsWith(":0", line);
        // In a microVM, /proc/sysrq-trigger reaches the guest's own kernel only: root may crash its
        // own VM with it (MicrovmTests checks that this fails only that sandbox), so not here.
        var sysrq = tier == IsolationTier.Microvm ? "" : "echo c > /proc/sysrq-trigger; echo $?; ";
        var writes = await ShAsync(sb.Id, "echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern; echo $?; " + sysrq + "echo pwned > /proc/sys/kernel/hostname; echo $?; sysctl -w kernel.panic=1 2>&1; echo $?", user: "root");
        Assert.DoesNotContain("\n0\n", "\n" + writes.Stdout);
        // Host oracle.
        Assert.Equal(hostCorePattern, await File.ReadAllTextAsync("/proc/sys/kernel/core_pattern"));
        Assert.Equal(hostHostname, await File.ReadAllTextAsync("/proc/sys/kernel/hostname"));
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Privileged_operations_are_denied(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var script = """
            mount -t tmpfs none /mnt 2>/dev/null && echo mount-ok
            unshare -Urm true 2>/dev/null && echo unshare-ok
            mknod /tmp/sda b 8 0 2>/dev/null && echo mknod-ok
            python3 -c "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)" 2>/dev/null && echo packet-ok
            python3 -c "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)" 2>/dev/null && echo raw-ok
            date -s '2001-01-01' >/dev/null 2>&1 && echo clock-ok
            chroot / true 2>/dev/null && echo chroot-ok
            echo done
            """;
        foreach (var user in new[] { "user", "root" })
        {
            var ran = await ShAsync(sb.Id, script, user: user);
            if (tier == IsolationTier.Container)
            {
                Assert.Equal("done\n", ran.Stdout);
                continue;
            }
            // gVisor and the microVM have kernels of their own: a device node made there is the
            // guest's and reaches no host disk. Contained, not necessarily denied.
            Assert.All(ran.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries), line => Assert.Contains(line, new[] { "done", "mknod-ok" }));
            Assert.Equal("unreadable\n", (await ShAsync(sb.Id, "head -c 512 /tmp/sda >/dev/null 2>&1 && echo readable || echo unreadable; rm -f /tmp/sda", user: "root")).Stdout);
        }
        Assert.True(Math.Abs((DateTime.UtcNow - DateTime.Parse((await ShAsync(sb.Id, "date -u +%FT%TZ")).Stdout.Trim()).ToUniversalTime()).TotalMinutes) < 5);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Setuid_binaries_do_not_grant_root(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        // Root (no capabilities) makes a setuid-root copy of id; user runs it: no_new_privs keeps uid 1000.
        await ShAsync(sb.Id, "cp /usr/bin/id /tmp/suid-id && chmod 4755 /tmp/suid-id", user: "root");
        var ran = await ShAsync(sb.Id, "/tmp/suid-id -u; su -c id root </dev/null 2>&1 | tail -1");
        Assert.StartsWith("1000\n", ran.Stdout);
        Assert.DoesNotContain("uid=0", ran.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Dangerous_syscalls_fail(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        // Raw syscall numbers (x86_64): each must fail with EPERM (1) or ENOSYS (38).
        var probe = """
            import ctypes, os, socket
            libc = ctypes.CDLL(None, use_errno=True)
            calls = {"keyctl": (250, 0, 0, 0), "bpf": (321, 0, 0, 0), "perf_event_open": (298, 0, 0, 0),
                     "userfaultfd": (323, 0, 0, 0), "io_uring_setup": (425, 1, 0, 0), "init_module": (175, 0, 0, 0),
                     "kexec_load": (246, 0, 0, 0), "open_by_handle_at": (304, 0, 0, 0), "add_key": (248, 0, 0, 0)}
            for name, (nr, *args) in calls.items():
                r = libc.syscall(nr, *args)
                print(name, "ok" if r >= 0 else os.strerror(ctypes.get_errno()) and ctypes.get_errno())
            for fam, name in ((40, "AF_VSOCK"), (38, "AF_ALG")):
                try:
                    socket.socket(fam, socket.SOCK_STREAM if fam == 40 else socket.SOCK_SEQPACKET); print(name, "ok")
                except OSError as e:
                    print(name, e.errno)
            """;
        await Manager.WriteFileAsync(sb.Id, Tenant, "/tmp/probe.py", new MemoryStream(System.Text.Encoding.UTF8.GetBytes(probe)), null, 0, CancellationToken.None);
        foreach (var user in new[] { "user", "root" })
        {
            var ran = await RunAsync(sb.Id, new CommandSpec { Argv = ["python3", "/tmp/probe.py"], User = user });
            Assert.Equal(0, ran.ExitCode);
            foreach (var line in ran.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                var parts = line.Split(' ');
                Assert.True(parts[1] is "1" or "38" or "97" or "22" or "93", $"{user}: {line} (expected EPERM/ENOSYS/EAFNOSUPPORT)");
            }
        }
    }
}
