using System.Diagnostics;
using Moat.Agent.Core;
using Moat.Agent.Diagnostics;
using Moat.Agent.Init;
using Moat.Agent.Interop;
using Moat.Agent.Session;
using Moat.Agent.Users;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Agent.Processes;

/// <summary>
/// Commands: exec, attach, signals, listings, and the I/O of every running command. Requests
/// arrive on the session's reader thread (which spawns, so a fork never waits behind I/O); from
/// then on a command's pipes, credit, retained output and exit are handled on the loop thread.
/// </summary>
internal sealed unsafe class ProcessSupervisor
{
    /// <summary>Running commands at once; one more is answered <c>busy</c>.</summary>
    public const int MaxRunning = 4096;
    /// <summary>Exited commands kept for late attaches and listings.</summary>
    public const int RetainExited = 64;
    /// <summary>How long output pipes held open by background children are waited for after the exit.</summary>
    public const int DrainMs = 100;

    private readonly ProcessTable _table;
    private readonly Spawner _spawner;
    private readonly UserDatabase _users;
    private readonly List<ProcessEntry> _live = [];
    private readonly LinkedList<ProcessEntry> _retained = new();
    private byte[]? _scratch;
    private LoopTimer? _trimTimer;

    public ProcessSupervisor(EventLoop loop, ProcessTable table, UserDatabase users)
    {
        Loop = loop;
        _table = table;
        _users = users;
        _spawner = new Spawner(table);
        table.Exited = (entry, status, timestamp) => loop.Post(() => OnExited(entry, status, timestamp));
    }

    public EventLoop Loop { get; }

    public int TrackedCount => _table.Count;

    // ---------------------------------------------------------------- reader thread

    public void Exec(AgentSession session, uint id, ExecRequest request)
    {
        var stream = session.Open(new ExecStream(session, id, this, request.Stdin));
        if (stream is null)
            return;
        if (request.Argv.Count == 0 || request.Argv[0].Length == 0)
        {
            session.RespondError(stream, "invalid_argument", "argv is empty");
            return;
        }
        foreach (var a in request.Argv)
        {
            if (a.Contains('\0'))
            {
                session.RespondError(stream, "invalid_argument", "an argument contains NUL");
                return;
            }
        }
        if (_table.Count >= MaxRunning)
        {
            session.RespondError(stream, "busy", $"{MaxRunning} commands are already running");
            return;
        }
        var user = _users.Resolve(request.User, UserDatabase.DefaultUserName);
        if (user is null)
        {
            session.RespondError(stream, "no_such_user", $"no user '{request.User}' in the sandbox's /etc/passwd");
            return;
        }
        if (!Spawner.Privileged && user.Uid != Libc.geteuid())
        {
            session.RespondError(stream, "permission_denied", $"the agent is not root and can run commands only as itself, not as '{user.Name}'");
            return;
        }
        var env = CommandLine.ComposeEnvironment(request.Env, user, out string? envError, out string searchPath, terminal: request.Pty is not null);
        if (env is null)
        {
            session.RespondError(stream, "invalid_argument", envError!);
            return;
        }
        string cwd = request.Cwd;
        if (cwd.Contains('\0'))
        {
            session.RespondError(stream, "invalid_argument", "cwd contains NUL");
            return;
        }
        if (cwd.Length == 0)
            cwd = Directory.Exists(user.Home) ? user.Home : "/";
        else if (cwd[0] != '/')
            cwd = user.Home.TrimEnd('/') + "/" + cwd;

        string? program = CommandLine.Resolve(request.Argv[0], searchPath, cwd);
        if (program is null)
        {
            session.RespondError(stream, "not_found", $"{request.Argv[0]}: command not found");
            return;
        }

        var entry = new ProcessEntry
        {
            Argv = [.. request.Argv],
            Tag = request.Tag,
            User = user.Name,
            Cwd = cwd,
            Pty = request.Pty is not null,
            KeepOutput = request.KeepOutput || request.Detached,
            TimeoutMs = request.TimeoutMs,
            StartedUnixMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
            OomKillsAtStart = GuestConfinement.OomKills(),
        };

        if (!CreateStdio(entry, request, user, out var fds, out string? stdioError))
        {
            session.RespondError(stream, "internal", stdioError!);
            return;
        }
        var plan = new SpawnPlan(program, request.Argv, env, cwd, fds.ChildIn, fds.ChildOut, fds.ChildErr, entry.Pty, user);
        bool ok = _spawner.TrySpawn(entry, plan, out var stage, out int errno);
        fds.CloseChildEnds();
        if (!ok)
        {
            fds.CloseParentEnds();
            var (code, message) = DescribeSpawnFailure(stage, errno, request.Argv[0], program, cwd);
            session.RespondError(stream, code, message, errno);
            return;
        }

        Libc.SetNonBlocking(fds.ParentOut);
        if (fds.ParentErr >= 0)
            Libc.SetNonBlocking(fds.ParentErr);
        if (fds.ParentIn >= 0)
            Libc.SetNonBlocking(fds.ParentIn);
        entry.Stdout = new OutputChannel(entry, FrameType.Stdout, fds.ParentOut, Pump);
        if (fds.ParentErr >= 0)
            entry.Stderr = new OutputChannel(entry, FrameType.Stderr, fds.ParentErr, Pump);
        if (fds.ParentIn >= 0)
            entry.Stdin = new StdinChannel(entry, fds.ParentIn, entry.Pty, WriteStdin);

        stream.Process = entry;
        // Detached: the stream ends with "started"; Register then finds it ended and keeps the
        // output in the ring for a later attach.
        session.Respond(stream, new Response { Started = new ExecStarted { Pid = entry.Pid } }, final: request.Detached);
        Loop.Post(() => Register(entry, stream));
        AgentLog.Info($"exec pid {entry.Pid}: {request.Argv[0]}");
    }

