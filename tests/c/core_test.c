/* core_test.c - the native core without Python: a server run through
 * core.h alone, with a C dispatch layer, on the engine named by argv[1]
 * ("epoll" or "uring"; exit 77 if io_uring is refused here).
 *
 * The dispatch echoes every message with conn_send(), closes gracefully on
 * the message "close", and counts what it is told.  The checks:
 *   echo         several clients, pipelined messages, every reply in order
 *   close        conn_close() from the dispatch: the reply, then EOF
 *   backpressure a client that stops reading: max_unsent pauses receiving
 *                (the stats stop counting messages); once it reads, every
 *                reply arrives
 *   truncated    whole messages, part of one, the peer's FIN: every reply,
 *                then EOF; the close counted as truncated
 *   bad frame    whole messages, then an oversized header in one write:
 *                every reply, then EOF (a FIN, not a reset); too_big
 *   linger       (built with -DLINGER_MS and a sweep that never comes,
 *                -DSWEEP_MS=600000) conn_close() with peers that never
 *                send their FIN: each connection closes LINGER_MS after
 *                our FIN, on the linger queue's own timer, not at a sweep;
 *                one whose peer does send its FIN leaves the queue from
 *                its middle and closes at once
 * Built with ASan+UBSan by tests/test_backend_c.py. */
#include "core/core.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *test = "setup";

