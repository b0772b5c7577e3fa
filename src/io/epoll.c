/* epoll.c - the epoll I/O engine (iocp_epoll_ops, see backend.h).
 *
 * Owns: the epoll instance, the wake-up eventfd, the receive buffer pool and
 * its free list, the queue of final events waiting for the next wait(), and
 * the revisit list.  It turns readiness into completions: when an fd is
 * ready it makes the nonblocking call (accept4, read, send, SO_ERROR) and
 * reports the result as an io_event, keeping backend.h's completion contract.
 *
 * Every fd is registered once, edge-triggered, for in and out.  An edge is
 * remembered in h->ep.pending (H_IN / H_OUT) until the call that consumes it
 * hits EAGAIN.  When out[] is full or no receive buffer is free, the handle
 * goes on the revisit list and is served at the next wait() before blocking,
 * because epoll will not report that edge again.  The revisit list is served
 * round robin (handles that were not reached go first), so one busy
 * connection cannot starve the others.
 *
 * A read that returns less than it asked for has emptied the socket: it
 * consumes the edge like EAGAIN (data arriving later raises a new one),
 * saving a read that could only fail.  Not once the peer's FIN has been
 * reported (H_HUP): no new edge would say that the EOF is there too; nor
 * once urgent data has been (H_URG): a read stops short at its mark with
 * more data queued behind it.
 *
 * connect(): errors of connect(2) itself (ECONNREFUSED, ENETUNREACH, ...) are
 * reported through the IO_CONNECT event like asynchronous ones, so a 0 return
 * always means an event follows; a negative return (-EALREADY, -ENOMEM, an
 * epoll_ctl error) means nothing was started.
 *
 * No allocation per event: the revisit arrays are grown when a handle is
 * registered (each handle is listed at most once) and the final-event queue
 * is reserved at 4 slots per registered handle, growing only beyond that.
 *
 * file_op(): epoll cannot wait on regular files, so every file operation
 * goes to the thread pool (pool.c), whose results wait() takes as final
 * IO_FILE events.
 */
#include "io/backend.h"
#include "io/pool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define OPBIT(op) (1u << (op))

/* h->ep.pending bits */
#define H_IN     1u   /* readable edge not yet consumed down to EAGAIN */
#define H_OUT    2u   /* writable edge not yet consumed */
#define H_LISTED 4u   /* on the revisit list, at h->ep.rv_index */
#define H_HUP    8u   /* the peer's FIN (or an error) was reported */
#define H_URG   16u   /* TCP urgent data was reported (EPOLLPRI) */

#define EP_BATCH 256
#define MIN_CAP  64


struct backend {
    int epfd;
    int evfd;
    unsigned nbufs;
    unsigned bufsize;
    char *bufs;                 /* nbufs * bufsize, one block */
    uint16_t *freeids;          /* stack of free buffer ids */
    unsigned nfree;
    unsigned char *lent;        /* lent[id]: handed to the core */

    struct io_event *pq;        /* ring of final events for the next wait */
    unsigned pq_cap, pq_head, pq_len;

    struct io_handle **rv;      /* revisit list; NULL = forgotten slot */
    struct io_handle **rv2;     /* scratch for rebuilding it */
    unsigned rv_len, rv_cap;
    unsigned nregistered;

    struct io_pool *pool_threads;   /* file_op() */

    struct epoll_event evs[EP_BATCH];
};

/* ---- final-event queue ------------------------------------------------- */

static int pq_reserve(struct backend *b, unsigned want)
{
    if (want <= b->pq_cap)
        return 0;
    unsigned cap = b->pq_cap ? b->pq_cap : MIN_CAP;
    while (cap < want)
        cap *= 2;
    struct io_event *q = malloc((size_t)cap * sizeof *q);
    if (!q)
        return -ENOMEM;
    for (unsigned i = 0; i < b->pq_len; i++)
        q[i] = b->pq[(b->pq_head + i) % b->pq_cap];
    free(b->pq);
    b->pq = q;
    b->pq_cap = cap;
    b->pq_head = 0;
    return 0;
}

static int pq_push(struct backend *b, struct io_handle *h, int op, int res)
{
    if (b->pq_len == b->pq_cap && pq_reserve(b, b->pq_cap + 1) < 0)
        return -ENOMEM;
    b->pq[(b->pq_head + b->pq_len++) % b->pq_cap] = (struct io_event){
        .h = h, .res = res, .op = (uint8_t)op, .more = 0,
        .buf_id = op == IO_RECV && h->ep.recv_buf ? IO_NO_BUF : 0 };
    return 0;
}

