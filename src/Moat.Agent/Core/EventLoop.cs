using System.Collections.Concurrent;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Core;

/// <summary>Something watching a file descriptor in the <see cref="EventLoop"/>.</summary>
internal interface IFdHandler
{
    /// <summary>Called on the loop thread with the epoll event bits.</summary>
    void OnEvents(uint events);
}

/// <summary>A one-shot timer of the <see cref="EventLoop"/>; cancel it to stop it firing.</summary>
internal sealed class LoopTimer(Action action)
{
    public Action Action { get; } = action;
    public bool Cancelled { get; private set; }
    public void Cancel() => Cancelled = true;
}

/// <summary>
/// The agent's I/O thread: one epoll set for every child pipe and terminal, the channel's
/// writability and the termination-signal pipe, plus timers and actions posted from other
/// threads. All process I/O state is touched only here, so it needs no locks; other threads hand
/// work over with <see cref="Post"/>.
/// </summary>
/// <remarks>
/// One epoll thread rather than a pump thread per descriptor: thousands of sandboxes run this
/// agent, and a command with three pipes would otherwise cost three stacks; pipes also cannot use
/// .NET's async I/O, and blocking thread-pool threads in read() would starve the pool.
/// </remarks>
internal sealed unsafe class EventLoop
{
    private const ulong WakeToken = 0;
    private readonly int _epfd;
    private readonly int _wakeFd;
    private readonly ConcurrentQueue<Action> _posted = new();
    private readonly Dictionary<ulong, IFdHandler> _handlers = [];
    private readonly PriorityQueue<LoopTimer, long> _timers = new();
    private ulong _nextToken = 1;
    private int _wakePending;
    private int _threadId = -1;

    public EventLoop()
    {
        _epfd = Native.moat_epoll_create();
        if (_epfd < 0)
            throw new IOException($"epoll_create failed (errno {-_epfd})");
        _wakeFd = Libc.eventfd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
        if (_wakeFd < 0)
            throw new IOException($"eventfd failed (errno {Libc.Errno})");
        Check(Native.moat_epoll_ctl(_epfd, Native.EPOLL_CTL_ADD, _wakeFd, Native.EPOLLIN, WakeToken));
    }

    /// <summary>Milliseconds on a monotonic clock.</summary>
    public static long Now => Environment.TickCount64;

    public bool OnLoopThread => Environment.CurrentManagedThreadId == _threadId;

    /// <summary>Runs <paramref name="action"/> on the loop thread, after everything posted before it.</summary>
    public void Post(Action action)
    {
        _posted.Enqueue(action);
        if (Interlocked.Exchange(ref _wakePending, 1) == 0)
        {
            ulong one = 1;
            Libc.write(_wakeFd, (byte*)&one, sizeof(ulong));
        }
    }

    /// <summary>Watches <paramref name="fd"/> (loop thread only). Returns the registration token.</summary>
    public ulong Add(int fd, uint events, IFdHandler handler)
    {
        ulong token = _nextToken++;
        int r = Native.moat_epoll_ctl(_epfd, Native.EPOLL_CTL_ADD, fd, events, token);
        if (r < 0)
            throw new IOException($"epoll_ctl add fd {fd} failed (errno {-r})");
        _handlers[token] = handler;
        return token;
    }

    public void Modify(int fd, ulong token, uint events)
    {
        int r = Native.moat_epoll_ctl(_epfd, Native.EPOLL_CTL_MOD, fd, events, token);
        if (r < 0)
            AgentLog.Write($"epoll_ctl mod fd {fd} failed (errno {-r})");
    }

    /// <summary>Stops watching; call before closing the fd.</summary>
    public void Remove(int fd, ulong token)
    {
        if (_handlers.Remove(token))
            Native.moat_epoll_ctl(_epfd, Native.EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// <summary>Runs <paramref name="action"/> on the loop thread after <paramref name="delayMs"/> (loop thread only).</summary>
    public LoopTimer Schedule(long delayMs, Action action)
    {
        var timer = new LoopTimer(action);
        _timers.Enqueue(timer, Now + Math.Max(0, delayMs));
        return timer;
    }

    /// <summary>Starts the loop thread.</summary>
    public void Start()
    {
        var thread = new Thread(Run, 256 * 1024) { IsBackground = true, Name = "moat-io" };
        thread.Start();
    }

    private void Run()
    {
        _threadId = Environment.CurrentManagedThreadId;
        const int Max = 64;
        ulong* tokens = stackalloc ulong[Max];
        uint* events = stackalloc uint[Max];
        while (true)
        {
            int timeout = -1;
            while (_timers.TryPeek(out var head, out long due))
            {
                if (head.Cancelled)
                {
                    _timers.Dequeue();
                    continue;
                }
                timeout = (int)Math.Clamp(due - Now, 0, int.MaxValue);
                break;
            }
            if (!_posted.IsEmpty)
                timeout = 0;

            int n = Native.moat_epoll_wait(_epfd, tokens, events, Max, timeout);
            if (n < 0 && -n != Libc.EINTR)
            {
                AgentLog.Write($"epoll_wait failed (errno {-n})");
                Thread.Sleep(10);
            }
            for (int i = 0; i < n; i++)
            {
                if (tokens[i] == WakeToken)
                {
                    ulong value;
                    Libc.read(_wakeFd, (byte*)&value, sizeof(ulong));
                    Volatile.Write(ref _wakePending, 0);
                    continue;
                }
                if (_handlers.TryGetValue(tokens[i], out var handler))
                {
                    try
                    {
                        handler.OnEvents(events[i]);
                    }
                    catch (Exception ex)
                    {
                        AgentLog.Write($"io loop: {ex.GetType().Name}: {ex.Message}");
                    }
                }
            }

            // Bounded per round so that I/O keeps being served under a flood of posts.
            for (int k = 0; k < 4096 && _posted.TryDequeue(out var action); k++)
                Guard(action);

            long now = Now;
            while (_timers.TryPeek(out var timer, out long due) && due <= now)
            {
                _timers.Dequeue();
                if (!timer.Cancelled)
                    Guard(timer.Action);
            }
        }
    }

    private static void Guard(Action action)
    {
        try
        {
            action();
        }
        catch (Exception ex)
        {
            AgentLog.Write($"io loop: {ex.GetType().Name}: {ex.Message}");
        }
    }

    private static void Check(int r)
    {
        if (r < 0)
            throw new IOException($"epoll set-up failed (errno {-r})");
    }
}
