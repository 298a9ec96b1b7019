// Thin system-call helpers for moat-agent whose C structures are awkward or layout-sensitive to
// declare in C# (stat, dirent, epoll_event, sockaddr_un, statfs, rusage), plus the signal
// handlers. Everything here returns 0/positive on success and -errno on failure.

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <termios.h>
#include <unistd.h>

// ---- process-wide set-up and termination signals ----

static int signal_pipe_write = -1;

static void on_termination_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    (void)!write(signal_pipe_write, &b, 1);
    errno = saved;
}

// Ignores SIGPIPE (a host or child that goes away must surface as EPIPE, not kill PID 1), makes
// sure SIGCHLD is not ignored (an inherited SIG_IGN would make the kernel reap children before
// the reaper could see their status), and routes SIGTERM/SIGINT/SIGHUP to a pipe whose read end
// is returned. Handlers are needed at all because PID 1 of a pid namespace gets only the signals
// it has a handler for.
int moat_init_signals(void)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    signal_pipe_write = fds[1];

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    struct sigaction current;
    if (sigaction(SIGCHLD, NULL, &current) == 0 && current.sa_handler == SIG_IGN)
    {
        sa.sa_handler = SIG_DFL;
        sigaction(SIGCHLD, &sa, NULL);
    }

    sa.sa_handler = on_termination_signal;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    // SIGUSR1/SIGUSR2: the host parks and un-parks the channel around a memory checkpoint.
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    return fds[0];
}

// ---- epoll ----

int moat_epoll_create(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int moat_epoll_ctl(int32_t epfd, int32_t op, int32_t fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0;
}

// Waits for events and unpacks them into parallel arrays (epoll_event is packed on x86-64).
int moat_epoll_wait(int32_t epfd, uint64_t *data, uint32_t *events, int32_t max, int32_t timeout_ms)
{
    struct epoll_event evs[64];
    if (max > 64)
        max = 64;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++)
    {
        data[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

// ---- files ----

// Layout shared with MoatStat in Interop/Native.cs.
struct moat_stat
{
    uint64_t dev;
    uint64_t ino;
    uint64_t size;
    int64_t mtime_sec;
    int64_t mtime_nsec;
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    uint32_t nlink;
};

static void fill_stat(const struct stat *st, struct moat_stat *out)
{
    out->dev = st->st_dev;
    out->ino = st->st_ino;
    out->size = (uint64_t)st->st_size;
    out->mtime_sec = st->st_mtim.tv_sec;
    out->mtime_nsec = st->st_mtim.tv_nsec;
    out->mode = st->st_mode;
    out->uid = st->st_uid;
    out->gid = st->st_gid;
    out->nlink = (uint32_t)st->st_nlink;
}

int moat_fstatat(int32_t dirfd, const char *path, int32_t flags, struct moat_stat *out)
{
    struct stat st;
    if (fstatat(dirfd, path, &st, flags) < 0)
        return -errno;
    fill_stat(&st, out);
    return 0;
}

int moat_fstat(int32_t fd, struct moat_stat *out)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    fill_stat(&st, out);
    return 0;
}

// Opens a directory stream on an fd the caller opened (O_DIRECTORY|O_CLOEXEC); the stream owns it.
void *moat_fdopendir(int32_t fd)
{
    return fdopendir(fd);
}

int moat_closedir(void *dir)
{
    return closedir((DIR *)dir) < 0 ? -errno : 0;
}

int moat_dirfd(void *dir)
{
    return dirfd((DIR *)dir);
}

// Next entry other than . and ..: copies its NUL-terminated name and returns its length
// (> 0), 0 at the end, -errno on failure. *type is the d_type (DT_UNKNOWN on some file systems).
int moat_readdir(void *dir, char *name, int32_t capacity, int32_t *type)
{
    for (;;)
    {
        errno = 0;
        struct dirent *e = readdir((DIR *)dir);
        if (e == NULL)
            return errno ? -errno : 0;
        if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0)))
            continue;
        size_t len = strlen(e->d_name);
        if ((int32_t)len >= capacity)
            return -ENAMETOOLONG;
        memcpy(name, e->d_name, len + 1);
        *type = e->d_type;
        return (int)len;
    }
}