/* ---- revisit list ------------------------------------------------------ */

static void rv_compact(struct backend *b)
{
    unsigned k = 0;
    for (unsigned i = 0; i < b->rv_len; i++) {
        struct io_handle *h = b->rv[i];
        if (h) {
            h->ep.rv_index = k;
            b->rv[k++] = h;
        }
    }
    b->rv_len = k;
}

/* Never fails: rv_cap >= registered handles, each listed at most once. */
static void rv_add(struct backend *b, struct io_handle *h)
{
    if (h->ep.pending & H_LISTED)
        return;
    if (b->rv_len == b->rv_cap)
        rv_compact(b);
    h->ep.rv_index = b->rv_len;
    b->rv[b->rv_len++] = h;
    h->ep.pending |= H_LISTED;
}

static int rv_grow(struct backend *b, unsigned want)
{
    if (want <= b->rv_cap)
        return 0;
    unsigned cap = b->rv_cap * 2;
    while (cap < want)
        cap *= 2;
    struct io_handle **a = realloc(b->rv, (size_t)cap * sizeof *a);
    if (!a)
        return -ENOMEM;
    b->rv = a;
    a = realloc(b->rv2, (size_t)cap * sizeof *a);
    if (!a)
        return -ENOMEM;   /* rv is bigger than rv_cap says: harmless */
    b->rv2 = a;
    b->rv_cap = cap;
    return 0;
}

/* ---- registration ------------------------------------------------------ */

static int reg(struct backend *b, struct io_handle *h)
{
    if (h->ep.registered)
        return 0;
    if (rv_grow(b, b->nregistered + 1) < 0 ||
        pq_reserve(b, 4 * (b->nregistered + 1)) < 0)
        return -ENOMEM;
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET,
        .data.ptr = h,
    };
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, h->fd, &ev) < 0)
        return -errno;
    h->ep = (struct io_epoll_state){ .registered = 1 };
    b->nregistered++;
    return 0;
}

/* ---- readiness -> events ----------------------------------------------- */

/* A read came back short: the socket is empty, unless the peer's FIN or
 * urgent data was reported (then read on to EAGAIN or the EOF).  True if the
 * edge is consumed. */
static inline bool drained(struct io_handle *h)
{
    if (h->ep.pending & (H_HUP | H_URG))
        return false;
    h->ep.pending &= ~H_IN;
    return true;
}

static inline void emit(struct io_event *out, int *n, struct io_handle *h,
                        int op, long res, int more)
{
    out[(*n)++] = (struct io_event){ .h = h, .res = (int32_t)res,
                                     .op = (uint8_t)op, .more = (uint8_t)more };
}

/* accept4 errors that are the new connection's, not the listener's
 * (accept(2), "Error handling"): skip that connection and go on. */
static bool accept_retry(int e)
{
    switch (e) {
    case EINTR: case ECONNABORTED: case EPROTO: case ENOPROTOOPT:
    case EHOSTDOWN: case ENONET: case EHOSTUNREACH: case EOPNOTSUPP:
    case ENETUNREACH: case ENETDOWN:
        return true;
    default:
        return false;
    }
}

/* An operation is over: its bit goes, and what it kept of its buffers.
 * (recv_err outlives a receive: it is the next one's final event.) */
static void op_end(struct io_handle *h, int op)
{
    h->ep.active &= ~OPBIT(op);
    if (op == IO_SEND) {
        h->ep.send_buf = NULL;
        h->ep.send_len = 0;
        h->ep.send_msg = NULL;
    } else if (op == IO_RECV) {
        h->ep.recv_buf = NULL;
    }
}

/* The final event of an operation, which ends. */
static void emit_final(struct io_event *out, int *n, struct io_handle *h,
                       int op, long res)
{
    op_end(h, op);
    emit(out, n, h, op, res, 0);
}

/* Each do_* turns one operation's readiness into events in out[*n..max)
 * (the caller checked that it is active and that the fd is ready for it).
 * True if readiness is left over: out[] is full, or no receive buffer is
 * free; the handle then goes on the revisit list. */