static void
fail(int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL [%s] core_test.c:%d: ", test, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

#define FAIL(...) fail(__LINE__, __VA_ARGS__)
#define CHECK(x) do { if (!(x)) FAIL("%s", #x); } while (0)

/* ---- the C dispatch layer ------------------------------------------------ */

static _Atomic unsigned handled, opened, closed_n;

static void
dispatch(struct worker *w, unsigned from, unsigned to)
{
    for (unsigned i = from; i < to; i++) {
        struct entry *e = worker_entry(w, i);
        if (e->kind == ENTRY_OPEN) {
            opened++;
            continue;
        }
        if (e->kind == ENTRY_CLOSE) {
            closed_n++;
            continue;
        }
        if (e->kind != ENTRY_MSG || !conn_deliverable(e->c, ENTRY_MSG))
            continue;
        handled++;
        int rc = conn_send(e->c, e->ptr, e->len, 1, NULL);
        if (rc < 0 && rc != -EPIPE)
            FAIL("conn_send: %s", strerror(-rc));
        if (e->len == 5 && memcmp(e->ptr, "close", 5) == 0)
            conn_close(e->c, 1);
    }
}

static void
release(struct worker *w, void **owners, unsigned n)
{
    (void)w, (void)owners, (void)n;   /* nothing is sent by reference */
}

static const struct dispatch_ops c_dispatch = {
    .dispatch = dispatch,
    .release = release,
};

/* ---- clients --------------------------------------------------------------- */

static uint16_t port;

static int
client(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct timeval tv = {10, 0};   /* a hang fails the test */
    CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    return fd;
}

/* A len4 frame of payload p into out; its length. */
static size_t
frame(char *out, const char *p, uint32_t len)
{
    uint32_t be = htonl(len);
    memcpy(out, &be, 4);
    memcpy(out + 4, p, len);
    return 4 + (size_t)len;
}

static void
send_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            FAIL("send: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

static void
recv_exact(int fd, char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            FAIL("recv: %s", n == 0 ? "EOF too soon" : strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* The next read is the end of the stream: EOF, not a reset. */
static void
expect_eof(int fd)
{
    char c;
    ssize_t n;
    do
        n = recv(fd, &c, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n != 0)
        FAIL("expected EOF, got %zd (%s)", n, n < 0 ? strerror(errno) : "data");
}

static uint64_t
stat_of(struct server *s, int reason)
{
    struct server_stats st;
    server_get_stats(s, &st);
    return reason < 0 ? st.msgs_in : st.errors[reason];
}

static void
wait_stat(struct server *s, int reason, uint64_t want)
{
    for (int i = 0; i < 2000 && stat_of(s, reason) < want; i++) {
        struct timespec ms = {0, 5 * 1000 * 1000};
        nanosleep(&ms, NULL);
    }
    if (stat_of(s, reason) < want)
        FAIL("stat %d is %llu, expected %llu", reason,
             (unsigned long long)stat_of(s, reason), (unsigned long long)want);
}

/* ---- the checks ------------------------------------------------------------ */

static void
check_echo(void)
{
    test = "echo";
    enum { CLIENTS = 4, MSGS = 200 };
    int fds[CLIENTS];
    char buf[64], out[64];
    for (int c = 0; c < CLIENTS; c++)
        fds[c] = client();
    for (int c = 0; c < CLIENTS; c++)
        for (int m = 0; m < MSGS; m++) {
            int n = snprintf(buf, sizeof buf, "client %d message %d", c, m);
            send_all(fds[c], out, frame(out, buf, (uint32_t)n));
        }
    for (int c = 0; c < CLIENTS; c++) {
        for (int m = 0; m < MSGS; m++) {
            int n = snprintf(buf, sizeof buf, "client %d message %d", c, m);
            size_t len = frame(out, buf, (uint32_t)n);
            char got[64];
            recv_exact(fds[c], got, len);
            if (memcmp(got, out, len) != 0)
                FAIL("client %d message %d: wrong reply", c, m);
        }
        close(fds[c]);
    }
}

/* "close", its reply, our FIN: the connection lingers until the peer's. */
static void
close_and_read_eof(int fd)
{
    char out[16], got[16];
    size_t len = frame(out, "close", 5);
    send_all(fd, out, len);
    recv_exact(fd, got, len);
    CHECK(memcmp(got, out, len) == 0);
    expect_eof(fd);
}

static void
check_close(void)
{
    test = "close";
    int fd = client();
    close_and_read_eof(fd);
    close(fd);
}

static void
check_backpressure(struct server *s)
{
    test = "backpressure";
    enum { SIZE = 16 * 1024, MSGS = 2000 };   /* 32 MiB of replies */
    char *payload = malloc(SIZE), *msg = malloc(4 + SIZE), *got = malloc(4 + SIZE);
    CHECK(payload != NULL && msg != NULL && got != NULL);
    memset(payload, 'b', SIZE);
    size_t len = frame(msg, payload, SIZE);
    int fd = client();
    uint64_t before = stat_of(s, -1);
    /* Write without reading until the server stops reading too (a send
     * that waits 300 ms): that must come well before MSGS messages. */
    struct timeval tv = {0, 300 * 1000};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
    int sent = 0;
    size_t part = 0;   /* bytes of a message the blocked send took */
    for (; sent < MSGS; sent++) {
        ssize_t n = send(fd, msg, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0)
            FAIL("send: %s", strerror(errno));
        if ((size_t)n < len) {
            part = (size_t)n;
            break;
        }
    }
    uint64_t handled_then = stat_of(s, -1) - before;
    if (sent == MSGS || handled_then >= MSGS)
        FAIL("the server never paused (%d sent, %llu handled)", sent,
             (unsigned long long)handled_then);
    /* Now read: every reply arrives, in order; then the last message's
     * rest, and its reply too. */
    for (int m = 0; m < sent; m++) {
        recv_exact(fd, got, len);
        if (memcmp(got, msg, len) != 0)
            FAIL("reply %d is wrong", m);
    }
    if (part != 0) {
        send_all(fd, msg + part, len - part);
        recv_exact(fd, got, len);
        CHECK(memcmp(got, msg, len) == 0);
    }
    close(fd);
    free(payload);
    free(msg);
    free(got);
}

static void
check_truncated(struct server *s)
{
    test = "truncated";
    uint64_t before = stat_of(s, CLOSE_TRUNCATED);
    int fd = client();
    char out[64], got[64];
    size_t len = 0;
    for (int m = 0; m < 3; m++)
        len += frame(out + len, "whole", 5);
    memcpy(out + len, "\0\0\0\x09par", 7);   /* part of a fourth */
    send_all(fd, out, len + 7);
    CHECK(shutdown(fd, SHUT_WR) == 0);
    recv_exact(fd, got, len);
    CHECK(memcmp(got, out, len) == 0);
    expect_eof(fd);
    close(fd);
    wait_stat(s, CLOSE_TRUNCATED, before + 1);
}

static void
check_bad_frame(struct server *s)
{
    test = "bad frame";
    uint64_t before = stat_of(s, CLOSE_TOO_BIG);
    int fd = client();
    char out[64], got[64];
    size_t len = 0;
    for (int m = 0; m < 3; m++)
        len += frame(out + len, "whole", 5);
    memcpy(out + len, "\x7f\0\0\0garbage", 11);   /* over max_size */
    send_all(fd, out, len + 11);
    recv_exact(fd, got, len);
    CHECK(memcmp(got, out, len) == 0);
    expect_eof(fd);
    close(fd);
    wait_stat(s, CLOSE_TOO_BIG, before + 1);
}

#ifdef LINGER_MS
static int64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static unsigned
live_connections(struct server *s)
{
    struct server_stats st;
    server_get_stats(s, &st);
    return st.connections;
}

/* Wait until at most `n` connections are live; the time that took, in ms
 * (fails after `limit_ms`). */
static int64_t
wait_live(struct server *s, unsigned n, int64_t limit_ms)
{
    int64_t t0 = mono_ms();
    while (live_connections(s) > n) {
        if (mono_ms() - t0 > limit_ms)
            FAIL("%u connections still live after %lld ms, expected %u",
                 live_connections(s), (long long)limit_ms, n);
        struct timespec ms = {0, 1000 * 1000};
        nanosleep(&ms, NULL);
    }
    return mono_ms() - t0;
}

static void
check_linger(struct server *s)
{
    test = "linger";
    wait_live(s, 0, 10000);   /* the earlier checks' connections are gone */
    int a = client(), b = client(), c = client();
    close_and_read_eof(a);
    close_and_read_eof(c);   /* queued between a and b ... */
    int64_t last_close = mono_ms();
    close_and_read_eof(b);
    /* c's FIN: c closes at once, leaving the queue from its middle (the
     * queue must still hold a then b). */
    CHECK(shutdown(c, SHUT_WR) == 0);
    /* a and b close once LINGER_MS has passed since their FIN: not before
     * (each FIN went out after its "close" was sent), and not at a sweep
     * (SWEEP_MS is ten minutes here): the bound is LINGER_MS and a margin
     * for a slow machine, far below the sweep. */
    int64_t waited = wait_live(s, 0, LINGER_MS + 10000);
    int64_t since_last = mono_ms() - last_close;
    if (since_last < LINGER_MS - 1)
        FAIL("closed %lld ms after its FIN was asked, before LINGER_MS (%d)",
             (long long)since_last, LINGER_MS);
    printf("linger: closed %lld ms after the last close was asked "
           "(LINGER_MS %d; waited %lld ms)\n", (long long)since_last, LINGER_MS,
           (long long)waited);
    close(a);
    close(b);
    close(c);
}
#endif

/* ---- main ------------------------------------------------------------------ */

int
main(int argc, char **argv)
{
    if (argc != 2)
        FAIL("usage: core_test epoll|uring");
    int uring = strcmp(argv[1], "uring") == 0;
    if (uring && iocp_uring_probe() < 0) {
        printf("io_uring refused here\n");
        return 77;
    }
    struct server_config cfg = {
        .framing = {.kind = FRAMING_LENGTH, .hdr_size = 4, .big_endian = 1,
                    .max_size = 1 << 20},
        .workers = 2,
        .ops = uring ? &iocp_uring_ops : &iocp_epoll_ops,
        .max_unsent = 256 * 1024,
        .unsent_limit = 64u << 20,
        .max_connections = 1000,
        .half_close_ms = 30000,
        .want_open = 1,
    };
    struct server *s = server_create(&cfg, &c_dispatch, NULL);
    CHECK(s != NULL);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    CHECK(bind(lfd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(lfd, 128) == 0);
    CHECK(getsockname(lfd, (struct sockaddr *)&a, &alen) == 0);
    port = ntohs(a.sin_port);
    CHECK(server_add_listener(s, lfd, NULL) == 0);
    int rc = server_start(s);
    if (rc < 0)
        FAIL("server_start: %s", strerror(-rc));
    CHECK(strcmp(server_backend(s), argv[1]) == 0);

    check_echo();
    check_close();
    check_backpressure(s);
    check_truncated(s);
    check_bad_frame(s);
#ifdef LINGER_MS
    check_linger(s);
#endif

    test = "stop";
    server_stop(s);
    struct server_stats st;
    server_get_stats(s, &st);
    CHECK(st.connections == 0);
    CHECK(opened == st.accepted && closed_n == st.closed);
    CHECK(st.errors[CLOSE_RESET] == 0);
    server_destroy(s);
    printf("core %s: ok (%u messages)\n", argv[1], (unsigned)handled);
    return 0;
}