    public void Attach(AgentSession session, uint id, AttachRequest request)
    {
        var stream = session.Open(new ExecStream(session, id, this, request.Stdin));
        if (stream is null)
            return;
        if (request.Pid <= 0 && request.Tag.Length == 0)
        {
            session.RespondError(stream, "invalid_argument", "attach needs a pid or a tag");
            return;
        }
        Loop.Post(() => DoAttach(stream, request));
    }

    public void Signal(AgentSession session, uint id, SignalRequest request)
    {
        var stream = session.Open(new SimpleStream(session, id));
        if (stream is null)
            return;
        if (request.Pid <= 1 || request.Pid == Libc.getpid())
        {
            session.RespondError(stream, "invalid_argument", $"pid {request.Pid} cannot be signalled");
            return;
        }
        if (request.Signal is < 0 or > 64)
        {
            session.RespondError(stream, "invalid_argument", $"signal {request.Signal} is out of range");
            return;
        }
        int r = Libc.kill(request.Group ? -request.Pid : request.Pid, request.Signal);
        if (r < 0)
        {
            int e = Libc.Errno;
            session.RespondError(stream, e == Libc.ESRCH ? "not_found" : e == Libc.EPERM ? "permission_denied" : "invalid_argument", $"kill failed (errno {e})", e);
            return;
        }
        session.Respond(stream, new Response { Ok = new Ok() }, final: true);
    }

    public void List(AgentSession session, uint id)
    {
        var stream = session.Open(new SimpleStream(session, id));
        if (stream is null)
            return;
        Loop.Post(() =>
        {
            var list = new ProcessList();
            int budget = session.PeerMaxPayload - 4096;
            foreach (var e in _live.Concat(_retained))
            {
                var info = Describe(e);
                budget -= info.CalculateSize() + 8;
                if (budget < 0)
                    break;
                list.Processes.Add(info);
            }
            session.Respond(stream, new Response { Processes = list }, final: true);
        });
    }

    private static ProcessInfo Describe(ProcessEntry e)
    {
        var info = new ProcessInfo
        {
            Pid = e.Pid, Tag = e.Tag, Running = e.Running, User = e.User, Cwd = e.Cwd,
            StartedUnixMs = e.StartedUnixMs, Pty = e.Pty,
        };
        foreach (var a in e.Argv.Take(64))
            info.Argv.Add(a.Length > 1024 ? a[..1024] : a);
        if (e.Status is not null)
            info.Exit = ExitOf(e);
        return info;
    }