static bool do_connect(struct io_handle *h, struct io_event *out, int max,
                       int *n)
{
    if (*n == max)
        return true;
    int err = 0;
    socklen_t l = sizeof err;
    if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
        err = errno;
    if (err == 0) {
        /* A stale edge (e.g. from registering the unconnected socket) is
         * not a completion: check that we really are connected. */
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getpeername(h->fd, (struct sockaddr *)&ss, &sl) < 0) {
            if (errno == ENOTCONN) {
                h->ep.pending &= ~H_OUT;
                return false;
            }
            err = errno;
        }
    }
    emit_final(out, n, h, IO_CONNECT, -err);
    return false;
}

static bool do_send(struct io_handle *h, struct io_event *out, int max,
                    int *n)
{
    if (*n == max)
        return true;
    ssize_t r;
    do
        r = h->ep.send_msg
                ? sendmsg(h->fd, h->ep.send_msg, MSG_NOSIGNAL | MSG_DONTWAIT)
                : send(h->fd, h->ep.send_buf, h->ep.send_len,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EAGAIN)
        h->ep.pending &= ~H_OUT;
    else
        emit_final(out, n, h, IO_SEND, r < 0 ? -errno : r);
    return false;
}

static bool do_accept(struct io_handle *h, struct io_event *out, int max,
                      int *n)
{
    for (;;) {
        if (*n == max)
            return true;
        int fd = accept4(h->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            emit(out, n, h, IO_ACCEPT, fd, 1);
            continue;
        }
        int e = errno;
        if (e == EAGAIN) {
            h->ep.pending &= ~H_IN;
            return false;
        }
        if (accept_retry(e))
            continue;
        /* EMFILE, ENFILE, ENOBUFS, ...: end the accept; the core re-arms
         * it later instead of spinning here.  H_IN stays set so the
         * re-armed accept tries at once. */
        emit_final(out, n, h, IO_ACCEPT, -e);
        return false;
    }
}

/* recv_into: read until the buffer is full or the socket empty. */
static bool do_recv_direct(struct io_handle *h, struct io_event *out,
                           int max, int *n)
{
    if (*n == max)
        return true;
    size_t got = 0;
    ssize_t r = 0;
    int e = 0;
    while (got < h->ep.recv_len) {
        r = read(h->fd, h->ep.recv_buf + got, h->ep.recv_len - got);
        if (r > 0) {
            got += (size_t)r;
            if (got < h->ep.recv_len && drained(h))
                break;
            continue;
        }
        e = errno;
        if (r < 0 && e == EINTR)
            continue;
        if (r < 0 && e == EAGAIN)
            h->ep.pending &= ~H_IN;
        break;
    }
    if (got == 0 && !(h->ep.pending & H_IN))
        return false;   /* nothing yet */
    char *buf = h->ep.recv_buf;
    /* The bytes first; an EOF or error after them shows next time (H_IN
     * stays set; the kernel reports an error only once). */
    if (got > 0 && r < 0 && e != EAGAIN)
        h->ep.recv_err = e;   /* the next receive's final event */
    emit_final(out, n, h, IO_RECV, got > 0 ? (long)got : r == 0 ? 0 : -e);
    out[*n - 1].buf_id = IO_NO_BUF;
    out[*n - 1].buf = got > 0 ? buf : NULL;
    return false;
}

/* A receive into the engine's buffers: one event per buffer filled. */
static bool do_recv(struct backend *b, struct io_handle *h,
                    struct io_event *out, int max, int *n)
{
    for (;;) {
        if (*n == max || b->nfree == 0)
            return true;
        uint16_t id = b->freeids[b->nfree - 1];
        char *p = b->bufs + (size_t)id * b->bufsize;
        ssize_t r = read(h->fd, p, b->bufsize);
        if (r > 0) {
            b->nfree--;
            b->lent[id] = 1;
            emit(out, n, h, IO_RECV, r, 1);
            out[*n - 1].buf_id = id;
            out[*n - 1].buf = p;
            if ((size_t)r < b->bufsize && drained(h))
                return false;
            continue;
        }
        int e = errno;
        if (r < 0 && e == EINTR)
            continue;
        if (r < 0 && e == EAGAIN) {
            h->ep.pending &= ~H_IN;
            return false;
        }
        emit_final(out, n, h, IO_RECV, r == 0 ? 0 : -e);
        return false;
    }
}

/* Turn h's remembered readiness into events in out[*n..max).  True if
 * readiness is left over: the caller puts h on the revisit list. */
