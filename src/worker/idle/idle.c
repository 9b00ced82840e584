/* The worker's idle binary (`/granda/idle` in a warm container), static, without a libc.
 *
 *   idle                  pauses forever: a warm container's only process.
 *   idle run DIR OUTCAP ERRCAP ID -- CMD [ARG...]
 *                         runs CMD (searched in $PATH) as a warm run's exec: its stdout and
 *                         stderr pass through unchanged, and are also kept in DIR (the run's
 *                         journal, under the caps): DIR/run names the invocation first, then
 *                         DIR/out and DIR/err fill, and once CMD ended DIR/end is renamed into
 *                         place: "ID CODE STARTED_MS FINISHED_MS OUT_CUT ERR_CUT\n". Exits with
 *                         CMD's code (128 + the signal that killed it).
 *
 * Built by `make idle` (gcc, x86-64 Linux); the binary is src/worker/idle/granda-idle. */

typedef unsigned long u64;
typedef long i64;

static i64 sys(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e) {
    i64 r;
    register i64 r10 __asm__("r10") = d;
    register i64 r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return r;
}

#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_poll 7
#define SYS_rt_sigaction 13
#define SYS_dup2 33
#define SYS_pause 34
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_clock_gettime 228
#define SYS_openat 257
#define SYS_unlinkat 263
#define SYS_renameat 264
#define SYS_pipe2 293

#define AT_FDCWD -100
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_DIRECTORY 0200000
#define O_CLOEXEC 02000000
#define EINTR 4
#define ENOENT 2
#define EACCES 13

static u64 len(const char *s) { u64 n = 0; while (s[n]) n++; return n; }
static int eq(const char *a, const char *b) {
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}
static u64 num(const char *s) { u64 n = 0; while (*s >= '0' && *s <= '9') n = n * 10 + (u64)(*s++ - '0'); return n; }
static char *put(char *p, const char *s) { while (*s) *p++ = *s++; return p; }
static char *putn(char *p, u64 n) {
    char t[24]; int i = 0;
    do { t[i++] = (char)('0' + n % 10); n /= 10; } while (n);
    while (i) *p++ = t[--i];
    return p;
}
static void write_all(int fd, const char *b, u64 n, int *broken) {
    while (n && !*broken) {
        i64 w = sys(SYS_write, fd, (i64)b, (i64)n, 0, 0);
        if (w == -EINTR) continue;
        if (w <= 0) { *broken = 1; return; }
        b += w; n -= (u64)w;
    }
}
static u64 now_ms(void) {
    i64 ts[2];
    sys(SYS_clock_gettime, 0, (i64)ts, 0, 0, 0);
    return (u64)ts[0] * 1000 + (u64)ts[1] / 1000000;
}
static void die(const char *what, int code) {
    int broken = 0;
    write_all(2, "granda: ", 8, &broken);
    write_all(2, what, len(what), &broken);
    write_all(2, "\n", 1, &broken);
    sys(SYS_exit, code, 0, 0, 0, 0);
}

/* execve CMD, searched in $PATH as a shell would; returns the error. */
static i64 exec_path(char **argv, char **envp) {
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char **e = envp; *e; e++)
        if ((*e)[0] == 'P' && (*e)[1] == 'A' && (*e)[2] == 'T' && (*e)[3] == 'H' && (*e)[4] == '=')
            path = *e + 5;
    const char *cmd = argv[0];
    for (const char *c = cmd; *c; c++)
        if (*c == '/') return sys(SYS_execve, (i64)cmd, (i64)argv, (i64)envp, 0, 0);
    static char full[4096];
    i64 err = -ENOENT;
    u64 n = len(cmd);
    while (1) {
        const char *end = path;
        while (*end && *end != ':') end++;
        u64 d = (u64)(end - path);
        if (d + n + 2 < sizeof full) {
            char *p = full;
            for (u64 i = 0; i < d; i++) *p++ = path[i];
            if (d == 0) *p++ = '.';
            *p++ = '/';
            p = put(p, cmd);
            *p = 0;
            i64 r = sys(SYS_execve, (i64)full, (i64)argv, (i64)envp, 0, 0);
            if (r == -EACCES) err = r;
            else if (r != -ENOENT && r != -20 /* ENOTDIR */) return r;
        }
        if (!*end) return err;
        path = end + 1;
    }
}

static char buf[65536];