    private readonly struct Stdio
    {
        public int ChildIn { get; init; }
        public int ChildOut { get; init; }
        public int ChildErr { get; init; }
        public int ParentIn { get; init; }
        public int ParentOut { get; init; }
        public int ParentErr { get; init; }

        public void CloseChildEnds()
        {
            // A terminal slave may be all three; close each descriptor once.
            var seen = new HashSet<int>();
            foreach (int fd in new[] { ChildIn, ChildOut, ChildErr })
            {
                if (fd >= 0 && seen.Add(fd))
                    Libc.close(fd);
            }
        }

        public void CloseParentEnds()
        {
            foreach (int fd in new[] { ParentIn, ParentOut, ParentErr })
            {
                if (fd >= 0)
                    Libc.close(fd);
            }
        }
    }

    private static bool CreateStdio(ProcessEntry entry, ExecRequest request, UserIdentity user, out Stdio stdio, out string? error)
    {
        stdio = default;
        error = null;
        int* p = stackalloc int[2];
        if (request.Pty is { } size)
        {
            int master, slave;
            int r = Native.moat_openpty(&master, &slave, (ushort)Math.Min(size.Cols, 65535u), (ushort)Math.Min(size.Rows, 65535u), user.Uid, user.Gid);
            if (r < 0)
            {
                error = $"cannot open a terminal (errno {-r})";
                return false;
            }
            int writer = request.Stdin ? Libc.fcntl(master, 1030 /* F_DUPFD_CLOEXEC */, 3) : -1;
            stdio = new Stdio { ChildIn = slave, ChildOut = slave, ChildErr = slave, ParentIn = writer, ParentOut = master, ParentErr = -1 };
            return true;
        }

        int childIn, parentIn = -1;
        if (request.Stdin)
        {
            if (Libc.pipe2(p, Libc.O_CLOEXEC) < 0)
            {
                error = $"pipe failed (errno {Libc.Errno})";
                return false;
            }
            childIn = p[0];
            parentIn = p[1];
        }
        else
        {
            fixed (byte* dn = "/dev/null\0"u8)
                childIn = Libc.open(dn, Libc.O_RDONLY | Libc.O_CLOEXEC, 0);
            if (childIn < 0)
            {
                // No /dev/null in this rootfs: an empty pipe whose writer is gone reads as EOF just the same.
                if (Libc.pipe2(p, Libc.O_CLOEXEC) < 0)
                {
                    error = $"pipe failed (errno {Libc.Errno})";
                    return false;
                }
                childIn = p[0];
                Libc.close(p[1]);
            }
        }
        if (Libc.pipe2(p, Libc.O_CLOEXEC) < 0)
        {
            error = $"pipe failed (errno {Libc.Errno})";
            Libc.close(childIn);
            if (parentIn >= 0)
                Libc.close(parentIn);
            return false;
        }
        int outR = p[0], outW = p[1];
        if (Libc.pipe2(p, Libc.O_CLOEXEC) < 0)
        {
            error = $"pipe failed (errno {Libc.Errno})";
            Libc.close(childIn);
            Libc.close(outR);
            Libc.close(outW);
            if (parentIn >= 0)
                Libc.close(parentIn);
            return false;
        }
        stdio = new Stdio { ChildIn = childIn, ChildOut = outW, ChildErr = p[1], ParentIn = parentIn, ParentOut = outR, ParentErr = p[0] };
        return true;
    }