static bool process(struct backend *b, struct io_handle *h,
                    struct io_event *out, int max, int *n)
{
    uint32_t act = h->ep.active;
    bool left = false;
    if ((act & OPBIT(IO_CONNECT)) && (h->ep.pending & H_OUT))
        left |= do_connect(h, out, max, n);
    if ((act & OPBIT(IO_SEND)) && (h->ep.pending & H_OUT))
        left |= do_send(h, out, max, n);
    if ((act & OPBIT(IO_ACCEPT)) && (h->ep.pending & H_IN))
        left |= do_accept(h, out, max, n);
    if (!(act & OPBIT(IO_RECV)))
        return left;
    if (h->ep.recv_err) {
        /* the error that came after a direct receive's bytes */
        if (*n == max)
            return true;
        int e = h->ep.recv_err;
        bool direct = h->ep.recv_buf != NULL;
        h->ep.recv_err = 0;
        emit_final(out, n, h, IO_RECV, -e);
        out[*n - 1].buf_id = direct ? IO_NO_BUF : 0;
        return left;
    }
    if (!(h->ep.pending & H_IN))
        return left;
    return (h->ep.recv_buf ? do_recv_direct(h, out, max, n)
                           : do_recv(b, h, out, max, n)) || left;
}

/* Serve the revisit list into out[n..max); rebuild it so that handles not
 * reached this time come first next time. */
static int revisit(struct backend *b, struct io_event *out, int max, int n)
{
    unsigned len = b->rv_len, i, m = 0;
    for (i = 0; i < len && n < max; i++) {
        struct io_handle *h = b->rv[i];
        if (!h)
            continue;
        h->ep.pending &= ~H_LISTED;
        if (process(b, h, out, max, &n))
            b->rv[m++] = h;    /* m <= i: slot already visited */
    }
    unsigned k = 0;
    for (unsigned j = i; j < len; j++)
        if (b->rv[j])
            b->rv2[k++] = b->rv[j];
    for (unsigned j = 0; j < m; j++)
        b->rv2[k++] = b->rv[j];
    struct io_handle **t = b->rv;
    b->rv = b->rv2;
    b->rv2 = t;
    b->rv_len = k;
    for (unsigned j = 0; j < k; j++) {
        b->rv[j]->ep.rv_index = j;
        b->rv[j]->ep.pending |= H_LISTED;
    }
    return n;
}

/* ---- file operations --------------------------------------------------- */

/* epoll cannot wait on regular files: every file operation goes to the
 * pool, which wakes the engine when a result waits. */
static void ep_wake(struct backend *b);

static void pool_wake(void *arg)
{
    ep_wake(arg);
}