static int run(int argc, char **argv, char **envp) {
    if (argc < 8 || !eq(argv[6], "--")) die("usage: idle run DIR OUTCAP ERRCAP ID -- CMD...", 2);
    const char *id = argv[5];
    u64 caps[2] = {num(argv[3]), num(argv[4])};
    i64 dir = sys(SYS_openat, AT_FDCWD, (i64)argv[2], O_DIRECTORY | O_CLOEXEC, 0, 0);
    i64 kept[2] = {-1, -1};
    if (dir >= 0) {
        sys(SYS_unlinkat, dir, (i64)"end", 0, 0, 0);
        kept[0] = sys(SYS_openat, dir, (i64)"out", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600, 0);
        kept[1] = sys(SYS_openat, dir, (i64)"err", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600, 0);
        i64 r = sys(SYS_openat, dir, (i64)"run", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600, 0);
        if (r >= 0) {
            int broken = 0;
            write_all((int)r, id, len(id), &broken);
            sys(SYS_close, r, 0, 0, 0, 0);
        }
    }
    /* A pass-through the caller stopped reading must not kill this process. */
    u64 ign[4] = {1 /* SIG_IGN */, 0, 0, 0};
    sys(SYS_rt_sigaction, 13 /* SIGPIPE */, (i64)ign, 0, 8, 0);
    int out[2], err[2];
    if (sys(SYS_pipe2, (i64)out, O_CLOEXEC, 0, 0, 0) < 0 || sys(SYS_pipe2, (i64)err, O_CLOEXEC, 0, 0, 0) < 0)
        die("can't make a pipe", 126);
    u64 started = now_ms();
    i64 pid = sys(SYS_fork, 0, 0, 0, 0, 0);
    if (pid < 0) die("can't fork", 126);
    if (pid == 0) {
        u64 dfl[4] = {0 /* SIG_DFL */, 0, 0, 0};
        sys(SYS_rt_sigaction, 13, (i64)dfl, 0, 8, 0);
        sys(SYS_dup2, out[1], 1, 0, 0, 0);
        sys(SYS_dup2, err[1], 2, 0, 0, 0);
        i64 e = exec_path(argv + 7, envp);
        int broken = 0;
        write_all(2, "granda: can't run ", 18, &broken);
        write_all(2, argv[7], len(argv[7]), &broken);
        write_all(2, e == -ENOENT ? ": not found\n" : ": not executable\n", e == -ENOENT ? 12 : 17, &broken);
        sys(SYS_exit, e == -ENOENT ? 127 : 126, 0, 0, 0, 0);
    }
    sys(SYS_close, out[1], 0, 0, 0, 0);
    sys(SYS_close, err[1], 0, 0, 0, 0);
    struct { int fd; short events, revents; } fds[2] = {{out[0], 1, 0}, {err[0], 1, 0}};
    u64 kept_n[2] = {0, 0};
    int cut[2] = {0, 0}, broken[2] = {0, 0}, kept_broken[2] = {0, 0}, open = 2;
    while (open) {
        i64 r = sys(SYS_poll, (i64)fds, 2, -1, 0, 0);
        if (r == -EINTR) continue;
        if (r < 0) break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !fds[i].revents) continue;
            i64 n = sys(SYS_read, fds[i].fd, (i64)buf, sizeof buf, 0, 0);
            if (n == -EINTR) continue;
            if (n <= 0) { sys(SYS_close, fds[i].fd, 0, 0, 0, 0); fds[i].fd = -1; open--; continue; }
            write_all(i + 1, buf, (u64)n, &broken[i]);
            u64 room = caps[i] - kept_n[i], k = (u64)n < room ? (u64)n : room;
            if (k < (u64)n) cut[i] = 1;
            if (kept[i] >= 0 && k) write_all((int)kept[i], buf, k, &kept_broken[i]);
            kept_n[i] += k;
        }
    }
    int status = 0;
    while (sys(SYS_wait4, pid, (i64)&status, 0, 0, 0) == -EINTR) {}
    u64 finished = now_ms();
    int code = (status & 0x7f) ? 128 + (status & 0x7f) : (status >> 8) & 0xff;
    if (dir >= 0) {
        char line[256], *p = line;
        if (len(id) < 100) p = put(p, id);
        *p++ = ' '; p = putn(p, (u64)code);
        *p++ = ' '; p = putn(p, started);
        *p++ = ' '; p = putn(p, finished);
        *p++ = ' '; p = putn(p, (u64)(cut[0] || kept_broken[0]));
        *p++ = ' '; p = putn(p, (u64)(cut[1] || kept_broken[1]));
        *p++ = '\n';
        i64 f = sys(SYS_openat, dir, (i64)"end.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600, 0);
        if (f >= 0) {
            int b = 0;
            write_all((int)f, line, (u64)(p - line), &b);
            sys(SYS_close, f, 0, 0, 0, 0);
            if (!b) sys(SYS_renameat, dir, (i64)"end.tmp", dir, (i64)"end", 0);
        }
    }
    return code;
}

__attribute__((used)) void start_c(i64 *sp) {
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    if (argc > 1 && eq(argv[1], "run")) sys(SYS_exit, run(argc, argv, envp), 0, 0, 0, 0);
    for (;;) sys(SYS_pause, 0, 0, 0, 0, 0);
}

__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call start_c\n hlt\n");
