// Process creation for moat-agent.
//
// Managed code cannot fork safely in a multithreaded .NET process, so the spawn sequence lives
// here, as in .NET's own pal_process.c (which uses vfork, for the reason given at moat_spawn).
// Between the clone and execve() the child calls only async-signal-safe functions and raw
// system calls: it shares the agent's memory, and another agent thread may hold any lock
// (malloc, the loader, the GC) meanwhile.
//
// Failure in the child is reported through a CLOEXEC pipe as {stage, errno}; a successful
// execve() closes the pipe, so EOF on it means the program is running.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

// Stages reported to the parent; keep in sync with SpawnStage in Interop/Native.cs.
enum
{
    STAGE_NONE = 0,
    STAGE_FORK = 1,
    STAGE_SETSID = 2,
    STAGE_CTTY = 3,
    STAGE_DUP = 4,
    STAGE_CAPBSET = 5,
    STAGE_SETGROUPS = 6,
    STAGE_SETGID = 7,
    STAGE_SETUID = 8,
    STAGE_CAPSET = 9,
    STAGE_NO_NEW_PRIVS = 10,
    STAGE_CHDIR = 11,
    STAGE_EXEC = 12,
    STAGE_PIPE = 13,
    STAGE_CGROUP = 14,
    STAGE_SECCOMP = 15,
};

// Layout shared with MoatSpawnRequest in Interop/Native.cs.
struct moat_spawn_request
{
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int32_t stdin_fd;
    int32_t stdout_fd;
    int32_t stderr_fd;
    // Non-zero: stdin_fd is a terminal slave that becomes the controlling terminal.
    int32_t pty;
    uint32_t uid;
    uint32_t gid;
    const uint32_t *groups;
    int32_t ngroups;
    // Highest capability number of this kernel (/proc/sys/kernel/cap_last_cap).
    int32_t last_cap;
    // Non-zero when the agent is privileged: then failing to drop a capability or to switch
    // the user is fatal. An unprivileged agent (tests, development) can only run as itself.
    int32_t privileged;
    // VM guest only (-1 / 0 elsewhere, where the runtime confines the whole sandbox): the
    // cgroup.procs file of the commands' cgroup, which the child joins while still root, and a
    // seccomp filter (Moat's profile, compiled by the host) it installs right before execve().
    int32_t cgroup_fd;
    int32_t seccomp_len;
    const struct sock_filter *seccomp_filter;
};

struct child_error
{
    int32_t stage;
    int32_t err;
};

static void child_fail(int fd, int stage)
{
    struct child_error e = { stage, errno };
    ssize_t r;
    do
        r = write(fd, &e, sizeof e);
    while (r < 0 && errno == EINTR);
    _exit(127);
}

// Moves fd to a number >= 10 so that the dup2 calls onto 0, 1 and 2 cannot clobber each other.
static int child_lift(int fd, int errfd)
{
    int lifted = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (lifted < 0)
        child_fail(errfd, STAGE_DUP);
    return lifted;
}

static void child_install(int from, int to, int errfd)
{
    while (dup2(from, to) < 0)
    {
        if (errno != EINTR)
            child_fail(errfd, STAGE_DUP);
    }
}

static void child_run(const struct moat_spawn_request *r, int errfd) __attribute__((noreturn));