    private static (string Code, string Message) DescribeSpawnFailure(SpawnStage stage, int errno, string argv0, string program, string cwd)
    {
        switch (stage)
        {
            case SpawnStage.Exec:
                return errno switch
                {
                    Libc.ENOENT => ("not_found", $"{argv0}: no such file ({program})"),
                    Libc.EACCES or Libc.EPERM => ("permission_denied", $"{argv0}: permission denied"),
                    Libc.ENOEXEC => ("invalid_argument", $"{argv0}: exec format error"),
                    Libc.E2BIG => ("too_large", "argument list and environment are too long"),
                    Libc.ETXTBSY => ("busy", $"{argv0}: text file busy"),
                    Libc.ENOTDIR => ("not_found", $"{argv0}: a path component is not a directory"),
                    Libc.ELOOP or Libc.ENAMETOOLONG => ("invalid_argument", $"{argv0}: bad path (errno {errno})"),
                    _ => ("internal", $"exec {program} failed (errno {errno})"),
                };
            case SpawnStage.Chdir:
                return errno switch
                {
                    Libc.ENOENT => ("not_found", $"working directory {cwd} does not exist"),
                    Libc.ENOTDIR => ("not_a_directory", $"working directory {cwd} is not a directory"),
                    Libc.EACCES or Libc.EPERM => ("permission_denied", $"working directory {cwd} is not accessible"),
                    _ => ("internal", $"chdir {cwd} failed (errno {errno})"),
                };
            case SpawnStage.Fork:
                return ("busy", $"cannot fork (errno {errno})");
            case SpawnStage.Cgroup:
                return ("internal", $"cannot place the command in the sandbox's cgroup (errno {errno})");
            case SpawnStage.SetUid or SpawnStage.SetGid or SpawnStage.SetGroups:
                return ("permission_denied", $"cannot switch to the user (stage {stage}, errno {errno})");
            default:
                return ("internal", $"spawn failed at {stage} (errno {errno})");
        }
    }

    // ---------------------------------------------------------------- loop thread

    private void Register(ProcessEntry e, ExecStream stream)
    {
        e.Registered = true;
        _live.Add(e);
        if (!stream.Ended)
            e.Attached = stream;
        ArmAll(e);
        if (e.TimeoutMs > 0 && e.Running)
            e.TimeoutTimer = Loop.Schedule(e.TimeoutMs, () => OnTimeout(e));
        MaybeSendFinals(e);
        if (!e.Running)
            StartDrain(e);
        TryComplete(e);
    }

    private void OnExited(ProcessEntry e, int status, long timestamp)
    {
        if (e.Failed)
            return;
        e.Status = status;
        e.ExitTimestamp = timestamp;
        e.TimeoutTimer?.Cancel();
        if (e.Registered)
            StartDrain(e);
        TryComplete(e);
    }

    private void OnTimeout(ProcessEntry e)
    {
        if (!e.Running)
            return;
        e.TimedOut = true;
        AgentLog.Info($"pid {e.Pid}: timeout after {e.TimeoutMs} ms");
        ProcessTree.KillCommand(e.Pid);
    }

    private void StartDrain(ProcessEntry e)
    {
        if (AllOutputClosed(e) || e.DrainTimer is not null)
            return;
        e.DrainTimer = Loop.Schedule(DrainMs, () => OnDrainDeadline(e));
    }

    // Background children still hold the pipes: deliver what is in them now, then close.
    private void OnDrainDeadline(ProcessEntry e)
    {
        foreach (var ch in Channels(e))
        {
            if (ch.Eof)
                continue;
            int available = 0;
            if (Libc.ioctl(ch.Fd, Libc.FIONREAD, &available) < 0)
                available = 0;
            ch.ClosingBudget = available;
            if (available == 0)
                CloseChannel(ch);
            else
                Pump(ch);
        }
    }

    private static bool AllOutputClosed(ProcessEntry e) => (e.Stdout is null || e.Stdout.Eof) && (e.Stderr is null || e.Stderr.Eof);

    private static IEnumerable<OutputChannel> Channels(ProcessEntry e)
    {
        if (e.Stdout is not null)
            yield return e.Stdout;
        if (e.Stderr is not null)
            yield return e.Stderr;
    }

    private static ExecStream? Live(ProcessEntry e) => e.Attached is { Ended: false } s ? s : null;

    private byte[] Scratch => _scratch ??= new byte[ProtocolConstants.DataChunk];

