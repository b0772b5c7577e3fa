/* internal.h - what the core's files share and nothing outside the core
 * sees: the functions one file calls in another, and the small helpers
 * every message passes through, `static inline` so that the split into
 * files costs no call (gcc cannot inline across translation units).
 *
 * The files, one concern each:
 *   conn.c    a connection's life: allocation, references, closing
 *   recv.c    receiving: engine buffers and direct receives, framing
 *   send.c    sending: the send queue, sends by reference, backpressure
 *   echo.c    native echo (whole frames back without Python)
 *   file.c    file requests and send_file
 *   worker.c  the worker loop: one turn, the mailbox, dispatch, timers
 *   server.c  start, stop, listeners, accepting and connecting */
#ifndef IOCPORT_CORE_INTERNAL_H
#define IOCPORT_CORE_INTERNAL_H

#include "core/server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- helpers ------------------------------------------------------------ */

static inline int64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);   /* cannot fail for MONOTONIC */
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void
stat_add(_Atomic uint64_t *v, uint64_t n)
{
    atomic_fetch_add_explicit(v, n, memory_order_relaxed);
}

static inline int
on_worker_thread(const struct worker *w)
{
    return pthread_equal(pthread_self(), w->thread);
}

/* The sent offset: the worker's own reads and writes need no ordering
 * (it is the only writer); other threads read it under c->lock, where a
 * value a moment old only makes the unsent count a moment old. */
static inline size_t
sent_off(const struct conn *c)
{
    return atomic_load_explicit(&c->soff, memory_order_relaxed);
}

static inline void
set_sent_off(struct conn *c, size_t v)
{
    atomic_store_explicit(&c->soff, v, memory_order_relaxed);
}

