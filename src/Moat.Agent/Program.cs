using System.Text;
using Moat.Agent.Core;
using Moat.Agent.Diagnostics;
using Moat.Agent.Files;
using Moat.Agent.Init;
using Moat.Agent.Interop;
using Moat.Agent.Processes;
using Moat.Agent.Session;
using Moat.Agent.Transport;
using Moat.Agent.Usage;
using Moat.Agent.Users;

namespace Moat.Agent;

/// <summary>
/// moat-agent: PID 1 of every sandbox. Started as
/// <c>/.moat/lib/ld-linux-x86-64.so.2 --library-path /.moat/lib /.moat/moat-agent --listen unix:/.moat/chan/agent.sock</c>.
/// </summary>
internal static unsafe class Program
{
    private const string Usage = "usage: moat-agent --listen unix:PATH|virtio:NAME [--init-mounts] [--setup-accounts|--no-setup-accounts] [--exit-on-stdin-eof] [--verbose]\n"
        + "       moat-agent --vm --listen virtio:NAME [--hostname NAME] [--memory-mib N] [--pids N] [--nofile N] [--net ADDR/PREFIX,GATEWAY,DNS,MTU]   (init of a microVM's initramfs)";

    private static int Main(string[] args)
    {
        int code = Run(args);
        // PID 1 of a VM never returns: the kernel would panic.
        if (VmInit.IsGuest)
            VmInit.PowerOff();
        return code;
    }