    private void Pump(OutputChannel ch)
    {
        if (ch.Eof)
            return;
        var e = ch.Owner;
        var s = Live(e);
        int want = ProtocolConstants.DataChunk;
        if (ch.ClosingBudget >= 0)
        {
            if (ch.ClosingBudget == 0)
            {
                CloseChannel(ch);
                return;
            }
            want = (int)Math.Min(want, ch.ClosingBudget);
        }

        nint n;
        int errno = 0;
        if (s is not null && e.Ring.Bytes == 0)
        {
            // Fast path: straight from the pipe into a frame, within the host's credit.
            int credit = s.Session.Reserve(s, Math.Min(want, s.Session.MaxData));
            if (credit == 0)
            {
                Disarm(ch);
                return;
            }
            byte[] frame = FramePool.Rent();
            fixed (byte* p = frame)
                n = Libc.read(ch.Fd, p + FrameHeader.Size, credit);
            if (n < 0)
                errno = Libc.Errno;
            s.Session.Release(s, credit - (int)Math.Max(n, 0));
            if (n > 0)
            {
                s.Session.SendData(s, ch.Type, frame, (int)n, final: false);
                ScheduleTrim();
            }
            else
            {
                FramePool.Return(frame);
            }
        }
        else
        {
            if (s is not null)
            {
                // Replaying retained output: new output queues behind it, up to the ring's size.
                long space = e.Ring.Space;
                if (space <= 0)
                {
                    Disarm(ch);
                    FlushRing(e);
                    return;
                }
                want = (int)Math.Min(want, space);
            }
            byte[] buffer = Scratch;
            fixed (byte* p = buffer)
                n = Libc.read(ch.Fd, p, want);
            if (n < 0)
                errno = Libc.Errno;
            if (n > 0)
            {
                var data = buffer.AsSpan(0, (int)n);
                if (s is not null)
                {
                    e.Ring.Append(ch.Type, data);
                    FlushRing(e);
                }
                else if (e.KeepOutput && e.Ring.AppendDroppingOldest(ch.Type, data))
                {
                    e.OutputLost = true;
                }
                // else: nobody is attached and nobody asked to keep it; the output is dropped.
            }
        }

        if (n > 0)
        {
            if (ch.ClosingBudget > 0)
            {
                ch.ClosingBudget = Math.Max(0, ch.ClosingBudget - n);
                if (ch.ClosingBudget == 0)
                    CloseChannel(ch);
            }
            return;
        }
        if (n < 0 && (errno == Libc.EAGAIN || errno == Libc.EINTR))
            return;
        // EOF; EIO from a terminal whose last slave closed; anything else ends the channel too.
        CloseChannel(ch);
    }

    private void CloseChannel(OutputChannel ch)
    {
        if (ch.Eof)
            return;
        Disarm(ch);
        Libc.close(ch.Fd);
        ch.Fd = -1;
        ch.Eof = true;
        var e = ch.Owner;
        MaybeSendFinals(e);
        TryComplete(e);
    }

    private void Arm(OutputChannel ch)
    {
        if (ch.Eof || ch.Token != 0)
            return;
        ch.Token = Loop.Add(ch.Fd, Native.EPOLLIN, ch);
    }

    private void Disarm(OutputChannel ch)
    {
        if (ch.Token == 0)
            return;
        Loop.Remove(ch.Fd, ch.Token);
        ch.Token = 0;
    }

    private void ArmAll(ProcessEntry e)
    {
        foreach (var ch in Channels(e))
            Arm(ch);
    }

    private void FlushRing(ProcessEntry e)
    {
        var s = Live(e);
        if (s is null)
            return;
        while (e.Ring.TryPeek(out var type, out var data))
        {
            int credit = s.Session.Reserve(s, Math.Min(data.Length, s.Session.MaxData));
            if (credit == 0)
                return; // resumed by OnCredit
            byte[] frame = FramePool.Rent();
            data.Span[..credit].CopyTo(frame.AsSpan(FrameHeader.Size));
            s.Session.SendData(s, type, frame, credit, final: false);
            e.Ring.Consume(credit);
            ScheduleTrim();
        }
        e.Ring.HeadCut = false;
        MaybeSendFinals(e);
        ArmAll(e);
        TryComplete(e);
    }

    private static void MaybeSendFinals(ProcessEntry e)
    {
        var s = Live(e);
        if (s is null)
            return;
        if (!s.StdoutFinal && (e.Stdout is null || e.Stdout.Eof) && e.Ring.StdoutBytes == 0)
        {
            s.StdoutFinal = true;
            s.Session.SendEndOfData(s, FrameType.Stdout);
        }
        // A terminal has no separate stderr: its channel is at EOF from the start.
        if (!s.StderrFinal && (e.Stderr is null || e.Stderr.Eof) && e.Ring.StderrBytes == 0)
        {
            s.StderrFinal = true;
            s.Session.SendEndOfData(s, FrameType.Stderr);
        }
    }

