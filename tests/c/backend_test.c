/* backend_test.c - standalone conformance test for any I/O engine behind
 * src/backend.h (no Python).  It checks the completion contract on every
 * event: an event only for an operation in flight, exactly one final event
 * per started operation, recv buffers never handed out twice before
 * release_buf(), accepted fds nonblocking and cloexec.
 *
 *   gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O1 -g \
 *       -fsanitize=address,undefined -I src tests/c/backend_test.c \
 *       src/epoll.c [src/uring.c] -o /tmp/bt -pthread
 *   /tmp/bt epoll|uring [test-name]
 *
 * Prints "ok NAME" per test; exit 0 when all pass, 1 on the first failure,
 * 77 ("skip") when the engine's create() fails with ENOSYS/EPERM/EINVAL.
 * The uring engine is referenced through a weak symbol, so the driver links
 * with only epoll.c.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "io/backend.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#pragma weak iocp_uring_ops

static const struct backend_ops *ops;
static struct backend *B;
static unsigned NB, BS;
static const char *cur_test = "setup";
static unsigned char held[65536];   /* buf_id handed out, not yet released */

static void die(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL [%s] %s:%d: ", cur_test, file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stdout);
    _exit(1);   /* other threads may be blocked in syscalls: don't unwind */
}
#define FAIL(...) die(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(c)                                                           \
    do {                                                                   \
        if (!(c))                                                          \
            FAIL("check failed: %s (errno %d: %s)", #c, errno,             \
                 strerror(errno));                                         \
    } while (0)