    private static int Run(string[] args)
    {
        string? listen = null;
        bool initMounts = false, setupAccounts = false, noSetupAccounts = false, exitOnStdinEof = false, vm = false, probe = false;
        var vmSettings = new VmSettings();
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--vm":
                    vm = true;
                    break;
                case "--probe":
                    probe = true;
                    break;
                case "--hostname" when i + 1 < args.Length:
                    vmSettings = vmSettings with { Hostname = args[++i] };
                    break;
                case "--memory-mib" when i + 1 < args.Length && long.TryParse(args[i + 1], out long mib) && mib > 0:
                    vmSettings = vmSettings with { MemoryBytes = mib << 20 };
                    i++;
                    break;
                case "--pids" when i + 1 < args.Length && long.TryParse(args[i + 1], out long pids) && pids > 0:
                    vmSettings = vmSettings with { Pids = pids };
                    i++;
                    break;
                case "--nofile" when i + 1 < args.Length && ulong.TryParse(args[i + 1], out ulong nofile) && nofile > 0:
                    vmSettings = vmSettings with { OpenFiles = nofile };
                    i++;
                    break;
                case "--net" when i + 1 < args.Length && GuestNetworkSettings.Parse(args[i + 1]) is { } net:
                    vmSettings = vmSettings with { Network = net };
                    i++;
                    break;
                case "--listen" when i + 1 < args.Length:
                    listen = args[++i];
                    break;
                case "--init-mounts":
                    initMounts = true;
                    break;
                case "--setup-accounts":
                    setupAccounts = true;
                    break;
                case "--no-setup-accounts":
                    noSetupAccounts = true;
                    break;
                case "--exit-on-stdin-eof":
                    exitOnStdinEof = true;
                    break;
                case "--verbose":
                    AgentLog.Verbose = true;
                    break;
                case "--version":
                    Libc.WriteAll(1, Encoding.UTF8.GetBytes($"moat-agent {AgentInfo.Version}\n"));
                    return 0;
                default:
                    AgentLog.Write(Usage);
                    return 2;
            }
        }
        if (vm && probe)
        {
            // The host's test boot (is this accelerator usable?): alive, and power off.
            Libc.WriteAll(1, "moat-agent: probe ok\n"u8);
            VmInit.IsGuest = true;
            return 0;
        }
        if (listen is null)
        {
            AgentLog.Write(Usage);
            return 2;
        }

        bool pid1 = Libc.getpid() == 1;
        if (vm)
        {
            if (!listen.StartsWith("virtio:", StringComparison.Ordinal) || !VmInit.Run(vmSettings, listen["virtio:".Length..]))
            {
                AgentLog.Write("the VM cannot serve a sandbox; powering off");
                return 1;
            }
            // A /dev like the container tiers': a tmpfs with the usual nodes, no disks, no console.
            InitMounts.Run(minimalDev: true);
            VmInit.Harden();
        }
        else if (initMounts)
            InitMounts.Run();
        PrepareProcess(pid1);
        // Before any agent thread exists, so all inherit it: no command can ever gain a capability.
        if (Spawner.Privileged)
            Native.moat_drop_bounding_set(Spawner.LastCap);
        int signalFd = Native.moat_init_signals();

        var users = new UserDatabase();
        // On a real sandbox the agent is PID 1; anywhere else (tests, development on a host) the
        // accounts are the host's and must not be touched unless asked for.
        if ((pid1 || setupAccounts) && !noSetupAccounts)
            SandboxAccountSetup.Run(users);

        var loop = new EventLoop();
        var table = new ProcessTable();
        var processes = new ProcessSupervisor(loop, table, users);
        var workers = new WorkerPool(64);
        var shutdown = new ShutdownCoordinator(processes, table);
        var services = new AgentServices
        {
            Loop = loop,
            Processes = processes,
            Files = new FileService(users, workers),
            Usage = new UsageCollector(table, ownKernel: pid1 && (initMounts || listen.StartsWith("virtio:", StringComparison.Ordinal))),
            Workers = workers,
            Shutdown = shutdown,
            Idle = new IdleTrimmer(loop),
            StartedUnixMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
            KernelRelease = KernelRelease(),
        };
        IAgentTransport? parkable = null;
        if (signalFd >= 0)
            loop.Post(() => loop.Add(signalFd, Native.EPOLLIN, new SignalPipe(signalFd, shutdown, () => parkable)));
        if (exitOnStdinEof)
            loop.Post(() => loop.Add(0, Native.EPOLLIN, new StdinWatch(shutdown)));
        loop.Start();
        table.StartReaper();

        IAgentTransport transport;
        try
        {
            transport = IAgentTransport.Create(listen);
        }
        catch (Exception ex)
        {
            AgentLog.Write(ex.Message);
            return 1;
        }
        parkable = transport;
        AgentLog.Info($"listening on {listen} (pid {Libc.getpid()})");
        Serve(transport, services);
        return 0;
    }

    /// <summary>Accepts host connections forever, one session at a time.</summary>
    private static void Serve(IAgentTransport transport, AgentServices services)
    {
        AgentSession? current = null;
        Thread? currentThread = null;
        while (true)
        {
            if (!transport.ReplacesOnAccept && currentThread is not null)
                currentThread.Join();
            var channel = transport.Accept();
            if (channel is null)
            {
                // Parked for a memory checkpoint: no connection may stay open while it is taken.
                if (transport.ParkIfRequested(() =>
                {
                    current?.Close("checkpoint", "the sandbox is being checkpointed; connect again afterwards");
                    currentThread?.Join(TimeSpan.FromSeconds(5));
                    current = null;
                    currentThread = null;
                }))
                    continue;
                return;
            }
            // The newest connection wins: a restarted host simply connects again.
            current?.Close("replaced", "a newer connection replaced this one");
            var session = new AgentSession(channel, services);
            var thread = new Thread(session.Run, 256 * 1024) { IsBackground = true, Name = "moat-session" };
            try
            {
                thread.Start();
            }
            catch (Exception ex)
            {
                // No thread to be had (the sandbox is at its pids limit): refuse this connection
                // and keep listening; the host retries.
                AgentLog.Write($"cannot serve a connection: {ex.Message}");
                channel.Dispose();
                Thread.Sleep(100);
                continue;
            }
            current = session;
            currentThread = thread;
        }
    }

    private static void PrepareProcess(bool pid1)
    {
        // fds 0-2 must be open, or the first pipe would land on them and be clobbered by dup2.
        for (int fd = 0; fd <= 2; fd++)
        {
            if (Libc.fcntl(fd, 1 /* F_GETFD */, 0) < 0)
            {
                fixed (byte* p = "/dev/null\0"u8)
                    Libc.open(p, Libc.O_RDWR, 0);
            }
        }
        Libc.umask(0x12 /* 0022 */);
        // Hold no directory of the rootfs busy; every path the agent uses is absolute.
        fixed (byte* root = "/\0"u8)
            chdir(root);
        // Not dumpable: sandbox code running as root (without capabilities) must not read the
        // agent's memory or file descriptors through /proc/1.
        Libc.prctl(Libc.PR_SET_DUMPABLE, 0, 0, 0, 0);
        if (!pid1)
            Libc.prctl(Libc.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); // orphans come to us, as to PID 1
        // The OOM killer should pick user code, never the agent.
        fixed (byte* p = "/proc/self/oom_score_adj\0"u8)
        {
            int fd = Libc.open(p, Libc.O_WRONLY | Libc.O_CLOEXEC, 0);
            if (fd >= 0)
            {
                if (Libc.WriteAll(fd, "-1000"u8) != 0)
                    AgentLog.Info("cannot set oom_score_adj");
                Libc.close(fd);
            }
        }
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int chdir(byte* path);

    private static string KernelRelease()
    {
        byte* buffer = stackalloc byte[256];
        int n = Native.moat_kernel_release(buffer, 256);
        return n > 0 ? Encoding.UTF8.GetString(buffer, n) : "";
    }

    // Development and tests: whoever started the agent holds its stdin pipe; when that process
    // dies, however it dies, the agent follows instead of lingering.
    private sealed class StdinWatch(ShutdownCoordinator shutdown) : IFdHandler
    {
        public void OnEvents(uint events)
        {
            byte* buffer = stackalloc byte[256];
            nint n = Libc.read(0, buffer, 256);
            if (n == 0 || (n < 0 && Libc.Errno != Libc.EAGAIN && Libc.Errno != Libc.EINTR))
                shutdown.Begin("stdin closed", 2000, 0);
        }
    }

    private sealed class SignalPipe(int fd, ShutdownCoordinator shutdown, Func<IAgentTransport?> transport) : IFdHandler
    {
        private const int SIGUSR1 = 10, SIGUSR2 = 12;

        public void OnEvents(uint events)
        {
            byte* buffer = stackalloc byte[16];
            nint n = Libc.read(fd, buffer, 16);
            for (int i = 0; i < n; i++)
            {
                if (buffer[i] == SIGUSR1)
                    transport()?.RequestPark();
                else if (buffer[i] == SIGUSR2)
                    transport()?.RequestUnpark();
                else
                    shutdown.Begin($"signal {buffer[i]}", 2000, 128 + buffer[i]);
            }
        }
    }
}