/* Grow *buf to hold at least `need` bytes; doubling, so appends amortise. */
static inline int
reserve(void *bufp, size_t *cap, size_t need)
{
    char **buf = bufp;
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 256;
    if (ncap < need)
        ncap = need;
    char *nb = realloc(*buf, ncap);
    if (nb == NULL)
        return -ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

static inline int
grow_array(void *arrp, unsigned *cap, unsigned need, size_t elem)
{
    void **arr = arrp;
    if (need <= *cap)
        return 0;
    unsigned ncap = *cap ? *cap * 2 : 64;
    while (ncap < need)
        ncap *= 2;
    void *na = realloc(*arr, (size_t)ncap * elem);
    if (na == NULL)
        return -ENOMEM;
    *arr = na;
    *cap = ncap;
    return 0;
}

static inline void
conn_ref(struct conn *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

/* A notice for the dispatch layer's batch (a message: ENTRY_MSG). */
static inline int
push_entry(struct worker *w, struct conn *c, uint8_t kind,
           const uint8_t *ptr, size_t off, size_t len)
{
    if (grow_array(&w->batch, &w->batch_cap, w->nbatch + 1,
                   sizeof(struct entry)) < 0)
        return -ENOMEM;
    conn_ref(c);
    if (kind == ENTRY_MSG)
        c->queued++;
    w->batch[w->nbatch++] = (struct entry){c, NULL, ptr, off, len, kind};
    return 0;
}

/* Worker thread: c has output to flush (or a close to decide) this turn. */
static inline void
mark_dirty(struct worker *w, struct conn *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        conn_ref(c);
        c->next_dirty = w->dirty;
        w->dirty = c;
    }
}

/* Under c->lock: the bytes queued and not yet with the kernel. */
static inline size_t
conn_unsent_locked(const struct conn *c)
{
    return c->olen + (c->rq ? c->rq->obytes : 0) + (c->slen - sent_off(c));
}

/* An operation ended by our cancel: -ECANCELED, or, once we are closing,
 * whatever the interrupted call returned (a blocking send that io_uring
 * handed to a kernel thread ends with -EINTR). */
static inline int
conn_cancelled(const struct conn *c, int res)
{
    return res == -ECANCELED || c->state >= CONN_CLOSING;
}

/* ---- conn.c ------------------------------------------------------------- */

struct conn *conn_alloc(struct server *s, struct worker *w, int fd);
/* Worker thread: the connection joins this worker's list. */
void conn_link(struct worker *w, struct conn *c);
/* Record why a connection goes away; the first reason wins and is the
 * one counted. */
void conn_note_reason(struct conn *c, enum close_reason why, int err);
/* Record why and close at once, dropping unsent output. */
void conn_fail(struct conn *c, enum close_reason why, int err);
/* Closing: cancel what is in flight; the last final event finishes it. */
void conn_begin_close(struct conn *c);
/* Closed: the fd is closed, the dispatch layer hears of it. */
void conn_finish_close(struct conn *c);
/* An operation's final event was handled. */
void conn_op_done(struct conn *c);
/* Every message received has been handled, and no operation started for
 * the connection can still add a reply. */
int conn_settled(const struct conn *c);
/* Worker thread: our graceful close begins. */
void conn_start_drain(struct conn *c);
/* Everything queued is with the kernel: close now if the connection is
 * done (our graceful close, the peer's FIN, a bad frame). */
void conn_output_done(struct conn *c);
/* Under c->lock: queue work for the worker from another thread. */
void conn_post(struct conn *c);

/* ---- recv.c ------------------------------------------------------------- */

void recv_start(struct conn *c);
void recv_stop(struct conn *c);
/* Start or stop receiving as the connection's state asks. */
void recv_update(struct conn *c);
/* Frame what rbuf holds.  0, or -1 if the connection failed. */
int recv_frame(struct worker *w, struct conn *c);
/* Input held back while paused (backpressure) now goes on: frame it. */
void recv_resume(struct conn *c);
/* An IO_RECV event. */
void recv_on_event(struct worker *w, struct conn *c, const struct io_event *ev);

/* ---- send.c ------------------------------------------------------------- */

/* n bytes went to the kernel (counted, and the connection is active). */
void send_counted(struct conn *c, size_t n);
/* On the worker thread, after bytes joined obuf: flush them this turn,
 * and pause receiving at once if they pass max_unsent. */
void send_queued_here(struct conn *c, size_t unsent);
/* Push queued output to the engine; once it is all out, the connection
 * may close (conn_output_done). */
void send_flush(struct conn *c);
/* Closed: give every sent-by-reference owner back. */
void send_refs_drop(struct conn *c);
/* An IO_SEND event. */
void send_on_event(struct worker *w, struct conn *c, const struct io_event *ev);

/* ---- echo.c ------------------------------------------------------------- */

/* n whole frames at p[0..len) (in an engine buffer) go back as they came,
 * queued after what waits.  0 or -errno. */
int echo_queue(struct conn *c, const void *p, size_t len, size_t n);
/* The same for rbuf[from..rstart), sent at once from rbuf when large.
 * 0 or -errno. */
int echo_rbuf(struct conn *c, size_t from, size_t n);

/* ---- file.c ------------------------------------------------------------- */

void file_on_event(struct worker *w, struct file_req *r,
                   const struct io_event *ev);
/* Start file requests taken from the mailbox; report finals held back. */
void file_start_mail(struct worker *w, struct file_req *r);
/* Worker thread: start a send_file that conn_send_file() queued. */
void xfer_attach(struct conn *c);
/* Read the next chunk while fewer than XFER_MARK bytes wait to be sent. */
void xfer_pump(struct conn *c, size_t unsent);
/* The transfer is over (err 0: all of it is with the kernel). */
void xfer_finish(struct conn *c, int err);

/* ---- worker.c ----------------------------------------------------------- */

void *worker_main(void *arg);

/* ---- server.c ----------------------------------------------------------- */

void accept_on_event(struct worker *w, struct listener_slot *ls,
                     const struct io_event *ev);
void accept_arm(struct worker *w, struct listener_slot *ls);
/* Worker thread: an accepted connection given to this worker starts. */
void accept_adopt(struct worker *w, struct conn *c);
/* Worker thread: a connect() request from the mailbox. */
void dial_start(struct worker *w, struct conn *c);
void dial_on_event(struct worker *w, struct conn *c, int res);
/* Cancel the connect attempts past their share of time. */
void dial_expire(struct worker *w);
/* A connection counts against max_connections and its worker's load. */
void server_assign(struct worker *w);
void server_unassign(struct worker *w);

#endif