static void child_run(const struct moat_spawn_request *r, int errfd)
{
    // Every disposition back to default: handlers of the agent must never run in user code,
    // and an inherited SIG_IGN (which exec keeps) would change the program's behaviour.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
    {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        (void)sigaction(sig, &dfl, NULL); // glibc refuses its internal signals; that is fine
    }
    sigset_t empty;
    sigemptyset(&empty);
    (void)sigprocmask(SIG_SETMASK, &empty, NULL);

    if (setsid() < 0)
        child_fail(errfd, STAGE_SETSID);
    if (r->pty && ioctl(r->stdin_fd, TIOCSCTTY, 0) < 0)
        child_fail(errfd, STAGE_CTTY);

    int in = child_lift(r->stdin_fd, errfd);
    int out = child_lift(r->stdout_fd, errfd);
    int err = child_lift(r->stderr_fd, errfd);
    child_install(in, 0, errfd);
    child_install(out, 1, errfd);
    child_install(err, 2, errfd);

    // The agent runs at -1000 so the OOM killer picks user code; user code starts neutral.
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0)
    {
        (void)!write(oom, "0", 1);
        close(oom);
    }

    // Join the commands' cgroup ("0" is the writer itself) before anything can fork: the pids and
    // memory limits hold from the first instruction of the program.
    if (r->cgroup_fd >= 0)
    {
        ssize_t w;
        do
            w = write(r->cgroup_fd, "0", 1);
        while (w < 0 && errno == EINTR);
        if (w != 1)
            child_fail(errfd, STAGE_CGROUP);
    }

    // The bounding set must go while we still hold CAP_SETPCAP, i.e. before setuid. The agent
    // normally emptied its own at start-up (moat_drop_bounding_set), so this only reads: every
    // drop is a credential commit, tens of them a measurable part of a spawn.
    for (int cap = 0; cap <= r->last_cap; cap++)
    {
        int present = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (present < 0)
            break; // EINVAL: past the last capability of this kernel
        if (present == 0)
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && r->privileged)
            child_fail(errfd, STAGE_CAPBSET);
    }
    (void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);

    // Raw system calls: glibc's wrappers broadcast the change to every thread of the process
    // (setxid signals), which from a child sharing the agent's memory would reach the agent's
    // own threads. The child is a single task, so per-thread is whole-process.
    if (r->privileged)
    {
        if (syscall(SYS_setgroups, (long)r->ngroups, r->groups) < 0)
            child_fail(errfd, STAGE_SETGROUPS);
        if (syscall(SYS_setresgid, (long)r->gid, (long)r->gid, (long)r->gid) < 0)
            child_fail(errfd, STAGE_SETGID);
        if (syscall(SYS_setresuid, (long)r->uid, (long)r->uid, (long)r->uid) < 0)
            child_fail(errfd, STAGE_SETUID);
    }

    // Root-requested commands keep uid 0 but never hold a capability.
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) < 0 && r->privileged)
        child_fail(errfd, STAGE_CAPSET);

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(errfd, STAGE_NO_NEW_PRIVS);

    // As the target user, so the permission check is the user's.
    if (chdir(r->cwd) < 0)
        child_fail(errfd, STAGE_CHDIR);

    // Belt and braces: every agent fd is opened CLOEXEC, but a descriptor that slipped through
    // (a library, a race) must not reach user code. CLOEXEC rather than close keeps errfd open
    // until the exec itself succeeds. Kernels before 5.11 lack this; O_CLOEXEC carries us there.
    (void)syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);

    // Last: the filter allows execve (and write/exit for child_fail), nothing the set-up needs.
    if (r->seccomp_filter != NULL && r->seccomp_len > 0)
    {
        struct sock_fprog prog = { (unsigned short)r->seccomp_len, (struct sock_filter *)r->seccomp_filter };
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
            child_fail(errfd, STAGE_SECCOMP);
    }

    execve(r->path, r->argv, r->envp);
    child_fail(errfd, STAGE_EXEC);
    _exit(127);
}

struct child_args
{
    const struct moat_spawn_request *request;
    int errfd;
};

static int child_entry(void *arg)
{
    struct child_args *a = (struct child_args *)arg;
    child_run(a->request, a->errfd);
}

// Starts the child. On success returns 0 with *pid set and *errfd the read end of the error
// pipe, which the caller passes to moat_spawn_wait once it has recorded the pid (so the reaper
// can never see an exit for a pid nobody knows). On failure returns -1 with *stage and *err set
// and no child created.
//
// The child is created with clone(CLONE_VM | CLONE_VFORK) on a stack of its own, as glibc's
// posix_spawn does: a real fork() would copy the agent's page tables and make every page the
// agent writes afterwards take a copy-on-write fault, which measured as most of an exec's cost.
// The calling thread is suspended until the child has exec'd or failed; the child touches only
// its own stack and the request (read-only) and never returns into agent code.
int moat_spawn(const struct moat_spawn_request *r, int32_t *pid, int32_t *errfd, int32_t *stage, int32_t *err)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
    {
        *stage = STAGE_PIPE;
        *err = errno;
        return -1;
    }

    const size_t stack_size = 64 * 1024;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
    {
        *stage = STAGE_FORK;
        *err = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }

    // Block every signal across the clone: until the child has reset its dispositions, a signal
    // delivered to it would run an agent handler on the agent's own memory.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    struct child_args args = { r, pipefd[1] };
    pid_t child = clone(child_entry, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, stack_size);
    close(pipefd[1]);

    if (child < 0)
    {
        close(pipefd[0]);
        *stage = STAGE_FORK;
        *err = saved;
        return -1;
    }
    *pid = child;
    *errfd = pipefd[0];
    return 0;
}