static int ep_file_op(struct backend *b, struct io_handle *h, int op,
                      void *buf, size_t len, uint64_t off)
{
    return io_pool_submit(b->pool_threads, h, op, buf, len, off);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int ep_wait(struct backend *b, struct io_event *out, int max,
                   int timeout_ms)
{
    if (max <= 0)
        return -EINVAL;
    int n = 0;
    while (b->pq_len && n < max) {
        out[n++] = b->pq[b->pq_head];
        b->pq_head = (b->pq_head + 1) % b->pq_cap;
        b->pq_len--;
    }
    n += io_pool_take(b->pool_threads, out + n, max - n);
    if (n < max && b->rv_len)
        n = revisit(b, out, max, n);
    if (n == max)
        return n;

    double deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
    for (;;) {
        int nev = epoll_wait(b->epfd, b->evs, EP_BATCH, n ? 0 : timeout_ms);
        if (nev < 0)
            return n ? n : -errno;   /* -EINTR: let the caller see signals */
        bool woke = false;
        for (int i = 0; i < nev; i++) {
            if (b->evs[i].data.ptr == &b->evfd) {
                io_eventfd_drain(b->evfd);
                woke = true;
                continue;
            }
            struct io_handle *h = b->evs[i].data.ptr;
            uint32_t e = b->evs[i].events;
            if (e & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                h->ep.pending |= H_IN;
            if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                h->ep.pending |= H_HUP;
            if (e & EPOLLPRI)
                h->ep.pending |= H_URG;   /* for the connection's life: rare */
            if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
                h->ep.pending |= H_OUT;
            if (n == max || process(b, h, out, max, &n))
                rv_add(b, h);
        }
        if (woke)
            n += io_pool_take(b->pool_threads, out + n, max - n);
        if (n > 0 || woke || nev == 0 || timeout_ms == 0)
            return n;
        /* Only stale edges: wait on for the rest of the timeout. */
        if (timeout_ms > 0) {
            double left = deadline - now_ms();
            if (left <= 0)
                return 0;
            timeout_ms = (int)left + 1;
        }
    }
}

/* ---- operations -------------------------------------------------------- */

static int ep_accept_start(struct backend *b, struct io_handle *h)
{
    int r = reg(b, h);
    if (r < 0)
        return r;
    if (h->ep.active & OPBIT(IO_ACCEPT))
        return -EBUSY;
    h->ep.active |= OPBIT(IO_ACCEPT);
    h->ep.pending |= H_IN;         /* connections may be queued already */
    rv_add(b, h);
    return 0;
}

static int ep_recv_start(struct backend *b, struct io_handle *h)
{
    int r = reg(b, h);
    if (r < 0)
        return r;
    if (h->ep.active & OPBIT(IO_RECV))
        return -EBUSY;
    h->ep.active |= OPBIT(IO_RECV);
    h->ep.pending |= H_IN;         /* data may be there already */
    rv_add(b, h);
    return 0;
}

static int ep_recv_into(struct backend *b, struct io_handle *h, char *buf,
                        size_t len)
{
    if (len == 0 || len > INT32_MAX)
        return -EINVAL;
    int r = ep_recv_start(b, h);
    if (r < 0)
        return r;
    h->ep.recv_buf = buf;
    h->ep.recv_len = (uint32_t)len;
    return 0;
}

static int ep_recv_stop(struct backend *b, struct io_handle *h)
{
    if (!(h->ep.active & OPBIT(IO_RECV)))
        return 0;               /* already ended with its final event */
    int r = pq_push(b, h, IO_RECV, -ECANCELED);
    if (r < 0)
        return r;
    op_end(h, IO_RECV);
    return 0;
}

/* send() and sendv(): one attempt now; a full socket makes it wait for
 * EPOLLOUT (m != NULL: a gathered send). */
static long ep_send_some(struct backend *b, struct io_handle *h,
                         const char *buf, size_t len, const struct msghdr *m)
{
    if (h->ep.active & OPBIT(IO_SEND))
        return -EBUSY;
    int r = reg(b, h);
    if (r < 0)
        return r;
    ssize_t n;
    do
        n = m ? sendmsg(h->fd, m, MSG_NOSIGNAL | MSG_DONTWAIT)
              : send(h->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        return n;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
        return -errno;
    /* Full: the next EPOLLOUT edge comes after this EAGAIN, so dropping the
     * remembered one loses nothing (a stale one only costs an EAGAIN). */
    h->ep.pending &= ~H_OUT;
    h->ep.send_buf = buf;
    h->ep.send_len = len;
    h->ep.send_msg = m;
    h->ep.active |= OPBIT(IO_SEND);
    return -EINPROGRESS;
}

static long ep_send(struct backend *b, struct io_handle *h, const char *buf,
                    size_t len)
{
    return ep_send_some(b, h, buf, len, NULL);
}

static long ep_sendv(struct backend *b, struct io_handle *h,
                     const struct msghdr *m)
{
    return ep_send_some(b, h, NULL, 0, m);
}

static int ep_connect(struct backend *b, struct io_handle *h,
                      const struct sockaddr *addr, socklen_t addrlen)
{
    if (h->ep.active & OPBIT(IO_CONNECT))
        return -EALREADY;
    int r = reg(b, h);
    if (r < 0)
        return r;
    if (b->pq_len == b->pq_cap && pq_reserve(b, b->pq_cap + 1) < 0)
        return -ENOMEM;         /* so the push below cannot fail */
    if (connect(h->fd, addr, addrlen) == 0)
        return pq_push(b, h, IO_CONNECT, 0);
    int e = errno;
    if (e == EINPROGRESS || e == EINTR) {   /* EINTR: goes on async */
        h->ep.pending &= ~H_OUT;
        h->ep.active |= OPBIT(IO_CONNECT);
        return 0;
    }
    return pq_push(b, h, IO_CONNECT, -e);
}

static int ep_cancel(struct backend *b, struct io_handle *h)
{
    if (h->pooled)
        return 0;   /* a file operation runs to its end */
    static const int ops[] = { IO_ACCEPT, IO_RECV, IO_SEND, IO_CONNECT };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        int op = ops[i];
        if (!(h->ep.active & OPBIT(op)))
            continue;
        int r = pq_push(b, h, op, -ECANCELED);
        if (r < 0)
            return r;
        op_end(h, op);
    }
    return 0;
}

static void ep_forget(struct backend *b, struct io_handle *h)
{
    if (h->pooled || !h->ep.registered)
        return;
    /* ENOENT/EBADF only if the core broke the order; nothing to undo. */
    (void)epoll_ctl(b->epfd, EPOLL_CTL_DEL, h->fd, NULL);
    if (h->ep.pending & H_LISTED)
        b->rv[h->ep.rv_index] = NULL;
    /* The core forgets after the last final event, so normally no queued
     * event names h; drop any anyway rather than hand out a freed h. */
    unsigned k = 0;
    for (unsigned i = 0; i < b->pq_len; i++) {
        struct io_event e = b->pq[(b->pq_head + i) % b->pq_cap];
        if (e.h != h)
            b->pq[(b->pq_head + k++) % b->pq_cap] = e;
    }
    b->pq_len = k;
    h->ep = (struct io_epoll_state){ 0 };
    b->nregistered--;
}

static void ep_release_buf(struct backend *b, uint16_t id)
{
    if (id >= b->nbufs || !b->lent[id])
        return;                 /* not lent out: ignore, keep the stack sane */
    b->lent[id] = 0;
    b->freeids[b->nfree++] = id;
}

static void ep_wake(struct backend *b)
{
    io_eventfd_wake(b->evfd);
}

static void ep_destroy(struct backend *b)
{
    if (!b)
        return;
    io_pool_destroy(b->pool_threads);
    free(b->rv2);
    free(b->rv);
    free(b->pq);
    free(b->lent);
    free(b->freeids);
    free(b->bufs);
    if (b->evfd >= 0)
        close(b->evfd);
    if (b->epfd >= 0)
        close(b->epfd);
    free(b);
}

static struct backend *ep_create(unsigned nbufs, unsigned bufsize)
{
    if (nbufs == 0 || nbufs >= IO_NO_BUF || bufsize == 0) {
        errno = EINVAL;
        return NULL;
    }
    struct backend *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->epfd = b->evfd = -1;
    b->nbufs = nbufs;
    b->bufsize = bufsize;

    b->pool_threads = io_pool_create(pool_wake, b);
    if (b->pool_threads == NULL) {
        int e = errno;
        free(b);
        errno = e;
        return NULL;
    }
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (b->epfd < 0)
        goto fail;
    b->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (b->evfd < 0)
        goto fail;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &b->evfd };
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, b->evfd, &ev) < 0)
        goto fail;
    b->bufs = malloc((size_t)nbufs * bufsize);
    b->freeids = malloc((size_t)nbufs * sizeof *b->freeids);
    b->lent = calloc(nbufs, 1);
    b->rv = malloc(MIN_CAP * sizeof *b->rv);
    b->rv2 = malloc(MIN_CAP * sizeof *b->rv2);
    if (!b->bufs || !b->freeids || !b->lent || !b->rv || !b->rv2)
        goto fail;
    b->rv_cap = MIN_CAP;
    if (pq_reserve(b, MIN_CAP) < 0)
        goto fail;
    for (unsigned i = 0; i < nbufs; i++)   /* id 0 is handed out first */
        b->freeids[i] = (uint16_t)(nbufs - 1 - i);
    b->nfree = nbufs;
    return b;

fail:;
    int e = errno ? errno : ENOMEM;
    ep_destroy(b);   /* frees in reverse order; NULL and -1 are skipped */
    errno = e;
    return NULL;
}

const struct backend_ops iocp_epoll_ops = {
    .name = "epoll",
    .create = ep_create,
    .destroy = ep_destroy,
    .accept_start = ep_accept_start,
    .recv_start = ep_recv_start,
    .recv_into = ep_recv_into,
    .sendv = ep_sendv,
    .recv_stop = ep_recv_stop,
    .send = ep_send,
    .send_now = io_sock_send_now,
    .connect = ep_connect,
    .file_op = ep_file_op,
    .cancel = ep_cancel,
    .forget = ep_forget,
    .wait = ep_wait,
    .release_buf = ep_release_buf,
    .wake = ep_wake,
};