    private void TryComplete(ProcessEntry e)
    {
        if (!e.Registered || e.Status is null || !AllOutputClosed(e))
            return;
        var s = Live(e);
        if (s is not null)
        {
            if (e.Ring.Bytes > 0)
                return; // FlushRing finishes once the host grants credit
            MaybeSendFinals(e);
            s.Session.Respond(s, new Response { Exit = ExitOf(e) }, final: true);
            e.Attached = null;
        }
        if (!e.Retired)
            Retire(e);
    }

    private void Retire(ProcessEntry e)
    {
        e.Retired = true;
        CloseStdin(e);
        e.TimeoutTimer?.Cancel();
        e.DrainTimer?.Cancel();
        _live.Remove(e);
        if (!e.KeepOutput)
            e.Ring.Clear();
        _retained.AddLast(e);
        while (_retained.Count > RetainExited)
        {
            _retained.First!.Value.Ring.Clear();
            _retained.RemoveFirst();
        }
    }

    private static ExitStatus ExitOf(ProcessEntry e)
    {
        int status = e.Status ?? 0;
        int termsig = status & 0x7f;
        var exit = new ExitStatus
        {
            TimedOut = e.TimedOut,
            OutputTruncated = e.OutputLost,
            DurationMs = (ulong)Math.Max(0, Stopwatch.GetElapsedTime(e.StartTimestamp, e.ExitTimestamp).TotalMilliseconds),
        };
        if (termsig == 0)
        {
            exit.ExitCode = (status >> 8) & 0xff;
        }
        else
        {
            exit.ExitCode = -1;
            exit.Signal = termsig;
            exit.CoreDumped = (status & 0x80) != 0;
            // In a VM guest the agent owns the commands' memory cgroup: a SIGKILL while its OOM
            // count went up is the memory limit (the host cannot see inside the guest).
            exit.OomKilled = termsig == Libc.SIGKILL && !e.TimedOut && GuestConfinement.Active && GuestConfinement.OomKills() > e.OomKillsAtStart;
        }
        return exit;
    }

    // ---- stdin ----

    internal void OnStdin(ExecStream s, byte[] data, bool final)
    {
        var e = s.Process;
        var stdin = e?.Stdin;
        if (e is null || stdin is null || stdin.CloseRequested || !ReferenceEquals(e.Attached, s))
        {
            // Nowhere to write (stdin closed, process gone, stream replaced): the bytes are consumed.
            s.Session.GrantRecv(s, data.Length, force: true);
            return;
        }
        if (data.Length > 0)
            stdin.Pending.Enqueue(new StdinChunk(data, s));
        if (final)
            stdin.CloseRequested = true;
        WriteStdin(e);
    }

    private void WriteStdin(ProcessEntry e)
    {
        var stdin = e.Stdin;
        if (stdin is null)
            return;
        while (stdin.Pending.TryPeek(out var chunk))
        {
            nint n;
            fixed (byte* p = chunk.Data)
                n = Libc.write(stdin.Fd, p + chunk.Offset, chunk.Data.Length - chunk.Offset);
            if (n < 0)
            {
                int errno = Libc.Errno;
                if (errno == Libc.EINTR)
                    continue;
                if (errno == Libc.EAGAIN)
                {
                    if (stdin.Token == 0)
                        stdin.Token = Loop.Add(stdin.Fd, Native.EPOLLOUT, stdin);
                    return;
                }
                CloseStdin(e); // EPIPE: the process closed its stdin
                return;
            }
            chunk.Offset += (int)n;
            if (chunk.Offset == chunk.Data.Length)
                stdin.Pending.Dequeue();
            if (chunk.Origin is { } origin)
                origin.Session.GrantRecv(origin, n, force: stdin.Pending.Count == 0);
        }
        if (stdin.Token != 0)
        {
            Loop.Remove(stdin.Fd, stdin.Token);
            stdin.Token = 0;
        }
        if (stdin.CloseRequested)
        {
            if (stdin.Terminal)
            {
                // A terminal has no EOF of its own: send the EOF character, as a user typing ^D.
                byte eot = 4;
                Libc.write(stdin.Fd, &eot, 1);
            }
            CloseStdin(e);
        }
    }