// Waits for the child started by moat_spawn to exec. Returns 0 when it did, else 1 with the
// stage and errno at which it failed. Closes errfd.
int moat_spawn_wait(int32_t errfd, int32_t *stage, int32_t *err)
{
    struct child_error e;
    size_t got = 0;
    while (got < sizeof e)
    {
        ssize_t n = read(errfd, (char *)&e + got, sizeof e - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(errfd);
    if (got == 0)
        return 0;
    if (got < sizeof e)
    {
        *stage = STAGE_PIPE;
        *err = EIO;
        return 1;
    }
    *stage = e.stage;
    *err = e.err;
    return 1;
}

// Opens a pseudo-terminal pair, both ends CLOEXEC. The slave is handed to the user (owner uid)
// so programs that reopen their tty by name can. Returns 0 or -errno.
int moat_openpty(int32_t *master, int32_t *slave, uint16_t cols, uint16_t rows, uint32_t uid, uint32_t gid)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0)
        return -errno;
    if (grantpt(m) < 0 || unlockpt(m) < 0)
    {
        int e = errno;
        close(m);
        return -e;
    }
    // TIOCGPTPEER opens the peer of this very master, immune to what /dev/pts holds.
    int s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0)
    {
        char name[128];
        if (ptsname_r(m, name, sizeof name) != 0 || (s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0)
        {
            int e = errno;
            close(m);
            return -e;
        }
    }
    (void)!fchown(s, uid, gid);
    (void)fchmod(s, 0620);
    struct winsize ws;
    memset(&ws, 0, sizeof ws);
    ws.ws_col = cols ? cols : 80;
    ws.ws_row = rows ? rows : 24;
    (void)ioctl(m, TIOCSWINSZ, &ws);
    *master = m;
    *slave = s;
    return 0;
}

// Resizes a terminal. Returns 0 or -errno.
int moat_set_winsize(int32_t fd, uint16_t cols, uint16_t rows)
{
    struct winsize ws;
    memset(&ws, 0, sizeof ws);
    ws.ws_col = cols;
    ws.ws_row = rows;
    return ioctl(fd, TIOCSWINSZ, &ws) < 0 ? -errno : 0;
}

// ---- per-thread file-system identity ----
// setfsuid/setfsgid and the raw setgroups system call change only the calling thread. glibc's
// setgroups() would change every thread of the agent, so it must never be used here. Where
// setfsuid does not exist (gVisor answers ENOSYS), the thread's *effective* ids are switched
// instead with raw setresuid/setresgid, keeping real and saved ids 0 so the switch back is
// allowed and restores the effective capabilities.

enum { FS_MODE_FSUID = 1, FS_MODE_EUID = 2 };

static int set_fs_ids(uint32_t uid, uint32_t gid)
{
    syscall(SYS_setfsgid, (long)gid);
    if ((uint32_t)syscall(SYS_setfsgid, -1L) != gid)
        return -EPERM;
    syscall(SYS_setfsuid, (long)uid);
    if ((uint32_t)syscall(SYS_setfsuid, -1L) != uid)
        return -EPERM;
    return 0;
}

static void restore_root(int mode, uint32_t uid, uint32_t gid)
{
    if (mode == FS_MODE_EUID)
    {
        syscall(SYS_setresuid, -1L, (long)uid, -1L);
        syscall(SYS_setresgid, -1L, (long)gid, -1L);
    }
    else
    {
        syscall(SYS_setfsuid, (long)uid);
        syscall(SYS_setfsgid, (long)gid);
    }
}

// Makes the calling thread act on files as uid/gid with the given groups. Returns the mode to
// pass to moat_fs_exit (> 0), or -errno; on failure the thread is back to root.
int moat_fs_enter(uint32_t uid, uint32_t gid, const uint32_t *groups, int32_t ngroups)
{
    if (syscall(SYS_setgroups, (long)ngroups, groups) < 0)
        return -errno;
    if (set_fs_ids(uid, gid) == 0)
        return FS_MODE_FSUID;
    restore_root(FS_MODE_FSUID, 0, 0);
    if (syscall(SYS_setresgid, -1L, (long)gid, -1L) == 0 && syscall(SYS_setresuid, -1L, (long)uid, -1L) == 0)
        return FS_MODE_EUID;
    int e = errno;
    restore_root(FS_MODE_EUID, 0, 0);
    return -e;
}

// Restores the thread's identity (uid/gid normally 0) and supplementary groups. The uid goes
// first: going back to 0 restores the capabilities that the switch away from 0 removed, and
// setgroups needs them.
int moat_fs_exit(int32_t mode, uint32_t uid, uint32_t gid, const uint32_t *groups, int32_t ngroups)
{
    restore_root(mode, uid, gid);
    if (syscall(SYS_setgroups, (long)ngroups, groups) < 0)
        return -errno;
    return 0;
}

// Empties the calling thread's capability bounding set (inherited by threads and children it
// creates later). The agent keeps its effective capabilities: the bounding set only limits what
// an execve can grant, and the agent never executes anything itself. Returns how many
// capabilities could not be dropped.
int moat_drop_bounding_set(int32_t last_cap)
{
    int failed = 0;
    for (int cap = 0; cap <= last_cap; cap++)
    {
        int present = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (present < 0)
            break;
        if (present && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            failed++;
    }
    return failed;
}