// Layout shared with MoatStatfs in Interop/Native.cs.
struct moat_statfs
{
    uint64_t block_size;
    uint64_t blocks;
    uint64_t blocks_free;
    uint64_t blocks_available;
    uint64_t files;
    uint64_t files_free;
};

int moat_statfs(const char *path, struct moat_statfs *out)
{
    struct statfs s;
    if (statfs(path, &s) < 0)
        return -errno;
    out->block_size = s.f_frsize ? (uint64_t)s.f_frsize : (uint64_t)s.f_bsize;
    out->blocks = s.f_blocks;
    out->blocks_free = s.f_bfree;
    out->blocks_available = s.f_bavail;
    out->files = s.f_files;
    out->files_free = s.f_ffree;
    return 0;
}

// CPU time of every child (and their descendants) the agent has reaped, in microseconds.
int64_t moat_reaped_children_cpu_usec(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_CHILDREN, &ru) < 0)
        return 0;
    return (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec
         + (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
}

int moat_kernel_release(char *buffer, int32_t capacity)
{
    struct utsname u;
    if (uname(&u) < 0)
        return -errno;
    size_t len = strnlen(u.release, sizeof u.release);
    if ((int32_t)len >= capacity)
        len = (size_t)capacity - 1;
    memcpy(buffer, u.release, len);
    buffer[len] = 0;
    return (int)len;
}

// ---- Unix socket transport ----

// Binds and listens on a Unix stream socket (CLOEXEC). A stale socket file left by an earlier
// agent is removed first; any other kind of file at the path is an error. The socket is bound
// under a temporary name and renamed into place once it listens, so whoever waits for the path
// to appear can connect at once (no window where connect() is refused).
int moat_unix_listen(const char *path)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t len = strlen(path);
    char temp[sizeof addr.sun_path];
    int n = snprintf(temp, sizeof temp, "%s.%d", path, (int)getpid());
    if (len == 0 || n < 0 || (size_t)n >= sizeof addr.sun_path)
        return -ENAMETOOLONG;
    memcpy(addr.sun_path, temp, (size_t)n + 1);

    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
        return -EEXIST;
    unlink(temp);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || chmod(temp, 0600) < 0 || listen(fd, 8) < 0
        || rename(temp, path) < 0)
    {
        // gVisor's gofer (--host-uds=create) can bind a host socket but not chmod or rename it
        // (EPERM): bind in place instead. The directory is the host's private 0700 one.
        close(fd);
        unlink(temp);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        memset(addr.sun_path, 0, sizeof addr.sun_path);
        memcpy(addr.sun_path, path, len + 1);
        unlink(path);
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 8) < 0)
        {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    return fd;
}

// Accepts one connection, CLOEXEC and non-blocking. Retries EINTR and transient errors.
int moat_accept(int32_t listen_fd)
{
    for (;;)
    {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0)
            return fd;
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        return -errno;
    }
}

// Pid of the peer of a Unix socket as this pid namespace sees it (0: outside the namespace).
int moat_peer_pid(int32_t fd)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return -errno;
    return cred.pid;
}

// A serial port that is a terminal (hvc console, a pty in tests) must carry bytes untouched:
// no echo, no line editing, no CR/LF translation. Returns 1 if made raw, 0 if not a terminal.
int moat_make_raw_if_tty(int32_t fd)
{
    struct termios t;
    if (tcgetattr(fd, &t) < 0)
        return 0;
    cfmakeraw(&t);
    return tcsetattr(fd, TCSANOW, &t) < 0 ? -errno : 1;
}

// VM guest init: loads a kernel module from an open file (glibc has no wrapper). Returns 0 or
// -errno; EEXIST (already loaded or built in) is the caller's to ignore.
int moat_finit_module(int32_t fd, const char *params, int32_t flags)
{
    return syscall(SYS_finit_module, fd, params, flags) < 0 ? -errno : 0;
}