    private void CloseStdin(ProcessEntry e)
    {
        var stdin = e.Stdin;
        if (stdin is null)
            return;
        e.Stdin = null;
        if (stdin.Token != 0)
            Loop.Remove(stdin.Fd, stdin.Token);
        Libc.close(stdin.Fd);
        while (stdin.Pending.TryDequeue(out var chunk))
        {
            if (chunk.Origin is { } origin)
                origin.Session.GrantRecv(origin, chunk.Data.Length - chunk.Offset, force: true);
        }
    }

    // ---- stream events ----

    internal void OnControl(ExecStream s, StreamControl control)
    {
        var e = s.Process;
        if (e is null || !ReferenceEquals(e.Attached, s))
            return;
        switch (control.KindCase)
        {
            case StreamControl.KindOneofCase.Signal:
                if (control.Signal is > 0 and <= 64 && e.Running)
                    Libc.kill(-e.Pid, control.Signal);
                break;
            case StreamControl.KindOneofCase.Resize:
                if (e.Pty && e.Stdout is { Eof: false } master)
                    Native.moat_set_winsize(master.Fd, (ushort)Math.Min(control.Resize.Cols, 65535u), (ushort)Math.Min(control.Resize.Rows, 65535u));
                break;
            case StreamControl.KindOneofCase.CloseStdin:
                if (control.CloseStdin && e.Stdin is { } stdin)
                {
                    stdin.CloseRequested = true;
                    WriteStdin(e);
                }
                break;
        }
    }

    internal void OnCredit(ExecStream s)
    {
        var e = s.Process;
        if (e is null || !ReferenceEquals(e.Attached, s))
            return;
        if (e.Ring.Bytes > 0)
            FlushRing(e);
        else
            ArmAll(e);
    }

    internal void OnStreamGone(ExecStream s)
    {
        var e = s.Process;
        if (e is not null && ReferenceEquals(e.Attached, s))
            Detach(e);
    }

    private void Detach(ProcessEntry e)
    {
        e.Attached = null;
        // Without a host the pipes are read without credit (into the ring, or dropped), so the
        // process never blocks on output nobody will read.
        ArmAll(e);
        TryComplete(e);
    }

    private void DoAttach(ExecStream s, AttachRequest request)
    {
        if (s.Ended)
            return;
        ProcessEntry? e = null;
        if (request.Pid > 0)
        {
            e = _live.Find(x => x.Pid == request.Pid) ?? _retained.LastOrDefault(x => x.Pid == request.Pid);
        }
        else
        {
            e = _live.FindLast(x => x.Tag == request.Tag) ?? _retained.LastOrDefault(x => x.Tag == request.Tag);
        }
        if (e is null)
        {
            s.Session.RespondError(s, "not_found", request.Pid > 0 ? $"no process {request.Pid}" : $"no process tagged '{request.Tag}'");
            return;
        }
        if (e.Attached is { } old && !ReferenceEquals(old, s))
            old.Session.RespondError(old, "detached", $"another stream attached to process {e.Pid}");
        if (!request.Replay)
            e.Ring.Clear();
        s.Process = e;
        s.Session.Respond(s, new Response { Started = new ExecStarted { Pid = e.Pid, OutputTruncated = e.Ring.HeadCut } }, final: false);
        e.Attached = s;
        FlushRing(e);
    }

    // Idle agents should hold no frame buffers: drop the pool a few seconds after output stops.
    private void ScheduleTrim()
    {
        if (_trimTimer is not null)
            return;
        _trimTimer = Loop.Schedule(5000, () =>
        {
            _trimTimer = null;
            FramePool.Trim();
            _scratch = null;
        });
    }

    // ---------------------------------------------------------------- shutdown

    /// <summary>Signals every tracked command's process group (any thread).</summary>
    public void SignalAll(int signal)
    {
        foreach (int pid in _table.RunningPids())
            Libc.kill(-pid, signal);
    }

    /// <summary>Kills every tracked command with everything it started (any thread).</summary>
    public void KillAll()
    {
        foreach (int pid in _table.RunningPids())
            ProcessTree.KillCommand(pid);
    }
}