#define CHECK_EQ(a, b)                                                     \
    do {                                                                   \
        long long a_ = (long long)(a), b_ = (long long)(b);                \
        if (a_ != b_)                                                      \
            FAIL("%s == %lld, expected %s == %lld", #a, a_, #b, b_);       \
    } while (0)

static void on_alarm(int sig)
{
    static const char msg[] = "FAIL: timeout (alarm), test hung\n";
    (void)sig;
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(1);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Byte i of every test stream: not periodic at any small size, so a lost,
 * duplicated or reordered chunk shows up. */
static inline unsigned char pat(size_t i)
{
    uint32_t x = (uint32_t)i * 2654435761u;
    return (unsigned char)((x >> 13) ^ (i >> 11));
}

static char *make_src(size_t len)
{
    char *s = malloc(len);
    CHECK(s);
    for (size_t i = 0; i < len; i++)
        s[i] = (char)pat(i);
    return s;
}

/* ---- tracked handles: every event is checked against what was started -- */

struct th {
    struct io_handle h;      /* first: events carry &th.h */
    char *into;              /* recv_into() in flight: its buffer */
    size_t into_len;
    int started[IO_OP_COUNT];
    int finals[IO_OP_COUNT];
    int last_res[IO_OP_COUNT];
};

static void th_init(struct th *t, int fd)
{
    memset(t, 0, sizeof *t);
    t->h.fd = fd;
}

static bool th_active(const struct th *t, int op)
{
    return t->started[op] > t->finals[op];
}

static void mk(unsigned nbufs, unsigned bufsize)
{
    B = ops->create(nbufs, bufsize);
    if (!B) {
        int e = errno;
        if (e == ENOSYS || e == EPERM || e == EINVAL) {
            printf("skip: %s backend unavailable: create: %s\n", ops->name,
                   strerror(e));
            fflush(stdout);
            exit(77);
        }
        FAIL("create(%u, %u): %s", nbufs, bufsize, strerror(e));
    }
    NB = nbufs;
    BS = bufsize;
    memset(held, 0, sizeof held);
}

static void unmk(void)
{
    for (unsigned i = 0; i < NB; i++)
        if (held[i])
            FAIL("buffer %u still held at destroy (test bug)", i);
    ops->destroy(B);
    B = NULL;
}

static void do_accept_start(struct th *t)
{
    int r = ops->accept_start(B, &t->h);
    if (r)
        FAIL("accept_start: %s", strerror(-r));
    t->started[IO_ACCEPT]++;
}

static void do_recv_start(struct th *t)
{
    if (th_active(t, IO_RECV))
        FAIL("test bug: recv_start while recv active");
    int r = ops->recv_start(B, &t->h);
    if (r)
        FAIL("recv_start: %s", strerror(-r));
    t->started[IO_RECV]++;
}

static void do_recv_into(struct th *t, char *buf, size_t len)
{
    if (th_active(t, IO_RECV))
        FAIL("test bug: recv_into while recv active");
    int r = ops->recv_into(B, &t->h, buf, len);
    if (r)
        FAIL("recv_into: %s", strerror(-r));
    t->started[IO_RECV]++;
    t->into = buf;
    t->into_len = len;
}

static void do_recv_stop(struct th *t)
{
    int r = ops->recv_stop(B, &t->h);
    if (r)
        FAIL("recv_stop: %s", strerror(-r));
}

static long do_send(struct th *t, const char *buf, size_t len)
{
    if (th_active(t, IO_SEND))
        FAIL("test bug: two sends in flight");
    long r = ops->send(B, &t->h, buf, len);
    if (r == -EINPROGRESS)
        t->started[IO_SEND]++;
    else if (r == 0 && len > 0)
        FAIL("send returned 0 for %zu bytes", len);
    else if (r > (long)len)
        FAIL("send returned %ld > len %zu", r, len);
    return r;
}

/* Returns ops->connect's value; 0 means an IO_CONNECT event follows. */
static int do_connect(struct th *t, const struct sockaddr *a, socklen_t l)
{
    int r = ops->connect(B, &t->h, a, l);
    if (r == 0)
        t->started[IO_CONNECT]++;
    return r;
}

static void do_release(uint16_t id)
{
    if (id >= NB || !held[id])
        FAIL("release of buffer %u not held", id);
    held[id] = 0;
    ops->release_buf(B, id);
}

static void do_forget(struct th *t)
{
    for (int op = 1; op < IO_OP_COUNT; op++)
        if (th_active(t, op))
            FAIL("test bug: forget with op %d active", op);
    ops->forget(B, &t->h);
}

/* wait() + contract checks.  Wake-up events (h == NULL) are dropped.
 * Returns the number of checked events left in out[]. */
static int get_events(struct io_event *out, int max, int timeout_ms)
{
    int n;
    do
        n = ops->wait(B, out, max, timeout_ms);
    while (n == -EINTR);
    if (n < 0)
        FAIL("wait: %s", strerror(-n));
    if (n > max)
        FAIL("wait returned %d > max %d", n, max);
    int k = 0;
    for (int i = 0; i < n; i++) {
        struct io_event e = out[i];
        if (!e.h)
            continue;
        struct th *t = (struct th *)e.h;
        if (e.op <= IO_NONE || e.op >= IO_OP_COUNT)
            FAIL("event with bad op %d", e.op);
        if (!th_active(t, e.op))
            FAIL("event op %d res %d more %d for an operation not in flight"
                 " (fd %d, started %d, finals %d)", e.op, e.res, e.more,
                 t->h.fd, t->started[e.op], t->finals[e.op]);
        if (e.more && e.op != IO_ACCEPT && e.op != IO_RECV)
            FAIL("more=1 on op %d", e.op);
        if (e.more && e.res < 0)
            FAIL("more=1 with error res %d on op %d", e.res, e.op);
        if (e.op == IO_RECV && e.more && e.res == 0)
            FAIL("EOF (res 0) with more=1");
        if (e.op == IO_RECV && t->into != NULL) {
            if (e.more || e.buf_id != IO_NO_BUF)
                FAIL("recv_into event more %d buf_id %u", e.more, e.buf_id);
            if (e.res > 0 && (e.buf != t->into || (size_t)e.res > t->into_len))
                FAIL("recv_into event res %d buf %p (asked %zu at %p)", e.res,
                     (void *)e.buf, t->into_len, (void *)t->into);
            t->into = NULL;
        } else if (e.op == IO_RECV && e.res > 0) {
            if (e.buf_id >= NB)
                FAIL("buf_id %u >= nbufs %u", e.buf_id, NB);
            if (held[e.buf_id])
                FAIL("buf_id %u handed out twice", e.buf_id);
            if (!e.buf)
                FAIL("recv event res %d with NULL buf", e.res);
            if ((unsigned)e.res > BS)
                FAIL("recv res %d > bufsize %u", e.res, BS);
            held[e.buf_id] = 1;
        }
        if (e.op == IO_ACCEPT && e.res >= 0) {
            int fl = fcntl(e.res, F_GETFL), fd = fcntl(e.res, F_GETFD);
            CHECK(fl >= 0 && fd >= 0);
            /* io_uring's sockets are blocking (uring.c says why) */
            if ((ops == &iocp_epoll_ops && !(fl & O_NONBLOCK)) ||
                !(fd & FD_CLOEXEC))
                FAIL("accepted fd %d not cloexec, or not nonblocking on epoll",
                     e.res);
        }
        if (!e.more) {
            t->finals[e.op]++;
            t->last_res[e.op] = e.res;
        }
        out[k++] = e;
    }
    return k;
}

/* Wait until the handles in ts[0..nt) have no operation in flight (all
 * final events reaped); events for other handles are a test failure.
 * Returns data bytes seen from recv events (buffers released). */
static size_t drain_all(struct th **ts, int nt, int timeout_ms)
{
    struct io_event ev[16];
    size_t bytes = 0;
    double end = now_ms() + timeout_ms;
    for (;;) {
        bool any = false;
        for (int k = 0; k < nt; k++)
            for (int op = 1; op < IO_OP_COUNT; op++)
                any |= th_active(ts[k], op);
        if (!any)
            return bytes;
        if (now_ms() > end)
            FAIL("final events missing after %d ms", timeout_ms);
        int n = get_events(ev, 16, 50);
        for (int i = 0; i < n; i++) {
            bool mine = false;
            for (int k = 0; k < nt; k++)
                mine |= ev[i].h == &ts[k]->h;
            if (!mine)
                FAIL("unexpected event for another handle");
            if (ev[i].op == IO_RECV && ev[i].res > 0) {
                bytes += (size_t)ev[i].res;
                do_release(ev[i].buf_id);
            }
            if (ev[i].op == IO_ACCEPT && ev[i].res >= 0)
                close(ev[i].res);
        }
    }
}

static size_t drain_finals(struct th *t, int timeout_ms)
{
    return drain_all(&t, 1, timeout_ms);
}

/* Nothing may arrive for a while (no event for a finished op). */
static void expect_quiet(int ms)
{
    struct io_event ev[8];
    double end = now_ms() + ms;
    while (now_ms() < end) {
        int n = get_events(ev, 8, 20);
        if (n)
            FAIL("unexpected event op %d res %d", ev[0].op, ev[0].res);
    }
}

/* ---- sockets ----------------------------------------------------------- */

static int listen_tcp(bool nonblock, uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC |
                    (nonblock ? SOCK_NONBLOCK : 0), 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(fd, 128) == 0);
    socklen_t l = sizeof a;
    CHECK(getsockname(fd, (struct sockaddr *)&a, &l) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static struct sockaddr_in lo_addr(uint16_t port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int connect_blocking(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = lo_addr(port);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    return fd;
}

/* A connected TCP pair: *srv nonblocking (for the engine), *cli blocking. */
static void tcp_pair(int *srv, int *cli)
{
    uint16_t port;
    int l = listen_tcp(false, &port);
    *cli = connect_blocking(port);
    *srv = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    CHECK(*srv >= 0);
    close(l);
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0);
}

/* ---- echo server (tests 1 and 2) --------------------------------------- */

struct qent { uint16_t id; char *p; size_t len, off; };

struct conn {
    struct th t;
    struct qent *q;          /* received buffers waiting to be echoed */
    int qh, qn, qcap;
    bool eof, done;
    bool sending;            /* a send is in flight and its event unhandled;
                                get_events() counts a batch's finals before
                                the test handles them, so th_active can't
                                tell */
};

struct client_arg {
    pthread_t tid;
    uint16_t port;
    size_t total;
    unsigned seed;
    int maxchunk;
};

/* One client connection: sends random-sized chunks, checks every echoed
 * byte, with poll() so sending and receiving interleave. */
static void *echo_client(void *arg)
{
    struct client_arg *c = arg;
    unsigned seed = c->seed;
    char *data = malloc(c->total), *rb = malloc(65536);
    CHECK(data && rb);
    for (size_t i = 0; i < c->total; i++)
        data[i] = (char)rand_r(&seed);
    int fd = connect_blocking(c->port);
    set_nonblock(fd);
    size_t sent = 0, got = 0;
    while (got < c->total) {
        struct pollfd p = { fd, POLLIN | (sent < c->total ? POLLOUT : 0), 0 };
        int r = poll(&p, 1, 10000);
        if (r == 0)
            FAIL("echo client: no progress for 10 s (sent %zu got %zu)",
                 sent, got);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r > 0);
        if (p.revents & POLLOUT) {
            size_t n = 1 + (size_t)rand_r(&seed) % (size_t)c->maxchunk;
            if (n > c->total - sent)
                n = c->total - sent;
            ssize_t w = send(fd, data + sent, n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN)
                FAIL("client send: %s", strerror(errno));
            if (w > 0)
                sent += (size_t)w;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(fd, rb, 65536, 0);
            if (n < 0 && errno == EAGAIN)
                continue;
            if (n < 0)
                FAIL("client recv: %s", strerror(errno));
            if (n == 0)
                FAIL("client: early EOF after %zu of %zu", got, c->total);
            if ((size_t)n > sent - got)
                FAIL("client: echo of more than was sent");
            if (memcmp(rb, data + got, (size_t)n) != 0)
                FAIL("client: echoed bytes differ at offset ~%zu", got);
            got += (size_t)n;
        }
    }
    close(fd);
    free(data);
    free(rb);
    return NULL;
}

static int echo_finished;

/* file ops mixed into the echo test (test_file_echo); see below */
struct filemix;
static struct filemix *FM;
static void fm_pump(void);
static void fm_event(const struct io_event *e);
static void fm_finish(void);

static void conn_pump(struct conn *c)
{
    while (c->qn && !c->sending) {
        struct qent *e = &c->q[c->qh];
        long r = do_send(&c->t, e->p + e->off, e->len - e->off);
        if (r == -EINPROGRESS) {
            c->sending = true;
            break;
        }
        if (r < 0)
            FAIL("server send: %s", strerror((int)-r));
        e->off += (size_t)r;   /* short: loop re-issues the rest */
        if (e->off == e->len) {
            do_release(e->id);
            c->qh = (c->qh + 1) % c->qcap;
            c->qn--;
        }
    }
    if (c->eof && !c->qn && !c->sending && !c->done) {
        do_forget(&c->t);
        close(c->t.h.fd);
        c->done = true;
        echo_finished++;
    }
}

static void echo_test(unsigned nbufs, unsigned bufsize, int nconns,
                      size_t per_conn, int maxev, int maxchunk)
{
    mk(nbufs, bufsize);
    uint16_t port;
    struct th L;
    th_init(&L, listen_tcp(true, &port));
    do_accept_start(&L);

    struct client_arg *ca = calloc((size_t)nconns, sizeof *ca);
    struct conn **cs = calloc((size_t)nconns, sizeof *cs);
    struct io_event *ev = calloc((size_t)maxev, sizeof *ev);
    CHECK(ca && cs && ev);
    for (int i = 0; i < nconns; i++) {
        ca[i] = (struct client_arg){ .port = port, .total = per_conn,
                                     .seed = 1234u + (unsigned)i,
                                     .maxchunk = maxchunk };
        CHECK(pthread_create(&ca[i].tid, NULL, echo_client, &ca[i]) == 0);
    }
    int accepted = 0;
    echo_finished = 0;
    while (echo_finished < nconns) {
        if (FM)
            fm_pump();
        int n = get_events(ev, maxev, 1000);
        for (int i = 0; i < n; i++) {
            struct io_event *e = &ev[i];
            if (e->op == IO_FILE) {
                if (!FM)
                    FAIL("IO_FILE event in a socket-only test");
                fm_event(e);
                continue;
            }
            if (e->h == &L.h) {
                if (e->op != IO_ACCEPT || e->res < 0 || !e->more)
                    FAIL("accept event op %d res %d more %d", e->op, e->res,
                         e->more);
                if (accepted == nconns)
                    FAIL("more connections than clients");
                struct conn *c = calloc(1, sizeof *c);
                CHECK(c);
                c->qcap = (int)nbufs;
                c->q = calloc(nbufs, sizeof *c->q);
                CHECK(c->q);
                th_init(&c->t, e->res);
                cs[accepted++] = c;
                do_recv_start(&c->t);
                continue;
            }
            struct conn *c = (struct conn *)e->h;
            if (e->op == IO_RECV) {
                if (e->res > 0) {
                    if (c->qn == c->qcap)
                        FAIL("more buffers held than nbufs");
                    c->q[(c->qh + c->qn++) % c->qcap] = (struct qent){
                        e->buf_id, e->buf, (size_t)e->res, 0 };
                    if (!e->more)
                        FAIL("recv data event with more=0 (no stop asked)");
                } else if (e->res == 0) {
                    c->eof = true;
                } else {
                    FAIL("recv error %s", strerror(-e->res));
                }
                conn_pump(c);
            } else if (e->op == IO_SEND) {
                if (e->res < 0)
                    FAIL("IO_SEND error %s", strerror(-e->res));
                c->sending = false;
                c->q[c->qh].off += (size_t)e->res;
                if (c->q[c->qh].off == c->q[c->qh].len) {
                    do_release(c->q[c->qh].id);
                    c->qh = (c->qh + 1) % c->qcap;
                    c->qn--;
                }
                conn_pump(c);
            } else {
                FAIL("unexpected op %d", e->op);
            }
        }
    }
    CHECK_EQ(accepted, nconns);
    for (int i = 0; i < nconns; i++)
        CHECK(pthread_join(ca[i].tid, NULL) == 0);
    if (FM)
        fm_finish();   /* before the listener's drain: no stray events */

    CHECK(ops->cancel(B, &L.h) == 0);
    drain_finals(&L, 2000);
    CHECK_EQ(L.finals[IO_ACCEPT], 1);
    CHECK_EQ(L.last_res[IO_ACCEPT], -ECANCELED);
    do_forget(&L);
    close(L.h.fd);
    for (int i = 0; i < nconns; i++) {
        CHECK_EQ(cs[i]->t.finals[IO_RECV], 1);
        free(cs[i]->q);
        free(cs[i]);
    }
    free(cs);
    free(ca);
    free(ev);
    unmk();
}

/* (1) 4 connections, 1 MiB each, random chunks, echoed through the engine */
static void test_echo(void)
{
    echo_test(32, 4096, 4, 1u << 20, 16, 16384);
}

/* (2) only 4 buffers of 64 bytes and a tiny out[]: the engine must come back
 * to handles it could not drain (edge-triggered epoll won't tell again). */
static void test_few_buffers(void)
{
    echo_test(4, 64, 2, 256u << 10, 3, 8192);
}

/* (2b) the core holds every buffer and nothing new arrives on the socket:
 * after release_buf() the engine must come back to the handle by itself
 * (no new edge will come). */
static void test_hold_buffers(void)
{
    mk(4, 64);
    int sfd, cli;
    tcp_pair(&sfd, &cli);
    struct th S;
    th_init(&S, sfd);
    size_t total = 1000, got = 0;
    char *src = make_src(total);
    CHECK_EQ(send(cli, src, total, 0), total);
    do_recv_start(&S);
    struct io_event ev[8];
    struct { uint16_t id; char *p; int len; } hold[4];
    int nhold = 0, rounds = 0;
    double end = now_ms() + 5000;
    while (got < total) {
        if (now_ms() > end)
            FAIL("stuck at %zu of %zu bytes after %d release rounds", got,
                 total, rounds);
        int n = get_events(ev, 8, 30);
        for (int i = 0; i < n; i++) {
            CHECK(ev[i].h == &S.h && ev[i].op == IO_RECV && ev[i].res > 0);
            CHECK(nhold < 4);
            hold[nhold].id = ev[i].buf_id;
            hold[nhold].p = ev[i].buf;
            hold[nhold++].len = ev[i].res;
        }
        if (n == 0 && nhold) {   /* quiet: give every buffer back */
            for (int k = 0; k < nhold; k++) {
                CHECK(memcmp(hold[k].p, src + got, (size_t)hold[k].len) == 0);
                got += (size_t)hold[k].len;
                do_release(hold[k].id);
            }
            nhold = 0;
            rounds++;
        }
    }
    CHECK(rounds >= 3);
    CHECK(ops->recv_stop(B, &S.h) == 0);
    drain_finals(&S, 2000);
    CHECK_EQ(S.last_res[IO_RECV], -ECANCELED);
    do_forget(&S);
    close(sfd);
    close(cli);
    free(src);
    unmk();
}

/* (1b) out of fds: the accept ends with a final -EMFILE (no spinning);
 * re-armed later, it takes the connection already queued (no new edge). */
static void test_accept_emfile(void)
{
    mk(4, 64);
    uint16_t port;
    struct th L;
    th_init(&L, listen_tcp(true, &port));
    int cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(cli >= 0);
    struct rlimit old, lim;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
    lim = old;
    lim.rlim_cur = 256;
    CHECK(setrlimit(RLIMIT_NOFILE, &lim) == 0);
    int fds[256], nfds = 0;
    while (nfds < 256) {
        int d = dup(cli);
        if (d < 0) {
            CHECK(errno == EMFILE);
            break;
        }
        fds[nfds++] = d;
    }
    CHECK(nfds < 256 && nfds > 0);
    struct sockaddr_in a = lo_addr(port);
    CHECK(connect(cli, (struct sockaddr *)&a, sizeof a) == 0);
    do_accept_start(&L);
    drain_finals(&L, 3000);
    CHECK_EQ(L.finals[IO_ACCEPT], 1);
    CHECK_EQ(L.last_res[IO_ACCEPT], -EMFILE);
    expect_quiet(50);
    /* two: accept4 takes an fd before it looks at the queue */
    close(fds[--nfds]);
    close(fds[--nfds]);
    do_accept_start(&L);   /* the core re-arms once it has fds again */
    struct io_event ev[4];
    int got = -1;
    double end = now_ms() + 3000;
    while (got < 0) {
        if (now_ms() > end)
            FAIL("re-armed accept did not take the queued connection");
        int n = get_events(ev, 4, 50);
        for (int i = 0; i < n; i++) {
            CHECK(ev[i].h == &L.h && ev[i].op == IO_ACCEPT && ev[i].more);
            got = ev[i].res;
        }
    }
    close(got);
    while (nfds)
        close(fds[--nfds]);
    CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
    CHECK(ops->cancel(B, &L.h) == 0);
    drain_finals(&L, 2000);
    CHECK_EQ(L.last_res[IO_ACCEPT], -ECANCELED);
    do_forget(&L);
    close(L.h.fd);
    close(cli);
    unmk();
}

/* ---- (3) cancel -------------------------------------------------------- */

/* Send until a send stays in flight (the peer reads nothing, so the socket
 * buffer fills).  An engine may finish a send at once (bytes returned) or
 * through an IO_SEND event; a send still in flight 200 ms later is blocked. */
static void fill_until_blocked(struct th *t, const char *src, size_t srclen,
                               size_t *off)
{
    struct io_event ev[4];
    for (;;) {
        if (*off >= srclen)
            FAIL("send never blocked after %zu bytes", *off);
        size_t n = srclen - *off < 65536 ? srclen - *off : 65536;
        long r = do_send(t, src + *off, n);
        if (r >= 0) {
            *off += (size_t)r;
            continue;
        }
        if (r != -EINPROGRESS)
            FAIL("send: %s", strerror((int)-r));
        double end = now_ms() + 200;
        while (th_active(t, IO_SEND) && now_ms() < end) {
            int k = get_events(ev, 4, 20);
            for (int i = 0; i < k; i++) {
                if (ev[i].h != &t->h || ev[i].op != IO_SEND)
                    FAIL("unexpected event op %d", ev[i].op);
                if (ev[i].res < 0)
                    FAIL("IO_SEND: %s", strerror(-ev[i].res));
                *off += (size_t)ev[i].res;
            }
        }
        if (th_active(t, IO_SEND))
            return;
    }
}

/* Send len bytes that fit in the socket buffer; returns the bytes sent,
 * at once or by the IO_SEND event. */
static long send_complete(struct th *t, const char *buf, size_t len)
{
    long r = do_send(t, buf, len);
    if (r != -EINPROGRESS)
        return r;
    drain_finals(t, 2000);
    return t->last_res[IO_SEND];
}

static void test_cancel(void)
{
    mk(8, 1024);
    uint16_t port;
    struct th L, S;
    th_init(&L, listen_tcp(true, &port));
    do_accept_start(&L);
    int cli = connect_blocking(port);
    struct io_event ev[8];
    int sfd = -1;
    double end = now_ms() + 5000;
    while (sfd < 0) {
        if (now_ms() > end)
            FAIL("no accept event");
        int n = get_events(ev, 8, 100);
        for (int i = 0; i < n; i++) {
            CHECK(ev[i].h == &L.h && ev[i].op == IO_ACCEPT && ev[i].res >= 0);
            sfd = ev[i].res;
        }
    }
    th_init(&S, sfd);
    do_recv_start(&S);
    size_t len = 64u << 20, off = 0;
    char *src = make_src(len);
    fill_until_blocked(&S, src, len, &off);
    expect_quiet(50);   /* nothing to read, peer doesn't read */
    int sends_done = S.finals[IO_SEND];   /* sends that completed already */

    CHECK(ops->cancel(B, &S.h) == 0);
    CHECK(ops->cancel(B, &L.h) == 0);
    struct th *both[] = { &S, &L };
    drain_all(both, 2, 2000);
    expect_quiet(100);
    CHECK_EQ(S.finals[IO_RECV], 1);
    CHECK_EQ(S.finals[IO_SEND], sends_done + 1);
    CHECK_EQ(L.finals[IO_ACCEPT], 1);
    CHECK_EQ(S.last_res[IO_RECV], -ECANCELED);
    CHECK_EQ(L.last_res[IO_ACCEPT], -ECANCELED);
    if (S.last_res[IO_SEND] != -ECANCELED && S.last_res[IO_SEND] < 0)
        FAIL("send final res %d", S.last_res[IO_SEND]);

    /* cancel with nothing in flight: no event */
    CHECK(ops->cancel(B, &S.h) == 0);
    expect_quiet(50);
    do_forget(&S);
    do_forget(&L);
    close(S.h.fd);
    close(L.h.fd);
    close(cli);
    free(src);
    unmk();
}

/* ---- (4) recv_stop / recv_start loses nothing --------------------------- */

struct writer_arg { pthread_t tid; int fd; size_t total; };

static void *pattern_writer(void *arg)
{
    struct writer_arg *w = arg;
    unsigned seed = 99;
    char *buf = make_src(w->total);
    size_t off = 0;
    while (off < w->total) {
        size_t n = 1 + (size_t)rand_r(&seed) % 3000;
        if (n > w->total - off)
            n = w->total - off;
        ssize_t r = send(w->fd, buf + off, n, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            FAIL("writer send: %s", strerror(errno));
        off += (size_t)r;
        if (rand_r(&seed) % 16 == 0)
            sleep_ms(1);
    }
    close(w->fd);
    free(buf);
    return NULL;
}

static void test_stop_start(void)
{
    mk(8, 512);
    int sfd, cli;
    tcp_pair(&sfd, &cli);
    struct th S;
    th_init(&S, sfd);
    struct writer_arg w = { .fd = cli, .total = 2u << 20 };
    CHECK(pthread_create(&w.tid, NULL, pattern_writer, &w) == 0);
    do_recv_start(&S);
    size_t got = 0;
    int data_events = 0, cycles = 0;
    bool stopping = false, eof = false;
    struct io_event ev[16];
    while (!eof) {
        int n = get_events(ev, 16, 1000);
        for (int i = 0; i < n; i++) {
            struct io_event *e = &ev[i];
            CHECK(e->h == &S.h && e->op == IO_RECV);
            if (e->res > 0) {
                for (int k = 0; k < e->res; k++)
                    if ((unsigned char)e->buf[k] != pat(got + (size_t)k))
                        FAIL("byte %zu wrong after %d stop/start cycles",
                             got + (size_t)k, cycles);
                got += (size_t)e->res;
                do_release(e->buf_id);
                if (!stopping && e->more && ++data_events % 7 == 0) {
                    do_recv_stop(&S);
                    stopping = true;
                }
            }
            if (e->more)
                continue;
            if (e->res == 0) {
                eof = true;
            } else if (e->res == -ECANCELED && stopping) {
                stopping = false;
                cycles++;
                if (cycles % 4 == 0)
                    sleep_ms(2);   /* let data pile up while stopped */
                do_recv_start(&S);
            } else if (e->res > 0 && stopping) {
                /* the stop raced with data and the engine ended with it */
                stopping = false;
                cycles++;
                do_recv_start(&S);
            } else {
                FAIL("unexpected final recv res %d", e->res);
            }
        }
    }
    CHECK(pthread_join(w.tid, NULL) == 0);
    CHECK_EQ(got, w.total);
    if (cycles < 10)
        FAIL("only %d stop/start cycles", cycles);
    do_forget(&S);
    close(sfd);
    unmk();
}

/* ---- (5) wake ---------------------------------------------------------- */

static void *waker(void *arg)
{
    sleep_ms(100);
    ops->wake((struct backend *)arg);
    return NULL;
}

static void test_wake(void)
{
    mk(4, 64);
    struct io_event ev[8];
    for (int round = 0; round < 3; round++) {
        pthread_t t;
        double t0 = now_ms();
        CHECK(pthread_create(&t, NULL, waker, B) == 0);
        int n = get_events(ev, 8, -1);
        double dt = now_ms() - t0;
        CHECK_EQ(n, 0);
        if (dt < 50)
            FAIL("wait(-1) returned after %.1f ms, before the wake", dt);
        CHECK(pthread_join(t, NULL) == 0);
    }
    /* a wake before the wait makes the next wait return */
    ops->wake(B);
    ops->wake(B);
    ops->wake(B);
    CHECK_EQ(get_events(ev, 8, -1), 0);
    /* and is consumed: the following wait times out */
    double t0 = now_ms();
    CHECK_EQ(get_events(ev, 8, 100), 0);
    if (now_ms() - t0 < 50)
        FAIL("wake was not consumed (wait(100) returned at once)");
    unmk();
}

/* ---- (6) connect ------------------------------------------------------- */

static int connect_result(struct th *t, const struct sockaddr_in *a)
{
    int r = do_connect(t, (const struct sockaddr *)a, sizeof *a);
    if (r < 0)
        return r;   /* failed at once, no event */
    CHECK_EQ(r, 0);
    drain_finals(t, 3000);
    CHECK_EQ(t->finals[IO_CONNECT], 1);
    return t->last_res[IO_CONNECT];
}

static void test_connect(void)
{
    mk(4, 256);
    uint16_t port;
    int l = listen_tcp(false, &port);
    struct th C;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    th_init(&C, fd);
    struct sockaddr_in a = lo_addr(port);
    int r = connect_result(&C, &a);
    if (r != 0)
        FAIL("connect to listening port: %s", strerror(-r));
    int afd = accept(l, NULL, NULL);
    CHECK(afd >= 0);
    /* the connection works through the engine */
    long s = send_complete(&C, "ping", 4);
    CHECK_EQ(s, 4);
    char buf[8];
    CHECK_EQ(recv(afd, buf, sizeof buf, 0), 4);
    do_forget(&C);
    close(fd);
    close(afd);
    close(l);

    /* a bound, not listening socket: the port is closed but can't be
     * taken by anyone else meanwhile */
    int hold = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(hold >= 0);
    struct sockaddr_in h = lo_addr(0);
    CHECK(bind(hold, (struct sockaddr *)&h, sizeof h) == 0);
    socklen_t hl = sizeof h;
    CHECK(getsockname(hold, (struct sockaddr *)&h, &hl) == 0);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    th_init(&C, fd);
    r = connect_result(&C, &h);
    if (r != -ECONNREFUSED)
        FAIL("connect to closed port: %d (%s), expected -ECONNREFUSED", r,
             strerror(-r));
    do_forget(&C);
    close(fd);
    close(hold);
    unmk();
}

/* (6b) a connect that stays in progress (the listener's backlog is full):
 * no early IO_CONNECT (a stale writable edge is not a completion); it
 * completes once there is room; a pending connect can be cancelled. */
static void test_connect_pending(void)
{
    mk(4, 256);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(l >= 0);
    struct sockaddr_in a = lo_addr(0);
    socklen_t al = sizeof a;
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(l, 0) == 0);
    CHECK(getsockname(l, (struct sockaddr *)&a, &al) == 0);
    int filler = connect_blocking(ntohs(a.sin_port));   /* queue now full */

    struct th C, D;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    th_init(&C, fd);
    int r = do_connect(&C, (struct sockaddr *)&a, sizeof a);
    if (r != 0)
        FAIL("connect: %s", strerror(-r));
    expect_quiet(300);
    if (C.finals[IO_CONNECT])
        FAIL("IO_CONNECT before the connection could be made");
    int af = accept(l, NULL, NULL);   /* the filler: room for C's retry */
    CHECK(af >= 0);
    drain_finals(&C, 8000);   /* SYN retransmission after ~1 s */
    CHECK_EQ(C.last_res[IO_CONNECT], 0);

    /* the queue holds C now: D stays pending until cancelled */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    th_init(&D, fd);
    r = do_connect(&D, (struct sockaddr *)&a, sizeof a);
    if (r != 0)
        FAIL("connect: %s", strerror(-r));
    expect_quiet(100);
    CHECK(ops->cancel(B, &D.h) == 0);
    drain_finals(&D, 2000);
    CHECK_EQ(D.finals[IO_CONNECT], 1);
    CHECK_EQ(D.last_res[IO_CONNECT], -ECANCELED);
    expect_quiet(50);
    do_forget(&C);
    do_forget(&D);
    close(C.h.fd);
    close(D.h.fd);
    close(af);
    close(filler);
    close(l);
    unmk();
}

/* ---- (7) EOF ----------------------------------------------------------- */

static void eof_case(bool data_before_start)
{
    mk(4, 4);   /* tiny buffers: the message takes several events */
    int sfd, cli;
    tcp_pair(&sfd, &cli);
    struct th S;
    th_init(&S, sfd);
    static const char msg[] = "hello, world";
    if (!data_before_start)
        do_recv_start(&S);
    CHECK_EQ(send(cli, msg, sizeof msg - 1, 0), sizeof msg - 1);
    close(cli);
    if (data_before_start) {
        sleep_ms(20);
        do_recv_start(&S);
    }
    char got[64];
    size_t n = 0;
    struct io_event ev[4];
    double end = now_ms() + 3000;
    while (th_active(&S, IO_RECV)) {
        if (now_ms() > end)
            FAIL("no EOF event");
        int k = get_events(ev, 4, 100);
        for (int i = 0; i < k; i++) {
            CHECK(ev[i].h == &S.h && ev[i].op == IO_RECV);
            if (ev[i].res > 0) {
                CHECK(n + (size_t)ev[i].res <= sizeof got);
                memcpy(got + n, ev[i].buf, (size_t)ev[i].res);
                n += (size_t)ev[i].res;
                do_release(ev[i].buf_id);
            }
        }
    }
    CHECK_EQ(S.last_res[IO_RECV], 0);
    CHECK_EQ(n, sizeof msg - 1);
    CHECK(memcmp(got, msg, n) == 0);
    expect_quiet(50);
    do_forget(&S);
    close(sfd);
    unmk();
}

static void test_eof(void)
{
    eof_case(false);
    eof_case(true);
}

/* ---- (7b) recv_into: straight into the caller's buffer ------------------ */

/* One recv_into; returns its final result (bytes, 0 or -errno). */
static int recv_into_once(struct th *t, char *buf, size_t len)
{
    struct io_event ev[4];
    do_recv_into(t, buf, len);
    double end = now_ms() + 5000;
    while (th_active(t, IO_RECV)) {
        if (now_ms() > end)
            FAIL("recv_into: no final event");
        int k = get_events(ev, 4, 100);
        for (int i = 0; i < k; i++)
            CHECK(ev[i].h == &t->h && ev[i].op == IO_RECV);
    }
    return t->last_res[IO_RECV];
}

static void test_recv_into(void)
{
    mk(4, 64);
    int sfd, cli;
    tcp_pair(&sfd, &cli);
    struct th S;
    th_init(&S, sfd);

    /* Nothing there: it waits; recv_stop ends it without bytes. */
    static char small[16];
    do_recv_into(&S, small, sizeof small);
    expect_quiet(30);
    do_recv_stop(&S);
    drain_finals(&S, 3000);
    CHECK_EQ(S.last_res[IO_RECV], -ECANCELED);

    /* A stream written in random pieces arrives whole and in order, a
     * receive never past what it asked for. */
    enum { TOTAL = 3 * 1000 * 1000 + 17 };
    struct writer_arg wa = { .fd = cli, .total = TOTAL };
    CHECK(pthread_create(&wa.tid, NULL, pattern_writer, &wa) == 0);
    char *got = malloc(TOTAL);
    CHECK(got);
    size_t n = 0;
    while (n < TOTAL) {
        size_t ask = TOTAL - n < 65536 ? TOTAL - n : 65536;
        int r = recv_into_once(&S, got + n, ask);
        if (r <= 0)
            FAIL("recv_into at %zu: %d", n, r);
        n += (size_t)r;
    }
    CHECK(pthread_join(wa.tid, NULL) == 0);   /* the writer closed cli */
    for (size_t i = 0; i < TOTAL; i++)
        if ((unsigned char)got[i] != pat(i))
            FAIL("byte %zu wrong", i);
    free(got);
    /* Then EOF, and a multishot recv afterwards sees it too. */
    CHECK_EQ(recv_into_once(&S, small, sizeof small), 0);
    do_recv_start(&S);
    drain_finals(&S, 3000);
    CHECK_EQ(S.last_res[IO_RECV], 0);
    do_forget(&S);
    close(sfd);
    unmk();
}

/* ---- (8) send to a peer that doesn't read ------------------------------ */

struct reader_arg { pthread_t tid; int fd; size_t got; };

static void *pattern_reader(void *arg)
{
    struct reader_arg *r = arg;
    char *buf = malloc(65536);
    CHECK(buf);
    for (;;) {
        ssize_t n = recv(r->fd, buf, 65536, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            FAIL("reader: %s", strerror(errno));
        if (n == 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if ((unsigned char)buf[i] != pat(r->got + (size_t)i))
                FAIL("reader: byte %zu wrong", r->got + (size_t)i);
        r->got += (size_t)n;
    }
    free(buf);
    return NULL;
}

static void test_send_blocked(void)
{
    mk(4, 64);
    int sfd, cli;
    tcp_pair(&sfd, &cli);
    struct th S;
    th_init(&S, sfd);
    size_t len = 64u << 20, off = 0;
    char *src = make_src(len);
    fill_until_blocked(&S, src, len, &off);
    expect_quiet(100);   /* the peer reads nothing: no IO_SEND yet */

    struct reader_arg r = { .fd = cli };
    CHECK(pthread_create(&r.tid, NULL, pattern_reader, &r) == 0);
    size_t target = off + (4u << 20);
    struct io_event ev[4];
    int events = 0;
    while (off < target) {
        if (th_active(&S, IO_SEND)) {
            int n = get_events(ev, 4, 3000);
            if (n == 0)
                FAIL("no IO_SEND event after the peer started reading");
            for (int i = 0; i < n; i++) {
                CHECK(ev[i].h == &S.h && ev[i].op == IO_SEND);
                if (ev[i].res < 0)
                    FAIL("IO_SEND res %s", strerror(-ev[i].res));
                off += (size_t)ev[i].res;
                events++;
            }
            continue;
        }
        size_t n = target - off < 65536 ? target - off : 65536;
        long s = do_send(&S, src + off, n);
        if (s == -EINPROGRESS)
            continue;
        if (s < 0)
            FAIL("send: %s", strerror((int)-s));
        off += (size_t)s;
    }
    CHECK(events >= 1);
    CHECK(shutdown(sfd, SHUT_WR) == 0);
    CHECK(pthread_join(r.tid, NULL) == 0);
    CHECK_EQ(r.got, off);
    do_forget(&S);
    close(sfd);
    close(cli);
    free(src);
    unmk();
}

/* ---- regular files (file_op) ------------------------------------------- */

static bool has_file_op(void)
{
    if (ops->file_op == NULL)
        FAIL("engine %s has no file_op", ops->name);
    return true;
}

/* 0 (an IO_FILE event follows) or file_op's error. */
static int do_file(struct th *t, int op, void *buf, size_t len, uint64_t off)
{
    if (th_active(t, IO_FILE))
        FAIL("test bug: two file ops in flight on one handle");
    int r = ops->file_op(B, &t->h, op, buf, len, off);
    if (r == 0)
        t->started[IO_FILE]++;
    else if (r > 0)
        FAIL("file_op returned %d", r);
    return r;
}

/* One file op to completion; returns its event's res. */
static int file_run(struct th *t, int op, void *buf, size_t len,
                    uint64_t off)
{
    int r = do_file(t, op, buf, len, off);
    if (r)
        FAIL("file_op(%d, len %zu, off %llu): %s", op, len,
             (unsigned long long)off, strerror(-r));
    drain_finals(t, 5000);
    CHECK_EQ(t->finals[IO_FILE], t->started[IO_FILE]);
    return t->last_res[IO_FILE];
}

static int temp_file(char *path)
{
    strcpy(path, "/tmp/iocport-bt-XXXXXX");
    int fd = mkostemp(path, O_CLOEXEC);
    CHECK(fd >= 0);
    return fd;
}

static void fill_pat(char *p, size_t len, size_t seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (char)pat(seed + i);
}

/* Writes at offsets read back; holes read as zeros; short read at EOF;
 * 0 past EOF; fsync/fdatasync 0; one op per handle (-EBUSY); a write on a
 * read-only fd -EBADF; a big transfer. */
static void test_file_rw(void)
{
    mk(4, 64);
    has_file_op();
    char path[64];
    int fd = temp_file(path);
    int rofd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(rofd >= 0);
    CHECK(unlink(path) == 0);   /* the fds keep it; nothing left behind */

    struct th F;
    th_init(&F, fd);
    char *w = malloc(1 << 20), *r = malloc(1 << 20);
    CHECK(w && r);

    fill_pat(w, 1000, 0);
    CHECK_EQ(file_run(&F, FILE_WRITE, w, 1000, 0), 1000);
    fill_pat(w + 1000, 500, 77777);
    CHECK_EQ(file_run(&F, FILE_WRITE, w + 1000, 500, 5000), 500);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    CHECK_EQ(st.st_size, 5500);

    memset(r, 0xee, 8192);
    CHECK_EQ(file_run(&F, FILE_READ, r, 1000, 0), 1000);
    CHECK(memcmp(r, w, 1000) == 0);
    CHECK_EQ(file_run(&F, FILE_READ, r, 500, 5000), 500);
    CHECK(memcmp(r, w + 1000, 500) == 0);
    memset(r, 0xee, 8192);
    CHECK_EQ(file_run(&F, FILE_READ, r, 4000, 1000), 4000);   /* the hole */
    for (int i = 0; i < 4000; i++)
        if (r[i] != 0)
            FAIL("hole byte %d is %d", i, r[i]);
    /* short read at EOF, then 0 at and past EOF */
    CHECK_EQ(file_run(&F, FILE_READ, r, 1000, 5200), 300);
    CHECK(memcmp(r, w + 1000 + 200, 300) == 0);
    CHECK_EQ(file_run(&F, FILE_READ, r, 1000, 5500), 0);
    CHECK_EQ(file_run(&F, FILE_READ, r, 1000, 1ull << 40), 0);
    CHECK_EQ(file_run(&F, FILE_READ, r, 0, 0), 0);

    CHECK_EQ(file_run(&F, FILE_FSYNC, NULL, 0, 0), 0);
    CHECK_EQ(file_run(&F, FILE_FDATASYNC, NULL, 0, 0), 0);

    /* one op per handle; a bad opcode or offset starts nothing */
    CHECK_EQ(do_file(&F, FILE_READ, r, 100, 0), 0);
    CHECK_EQ(ops->file_op(B, &F.h, FILE_READ, r, 100, 0), -EBUSY);
    drain_finals(&F, 5000);
    CHECK_EQ(F.last_res[IO_FILE], 100);
    CHECK_EQ(ops->file_op(B, &F.h, 0, r, 100, 0), -EINVAL);
    CHECK_EQ(ops->file_op(B, &F.h, FILE_FDATASYNC + 1, r, 100, 0), -EINVAL);
    CHECK_EQ(ops->file_op(B, &F.h, FILE_READ, r, 100, UINT64_MAX), -EINVAL);

    /* 1 MiB in one op (a short result is allowed: finish it) */
    fill_pat(w, 1 << 20, 31337);
    size_t done = 0;
    while (done < (1u << 20)) {
        int n = file_run(&F, FILE_WRITE, w + done, (1u << 20) - done,
                         65536 + done);
        CHECK(n > 0);
        done += (size_t)n;
    }
    memset(r, 0, 1 << 20);
    done = 0;
    while (done < (1u << 20)) {
        int n = file_run(&F, FILE_READ, r + done, (1u << 20) - done,
                         65536 + done);
        CHECK(n > 0);
        done += (size_t)n;
    }
    CHECK(memcmp(r, w, 1 << 20) == 0);

    /* errors come as the event's res */
    struct th R;
    th_init(&R, rofd);
    CHECK_EQ(file_run(&R, FILE_WRITE, w, 100, 0), -EBADF);
    CHECK_EQ(file_run(&R, FILE_READ, r, 100, 0), 100);   /* reads work */
    for (int i = 0; i < 100; i++)
        CHECK(r[i] == (char)pat((size_t)i));
    expect_quiet(50);   /* exactly one event per op */

    do_forget(&R);
    do_forget(&F);
    close(rofd);
    close(fd);
    free(w);
    free(r);
    unmk();
}

/* A write at or beyond RLIMIT_FSIZE: -EFBIG (SIGXFSZ ignored); across it:
 * short. */
static void test_file_efbig(void)
{
    mk(4, 64);
    has_file_op();
    char path[64];
    int fd = temp_file(path);
    CHECK(unlink(path) == 0);
    struct th F;
    th_init(&F, fd);
    char buf[256];
    fill_pat(buf, sizeof buf, 5);

    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = 4096;
    if (old.rlim_max != RLIM_INFINITY && old.rlim_max < lim.rlim_cur)
        lim.rlim_cur = old.rlim_max;
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    rlim_t L = lim.rlim_cur;

    int a = file_run(&F, FILE_WRITE, buf, 100, L + 100);
    int b = file_run(&F, FILE_WRITE, buf, 100, L);
    int c = L >= 40 ? file_run(&F, FILE_WRITE, buf, 100, L - 40) : 40;
    int d = file_run(&F, FILE_WRITE, buf, 100, 0);
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, old_sig);
    CHECK_EQ(a, -EFBIG);
    CHECK_EQ(b, -EFBIG);
    CHECK_EQ(c, 40);   /* short: up to the limit */
    CHECK_EQ(d, 100);
    /* the limit is gone again */
    CHECK_EQ(file_run(&F, FILE_WRITE, buf, 100, L + 100), 100);
    do_forget(&F);
    close(fd);
    unmk();
}

/* 64 handles with file ops in flight at once (several fds, reads, writes
 * and syncs), some cancelled, reaped with a small out[]: each ends with
 * exactly one final event. */
#define NFH 64
#define FBLK 4096
static void test_file_many(void)
{
    mk(4, 64);
    has_file_op();
    char path[64];
    int fds[2];
    for (int i = 0; i < 2; i++) {
        fds[i] = temp_file(path);
        CHECK(unlink(path) == 0);
    }
    static struct th T[NFH];
    struct th *tp[NFH];
    char *bufs = malloc((size_t)NFH * FBLK), *rb = malloc((size_t)NFH * FBLK);
    CHECK(bufs && rb);
    for (int round = 0; round < 4; round++) {
        /* writes (cancel some: the real result or -ECANCELED, once) */
        for (int i = 0; i < NFH; i++) {
            th_init(&T[i], fds[i & 1]);
            tp[i] = &T[i];
            fill_pat(bufs + (size_t)i * FBLK, FBLK, (size_t)(round * NFH + i) * 7919);
            CHECK_EQ(do_file(&T[i], FILE_WRITE, bufs + (size_t)i * FBLK, FBLK,
                             (uint64_t)(i >> 1) * FBLK), 0);
        }
        if (round == 1)
            for (int i = 0; i < NFH; i += 3)
                CHECK(ops->cancel(B, &T[i].h) == 0);
        int got = 0;
        struct io_event ev[3];
        double end = now_ms() + 5000;
        while (got < NFH) {
            if (now_ms() > end)
                FAIL("%d of %d file events", got, NFH);
            int n = get_events(ev, round & 1 ? 1 : 3, 100);
            for (int k = 0; k < n; k++) {
                CHECK(ev[k].op == IO_FILE && !ev[k].more);
                CHECK(ev[k].res == FBLK ||
                      (round == 1 && ev[k].res == -ECANCELED));
                got++;
            }
        }
        int cancelled = 0;
        for (int i = 0; i < NFH; i++) {
            CHECK_EQ(T[i].finals[IO_FILE], 1);
            if (T[i].last_res[IO_FILE] == -ECANCELED) {
                cancelled++;   /* write it again, synchronously */
                CHECK_EQ(file_run(&T[i], FILE_WRITE, bufs + (size_t)i * FBLK,
                                  FBLK, (uint64_t)(i >> 1) * FBLK), FBLK);
            }
        }
        if (cancelled)
            printf("  (%d writes cancelled)\n", cancelled);
        /* reads and syncs together */
        for (int i = 0; i < NFH; i++) {
            memset(rb + (size_t)i * FBLK, 0, FBLK);
            if (i % 16 == 15)
                CHECK_EQ(do_file(&T[i], i & 16 ? FILE_FSYNC : FILE_FDATASYNC,
                                 NULL, 0, 0), 0);
            else
                CHECK_EQ(do_file(&T[i], FILE_READ, rb + (size_t)i * FBLK,
                                 FBLK, (uint64_t)(i >> 1) * FBLK), 0);
        }
        drain_all(tp, NFH, 5000);
        for (int i = 0; i < NFH; i++) {
            CHECK_EQ(T[i].finals[IO_FILE], T[i].started[IO_FILE]);
            if (i % 16 == 15) {
                CHECK_EQ(T[i].last_res[IO_FILE], 0);
                continue;
            }
            CHECK_EQ(T[i].last_res[IO_FILE], FBLK);
            if (memcmp(rb + (size_t)i * FBLK, bufs + (size_t)i * FBLK, FBLK))
                FAIL("round %d handle %d: read back differs", round, i);
        }
        expect_quiet(20);
        for (int i = 0; i < NFH; i++)
            do_forget(&T[i]);
    }
    close(fds[0]);
    close(fds[1]);
    free(bufs);
    free(rb);
    unmk();
}

/* File ops in flight all along an echo test on the same engine. */
#define FM_N 8
struct filemix {
    int fd;
    struct th t[FM_N];
    char w[FM_N][FBLK], r[FM_N][FBLK];
    unsigned k[FM_N];     /* cycle: write, read back, (every 4th) fdatasync */
    int phase[FM_N];
    bool stopping;
    unsigned ops;
};

static void fm_issue(int j)
{
    struct filemix *m = FM;
    uint64_t off = (uint64_t)j * 65536 + (m->k[j] % 16) * FBLK;
    int r;
    switch (m->phase[j]) {
    case 0:
        fill_pat(m->w[j], FBLK, (size_t)j * 1000003u + m->k[j] * 131u);
        r = do_file(&m->t[j], FILE_WRITE, m->w[j], FBLK, off);
        break;
    case 1:
        memset(m->r[j], 0, FBLK);
        r = do_file(&m->t[j], FILE_READ, m->r[j], FBLK, off);
        break;
    default:
        r = do_file(&m->t[j], FILE_FDATASYNC, NULL, 0, 0);
        break;
    }
    if (r)
        FAIL("file_op in the echo mix: %s", strerror(-r));
}

static void fm_pump(void)
{
    if (FM->stopping)
        return;
    for (int j = 0; j < FM_N; j++)
        if (!th_active(&FM->t[j], IO_FILE))
            fm_issue(j);
}

static void fm_event(const struct io_event *e)
{
    struct filemix *m = FM;
    int j = (int)((struct th *)e->h - m->t);
    if (j < 0 || j >= FM_N || e->h != &m->t[j].h)
        FAIL("IO_FILE event for an unknown handle");
    m->ops++;
    switch (m->phase[j]) {
    case 0:
        CHECK_EQ(e->res, FBLK);
        m->phase[j] = 1;
        break;
    case 1:
        CHECK_EQ(e->res, FBLK);
        if (memcmp(m->r[j], m->w[j], FBLK) != 0)
            FAIL("echo mix: file handle %d read back differs", j);
        m->phase[j] = m->k[j] % 4 == 3 ? 2 : 0;
        m->k[j]++;
        break;
    default:
        CHECK_EQ(e->res, 0);
        m->phase[j] = 0;
        break;
    }
    if (!m->stopping)
        fm_issue(j);
}

static void fm_finish(void)
{
    struct filemix *m = FM;
    m->stopping = true;
    struct io_event ev[4];
    double end = now_ms() + 5000;
    for (;;) {
        bool any = false;
        for (int j = 0; j < FM_N; j++)
            any |= th_active(&m->t[j], IO_FILE);
        if (!any)
            break;
        if (now_ms() > end)
            FAIL("echo mix: file events missing");
        int n = get_events(ev, 4, 50);
        for (int i = 0; i < n; i++) {
            if (ev[i].op != IO_FILE)
                FAIL("unexpected op %d after the echo", ev[i].op);
            fm_event(&ev[i]);
        }
    }
}

static void test_file_echo(void)
{
    struct filemix *m = calloc(1, sizeof *m);
    CHECK(m);
    char path[64];
    m->fd = temp_file(path);
    CHECK(unlink(path) == 0);
    for (int j = 0; j < FM_N; j++)
        th_init(&m->t[j], m->fd);
    FM = m;
    echo_test(32, 4096, 4, 1u << 20, 16, 16384);   /* has its own mk() */
    FM = NULL;
    if (m->ops < 50)
        FAIL("only %u file ops ran during the echo", m->ops);
    close(m->fd);
    free(m);
}

/* ---- main -------------------------------------------------------------- */

static const struct { const char *name; void (*fn)(void); } tests[] = {
    { "echo", test_echo },
    { "accept_emfile", test_accept_emfile },
    { "few_buffers", test_few_buffers },
    { "hold_buffers", test_hold_buffers },
    { "cancel", test_cancel },
    { "stop_start", test_stop_start },
    { "wake", test_wake },
    { "connect", test_connect },
    { "connect_pending", test_connect_pending },
    { "eof", test_eof },
    { "recv_into", test_recv_into },
    { "send_blocked", test_send_blocked },
    { "file_rw", test_file_rw },
    { "file_efbig", test_file_efbig },
    { "file_many", test_file_many },
    { "file_echo", test_file_echo },
};

int main(int argc, char **argv)
{
    const struct { const char *name; const struct backend_ops *ops; }
    engines[] = {
        { "epoll", &iocp_epoll_ops },
        { "uring", &iocp_uring_ops },   /* NULL unless uring.c is linked */
    };
    if (argc < 2) {
        fprintf(stderr, "usage: %s epoll|uring [test]\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof engines / sizeof engines[0]; i++)
        if (strcmp(argv[1], engines[i].name) == 0)
            ops = engines[i].ops;
    if (!ops) {
        printf("skip: backend '%s' not linked into this driver\n", argv[1]);
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ran = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (argc > 2 && strcmp(argv[2], tests[i].name) != 0)
            continue;
        cur_test = tests[i].name;
        alarm(20);
        tests[i].fn();
        alarm(0);
        printf("ok %s\n", tests[i].name);
        ran++;
    }
    if (!ran) {
        fprintf(stderr, "no test named %s\n", argv[2]);
        return 2;
    }
    return 0;
}
