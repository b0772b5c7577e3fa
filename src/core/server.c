/* server.c - workers, listeners and connections: the native core between
 * the backends (epoll.c, uring.c) and the dispatch layer (py_server.c).
 *
 * Each worker thread owns one backend instance and the connections it
 * accepted or connected.  A loop iteration reaps a batch of completions,
 * frames every received byte natively, hands all whole messages of the
 * batch to the dispatch layer at once (one GIL hold per batch), gives the
 * receive buffers back, and then flushes every connection that has output:
 * one send per connection per batch.  Other threads reach a worker only
 * through its mailbox (sends, closes, connects, file requests) and wake().
 * File requests and send_file transfers also live here: their completions
 * join the same batches as messages.
 *
 * Connection lifetime: `refs` counts the worker's own reference (held until
 * the fd is closed), one per batch entry, one while on the mailbox and one
 * for the dispatch layer's object.  Operations in flight are counted in
 * `inflight`: the fd is closed only when the last one has reported its final
 * event, so the kernel never writes into freed memory and a reused fd
 * number never receives an old completion. */
#include "core/server.h"
#include "lib/slab.h"

#include <errno.h>
#include <malloc.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLOSE_NAME(name, str, level, doc) str,
#define CLOSE_LEVEL(name, str, level, doc) level,
const char *const close_reason_name[CLOSE_REASON_COUNT] = {
    CLOSE_REASONS(CLOSE_NAME)
};
const char *const close_reason_level[CLOSE_REASON_COUNT] = {
    CLOSE_REASONS(CLOSE_LEVEL)
};
#undef CLOSE_NAME
#undef CLOSE_LEVEL

#define KEEP_BUF (64 * 1024)  /* most a header makes us reserve ahead */
#define TRIM_AFTER_MS 1000    /* idle buffers are given back after this */
/* Messages framed per connection per turn; the rest waits, unframed, for
 * the next turn.  Keeps one busy peer from filling a whole batch and
 * bounds the replies a batch can queue before backpressure can act. */
#define FRAME_BUDGET 32
/* Unframed bytes a deferred connection may hold before receiving stops. */
#define BACKLOG_MAX (256 * 1024)
/* A connection we close gracefully waits this long for the peer's EOF
 * (or, with no idle timeout, for a peer that stopped reading our replies). */
#define LINGER_MS 2000
#define DRAIN_MAX_MS 30000
#define XFER_CHUNK (256 * 1024)   /* send_file reads this much at a time */
#define XFER_MARK (1024 * 1024)   /* ...while fewer bytes than this wait */
#define ACCEPT_RETRY_MS 100   /* pause after EMFILE & co, so accept never spins */
/* Large messages and bulk input are received straight into rbuf
 * (recv_into) instead of through the engine's buffers, which would cost a
 * copy per byte and a completion per buffer: from a message with at least
 * DIRECT_MIN bytes still to come, or a receive that filled a whole engine
 * buffer (more was waiting), until a direct receive brings fewer than
 * DIRECT_SMALL bytes and leaves nothing unfinished.  Each asks for the rest
 * of the message, but for no more than the bytes already buffered (at least
 * DIRECT_CHUNK, at most DIRECT_MAX): rbuf grows with the bytes that really
 * come, never on a header's word alone. */
#define DIRECT_MIN (32 * 1024)
#define DIRECT_SMALL 4096
#define DIRECT_CHUNK (128 * 1024)
#define DIRECT_MAX (1024 * 1024)
/* A message at least this big, handed over with an owner, is sent from
 * the caller's memory (struct sref) instead of being copied. */
#define SEND_REF_MIN (32 * 1024)
/* Native echo sends a run of frames at least this big at once, from where
 * it was received, when nothing else waits to go: one send() costs less
 * than copying that much into obuf.  Smaller runs wait for the turn's
 * batched sends. */
#define ECHO_NOW_MIN (32 * 1024)

static int64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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
static int
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

static int
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

/* ---- connection lifetime ---------------------------------------------- */

static void
conn_free(struct conn *c)
{
    pthread_mutex_destroy(&c->lock);
    if (c->rq != NULL) {
        free(c->rq->o);
        free(c->rq->s);
        free(c->rq);
    }
    if (c->dial != NULL) {
        free(c->dial->addrs);
        free(c->dial->lens);
        free(c->dial);
    }
    free(c->hbuf);
    free(c->rbuf);
    free(c->obuf);
    free(c->sbuf);
    slab_put(c);
}

void
conn_unref(struct conn *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        conn_free(c);
}

static inline void
conn_ref(struct conn *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

static void begin_close(struct conn *c);
static void refs_drop(struct conn *c);
static void on_file_event(struct worker *w, struct file_req *r,
                          const struct io_event *ev);
static void xfer_on_read(struct worker *w, struct xfer *x, long res);
static void xfer_pump(struct conn *c, size_t unsent);
static void xfer_finish(struct conn *c, int err);
static void xfer_attach(struct conn *c);
static int check_backpressure(struct conn *c, size_t unsent);
static int frame_rbuf(struct worker *w, struct conn *c);

static int
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

/* Record why a connection goes away; the first reason wins and is the
 * one counted. */
static void
note_reason(struct conn *c, enum close_reason why, int err)
{
    if (c->reason == CLOSE_NONE) {
        c->reason = (uint8_t)why;
        c->err = err;
        stat_add(&c->w->srv->stats.errors[why], 1);
    }
}

/* Record why and close at once, dropping unsent output. */
static void
conn_fail(struct conn *c, enum close_reason why, int err)
{
    note_reason(c, why, err);
    begin_close(c);
}

void
conn_abort(struct conn *c, enum close_reason why)
{
    conn_fail(c, why, 0);
}

/* The worker a new connection goes to: the one with the fewest, ties
 * broken round robin, so that connections opened together spread as
 * evenly as those that come and go.  (Two workers picking at once may
 * both choose the same one: off by one, never worse.) */
static struct worker *
least_loaded(struct server *s)
{
    unsigned n = s->nworkers;
    unsigned first = atomic_fetch_add_explicit(&s->next_worker, 1,
                                               memory_order_relaxed);
    struct worker *best = &s->workers[first % n];
    unsigned best_load = atomic_load_explicit(&best->load, memory_order_relaxed);
    for (unsigned k = 1; k < n && best_load > 0; k++) {
        struct worker *w = &s->workers[(first + k) % n];
        unsigned load = atomic_load_explicit(&w->load, memory_order_relaxed);
        if (load < best_load) {
            best = w;
            best_load = load;
        }
    }
    return best;
}

/* A new connection counts against max_connections and its worker's load
 * from here until finish_close() (or unassign(), if it never starts). */
static void
assign(struct worker *w)
{
    atomic_fetch_add_explicit(&w->load, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->opened, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->srv->nconns, 1, memory_order_relaxed);
}

static void
unassign(struct worker *w)
{
    atomic_fetch_sub_explicit(&w->load, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->srv->nconns, 1, memory_order_relaxed);
}

static void
finish_close(struct conn *c)
{
    struct worker *w = c->w;
    struct server *s = w->srv;

    if (c->h.fd >= 0) {   /* (-1: an outgoing one that got no socket) */
        w->ops->forget(w->be, &c->h);
        close(c->h.fd);   /* errors from close are not actionable here */
        c->h.fd = -1;
    }
    c->next->prev = c->prev;
    c->prev->next = c->next;
    w->nconns--;
    unassign(w);
    stat_add(&s->stats.closed, 1);
    pthread_mutex_lock(&c->lock);
    c->state = CONN_DEAD;
    pthread_mutex_unlock(&c->lock);
    refs_drop(c);
    xfer_attach(c);           /* one asked for but never started */
    xfer_finish(c, EPIPE);    /* waits for its read if one is in flight */
    if (s->dops != NULL)
        push_entry(w, c, ENTRY_CLOSE, NULL, 0, 0);
    conn_unref(c);   /* the worker's reference */
}

static void
begin_close(struct conn *c)
{
    if (c->state >= CONN_CLOSING)
        return;
    pthread_mutex_lock(&c->lock);
    c->state = CONN_CLOSING;
    pthread_mutex_unlock(&c->lock);
    if (c->inflight == 0)
        finish_close(c);
    else
        c->w->ops->cancel(c->w->be, &c->h);
}

static void
op_done(struct conn *c)
{
    if (--c->inflight == 0 && c->state == CONN_CLOSING)
        finish_close(c);
}

static void
recv_start(struct conn *c)
{
    int rc = c->w->ops->recv_start(c->w->be, &c->h);
    if (rc < 0) {
        conn_fail(c, CLOSE_RESET, -rc);
        return;
    }
    c->recv = RECV_ON;
    c->inflight++;
}

static int rbuf_room(struct conn *c, size_t n, size_t need);

/* Note a large message (DIRECT_MIN bytes or more still to come: c->big)
 * and return how much a direct receive should ask for now, or 0 for the
 * engine's buffers. */
static size_t
direct_len(struct conn *c)
{
    if (c->state != CONN_OPEN || c->bad_input)
        return 0;
    size_t avail = c->rlen - c->rstart;
    size_t rest = c->rneed > avail ? c->rneed - avail : 0;
    if (rest >= DIRECT_MIN)
        c->big = 1;
    if (!c->big)
        return 0;
    size_t most = avail < DIRECT_CHUNK ? DIRECT_CHUNK : avail > DIRECT_MAX ? DIRECT_MAX : avail;
    return rest < DIRECT_CHUNK ? DIRECT_CHUNK : rest > most ? most : rest;
}

/* Receive up to `len` bytes straight into rbuf at rlen.  rbuf must not
 * move until the final event: frame_rbuf(), the compaction after dispatch
 * and trim() leave it alone while c->direct. */
static void
recv_direct(struct conn *c, size_t len)
{
    int rc = rbuf_room(c, len, 0);
    if (rc == 0)
        rc = c->w->ops->recv_into(c->w->be, &c->h, (char *)c->rbuf + c->rlen, len);
    if (rc < 0) {
        conn_fail(c, CLOSE_RESET, -rc);
        return;
    }
    c->recv = RECV_ON;
    c->direct = 1;
    c->inflight++;
}

static void
recv_stop(struct conn *c)
{
    if (c->recv != RECV_ON)
        return;
    if (c->w->ops->recv_stop(c->w->be, &c->h) == 0)
        c->recv = RECV_STOPPING;
}

/* Receive while open and neither paused by backpressure nor holding too
 * much unframed input; while draining (our graceful close) or after a bad
 * frame keep receiving, and discarding, until the peer's EOF: closing with
 * unread input would reset the connection and lose the replies in flight. */
static void
update_recv(struct conn *c)
{
    int want;
    if (c->peer_eof || c->state > CONN_DRAINING || c->state == CONN_CONNECTING)
        want = 0;
    else if (c->state == CONN_DRAINING || c->bad_input)
        want = 1;
    else
        want = !c->paused &&
               !(c->deferred && c->rlen - c->rstart > BACKLOG_MAX);
    if (!want) {
        if (c->recv == RECV_ON)
            recv_stop(c);
        return;
    }
    size_t dlen = direct_len(c);
    if (c->recv == RECV_OFF) {
        if (dlen == 0)
            recv_start(c);
        else if (!c->rbuf_pinned)
            recv_direct(c, dlen);
        /* else after dispatch, once rbuf may move (dispatch_batch) */
    } else if (c->recv == RECV_ON && dlen != 0 && !c->direct) {
        recv_stop(c);   /* the rest of a large message: direct, from the
                           final event on */
    }
}

static void
mark_dirty(struct worker *w, struct conn *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        conn_ref(c);
        c->next_dirty = w->dirty;
        w->dirty = c;
    }
}

static void
defer(struct worker *w, struct conn *c)
{
    if (!c->deferred) {
        c->deferred = 1;
        conn_ref(c);
        c->next_deferred = w->deferred;
        w->deferred = c;
    }
}

/* Every message received has been handled, and no operation started for
 * the connection can still add a reply. */
static int
settled(const struct conn *c)
{
    return c->queued == 0 && !c->deferred && !c->paused &&
           atomic_load_explicit(&c->holds, memory_order_acquire) == 0;
}

/* Worker thread: our graceful close begins.  No more input is handled;
 * what is queued goes out, then our FIN (flush()). */
static void
start_drain(struct conn *c)
{
    c->graceful = 1;
    c->drain_since = c->w->now;
    pthread_mutex_lock(&c->lock);
    c->state = CONN_DRAINING;
    pthread_mutex_unlock(&c->lock);
    update_recv(c);
    mark_dirty(c->w, c);
}

/* ---- sending ------------------------------------------------------------ */

static size_t
unsent_locked(const struct conn *c)
{
    return c->olen + (c->rq ? c->rq->obytes : 0) + (c->slen - sent_off(c));
}

size_t
conn_unsent(struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    size_t n = unsent_locked(c);
    pthread_mutex_unlock(&c->lock);
    return n;
}

int
conn_writable(struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    int ok = unsent_locked(c) <= c->w->srv->cfg.max_unsent;
    if (!ok)
        c->drain_owed = 1;   /* it was told to wait: owed an ENTRY_DRAIN */
    pthread_mutex_unlock(&c->lock);
    return ok;
}

/* Under c->lock: queue work for the worker from another thread. */
static void
post_to_mailbox(struct conn *c)
{
    struct worker *w = c->w;
    pthread_mutex_lock(&w->mbox_lock);
    if (!c->in_mailbox) {
        c->in_mailbox = 1;
        conn_ref(c);
        c->next_mail = w->mailbox;
        w->mailbox = c;
    }
    pthread_mutex_unlock(&w->mbox_lock);
    if (atomic_exchange_explicit(&w->mbox_flag, 1, memory_order_acq_rel) == 0)
        w->ops->wake(w->be);
}

void
conn_hold(struct conn *c)
{
    conn_ref(c);
    atomic_fetch_add_explicit(&c->holds, 1, memory_order_relaxed);
}

void
conn_unhold(struct conn *c)
{
    if (atomic_fetch_sub_explicit(&c->holds, 1, memory_order_acq_rel) == 1) {
        /* The last one: a half-closed connection may now close.  (A closed
         * one is left alone: its worker may have stopped since.) */
        pthread_mutex_lock(&c->lock);
        int live = c->state <= CONN_DRAINING;
        int local = live && on_worker_thread(c->w);
        if (live && !local)
            post_to_mailbox(c);
        pthread_mutex_unlock(&c->lock);
        if (local)
            mark_dirty(c->w, c);
    }
    conn_unref(c);
}

/* A frame's header or trailer (0 to 8 bytes): the usual sizes as one
 * move the compiler inlines, not a memcpy call per message. */
static inline void
copy_small(char *dst, const uint8_t *src, size_t n)
{
    if (n == 4)
        memcpy(dst, src, 4);      /* len4, the usual header */
    else if (n == 1)
        *dst = (char)*src;        /* a one-byte delimiter or header */
    else if (n != 0)
        memcpy(dst, src, n);
}

/* Queue data[0..len) by reference after obuf's bytes (under the lock). */
static int
queue_ref(struct conn *c, const void *data, size_t len, void *owner)
{
    struct refq *q = c->rq;
    if (q == NULL && (q = c->rq = calloc(1, sizeof(*q))) == NULL)
        return -ENOMEM;
    if (grow_array(&q->o, &q->ocap, q->no + 1, sizeof(*q->o)) < 0)
        return -ENOMEM;
    q->o[q->no++] = (struct sref){c->olen, data, len, owner};
    q->obytes += len;
    return 0;
}

/* n bytes went to the kernel. */
static void
sent_now(struct conn *c, size_t n)
{
    c->last_active = c->w->now;
    stat_add(&c->w->srv->stats.bytes_out, (uint64_t)n);
}

/* On the worker thread, after bytes joined obuf: flush them this turn, and
 * pause at once, not after the batch (a batch can hold many messages, each
 * with a big reply). */
static void
queued_here(struct conn *c, size_t unsent)
{
    mark_dirty(c->w, c);
    if (!c->paused && unsent > c->w->srv->cfg.max_unsent)
        check_backpressure(c, unsent);
}

int
conn_send(struct conn *c, const void *data, size_t len, int frame,
          void *owner)
{
    struct worker *w = c->w;
    uint8_t hdr[8], trl[8];
    size_t hlen = 0, tlen = 0;

    if (frame && framing_wrap(&w->srv->cfg.framing, len, hdr, &hlen, trl,
                              &tlen) != FRAME_OK)
        return -EMSGSIZE;
    pthread_mutex_lock(&c->lock);
    if (c->state > CONN_OPEN) {
        pthread_mutex_unlock(&c->lock);
        return -EPIPE;
    }
    int local = on_worker_thread(w);
    if (unsent_locked(c) + c->hlen + hlen + len + tlen > w->srv->cfg.unsent_limit) {
        /* The peer takes our bytes far slower than we queue them: close
         * it (counted and logged) rather than buffer without bound. */
        if (!local) {
            c->close_req = 2;
            c->close_why = CLOSE_OVERFLOW;
            post_to_mailbox(c);
        }
        pthread_mutex_unlock(&c->lock);
        if (local)
            conn_fail(c, CLOSE_OVERFLOW, 0);
        return -ENOBUFS;
    }
    /* While a file streams, later messages wait behind it (copied). */
    int held = c->xfer_new != NULL || c->xfer_busy;
    int ref = owner != NULL && len >= SEND_REF_MIN && !held;
    size_t copied = ref ? 0 : len;
    char **buf = held ? &c->hbuf : &c->obuf;
    size_t *used = held ? &c->hlen : &c->olen;
    if (reserve(buf, held ? &c->hcap : &c->ocap, *used + hlen + copied + tlen) < 0) {
        pthread_mutex_unlock(&c->lock);
        return -ENOMEM;
    }
    copy_small(*buf + *used, hdr, hlen);
    *used += hlen;
    if (ref && queue_ref(c, data, len, owner) < 0) {
        ref = 0;                 /* no memory for the record: copy */
        copied = len;
    }
    if (copied != 0 && reserve(buf, held ? &c->hcap : &c->ocap,
                               *used + copied + tlen) < 0) {
        *used -= hlen;
        pthread_mutex_unlock(&c->lock);
        return -ENOMEM;
    }
    if (copied != 0)
        memcpy(*buf + *used, data, copied);
    copy_small(*buf + *used + copied, trl, tlen);
    *used += copied + tlen;
    if (!local)
        post_to_mailbox(c);
    size_t unsent = unsent_locked(c);
    if (unsent > w->srv->cfg.max_unsent)
        c->drain_owed = 1;   /* unwritable now: whoever sent is told later */
    pthread_mutex_unlock(&c->lock);
    if (local)
        queued_here(c, unsent);
    stat_add(&w->srv->stats.msgs_out, 1);
    return ref;
}

/* ---- native echo ------------------------------------------------------------ */

/* Native echo's replies: n messages, p[0..len), queued after what waits. */
static int
echo_queue(struct conn *c, const void *p, size_t len, size_t n)
{
    struct stats *st = &c->w->srv->stats;
    stat_add(&st->msgs_in, n);
    stat_add(&st->msgs_out, n - (len != 0));   /* conn_send counts one */
    return len != 0 ? conn_send(c, p, len, 0, NULL) : 0;
}

/* Under c->lock: nothing waits to be sent or is being sent. */
static int
output_idle(const struct conn *c)
{
    return c->state == CONN_OPEN && c->olen == 0 && sent_off(c) == c->slen &&
           !c->send_busy && (c->rq == NULL || c->rq->no == 0) &&
           c->xfer_new == NULL && !c->xfer_busy;
}

/* Nothing queued: send p[0..len) at once, as much as the socket takes, so
 * that a large reply is not first copied into obuf.  What the socket does
 * not take of a run it took part of is queued under the same lock, so that
 * no send from another thread (an outgoing connection's) comes between the
 * two parts.  The bytes sent or queued (the rest, if none were sent, is the
 * caller's to queue), or -1 if the connection failed. */
static long
echo_send_now(struct conn *c, const void *p, size_t len)
{
    long k = 0;
    size_t rest = 0, unsent = 0;
    int err = 0;
    pthread_mutex_lock(&c->lock);
    if (output_idle(c)) {
        k = send(c->h.fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                err = errno;
            k = 0;
        } else if ((size_t)k < len) {
            rest = len - (size_t)k;
            if (reserve(&c->obuf, &c->ocap, rest) == 0) {
                memcpy(c->obuf, (const char *)p + k, rest);   /* olen was 0 */
                c->olen = rest;
                unsent = unsent_locked(c);
            } else {
                err = ENOMEM;
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (k > 0)
        sent_now(c, (size_t)k);
    if (err != 0) {
        conn_fail(c, CLOSE_RESET, err);
        return -1;
    }
    if (rest != 0)
        queued_here(c, unsent);
    return k + (long)rest;
}

/* Native echo: rbuf[from..rstart) holds n whole frames, sent back as they
 * came, in one piece.  A large run goes to the socket at once if nothing
 * waits; what it does not take is queued: when it begins rbuf and nothing
 * waits in obuf, rbuf becomes obuf instead of being copied into it (a
 * partial message after it, if the smaller part, moves to the new rbuf). */
static int
echo_rbuf(struct conn *c, size_t from, size_t n)
{
    size_t len = c->rstart - from, tail = c->rlen - c->rstart;
    if (len >= ECHO_NOW_MIN) {
        long k = echo_send_now(c, c->rbuf + from, len);
        if (k < 0)
            return -EPIPE;
        from += (size_t)k;
        len -= (size_t)k;
    }
    int swap = len != 0 && from == 0 && tail <= len / 2 && !c->direct &&
               !c->rbuf_pinned;
    if (swap) {
        pthread_mutex_lock(&c->lock);
        swap = output_idle(c) && reserve(&c->obuf, &c->ocap, tail) == 0;
        if (!swap)
            pthread_mutex_unlock(&c->lock);
    }
    if (!swap)
        return echo_queue(c, c->rbuf + from, len, n);
    if (tail != 0)
        memcpy(c->obuf, c->rbuf + c->rstart, tail);
    uint8_t *t = c->rbuf; c->rbuf = (uint8_t *)c->obuf; c->obuf = (char *)t;
    size_t tc = c->rcap; c->rcap = c->ocap; c->ocap = tc;
    c->olen = len;
    c->rstart = 0;
    c->rlen = tail;
    size_t unsent = unsent_locked(c);
    pthread_mutex_unlock(&c->lock);
    queued_here(c, unsent);
    return echo_queue(c, NULL, 0, n);
}

void
conn_close(struct conn *c, int graceful)
{
    if (on_worker_thread(c->w)) {
        if (c->state >= CONN_CLOSING)
            return;
        if (!graceful || c->state == CONN_CONNECTING) {
            begin_close(c);
            return;
        }
        if (c->state != CONN_DRAINING)
            start_drain(c);
        return;
    }
    pthread_mutex_lock(&c->lock);
    if (c->state < CONN_CLOSING) {
        c->close_req = graceful ? 1 : 2;
        post_to_mailbox(c);
    }
    pthread_mutex_unlock(&c->lock);
}

static int
check_backpressure(struct conn *c, size_t unsent)
{
    size_t hi = c->w->srv->cfg.max_unsent;
    if (!c->paused && unsent > hi) {
        c->paused = 1;
        update_recv(c);
    } else if (c->paused && unsent <= hi / 2) {
        c->paused = 0;
        /* Messages that arrived while paused: frame them now (native echo
         * queues their replies: the caller's `unsent` is then stale). */
        if (c->state == CONN_OPEN && frame_rbuf(c->w, c) == 0)
            update_recv(c);
        return 1;
    }
    return 0;
}

/* ---- sends by reference ----------------------------------------------- */

/* The queued references go out with the buffer just swapped in (lock). */
static void
refs_swap(struct conn *c, struct refq *q)
{
    struct sref *t = q->s; q->s = q->o; q->o = t;
    unsigned tc = q->scap; q->scap = q->ocap; q->ocap = tc;
    q->ns = q->no;
    q->no = 0;
    c->refs_out = q->ns != 0;
    q->sdone = 0;
    q->sbefore = 0;
    q->sflat = c->slen;
    c->slen += q->obytes;
    q->obytes = 0;
}

static void
release_ref(struct worker *w, const struct sref *r)
{
    if (grow_array(&w->release, &w->release_cap, w->nrelease + 1,
                   sizeof(*w->release)) == 0) {
        w->release[w->nrelease++] = r->owner;
        w->release_bytes += r->len;
    }
    /* else leaked: it cannot be given back without the dispatch layer */
}

/* Give back the references wholly sent (s[] up to soff). */
static void
refs_sent(struct conn *c)
{
    struct refq *q = c->rq;
    size_t soff = sent_off(c);
    for (unsigned i = q->sdone; i < q->ns; i++) {
        size_t end = q->s[i].at + q->sbefore + q->s[i].len;
        if (end > soff)
            break;
        release_ref(c->w, &q->s[i]);
        q->sbefore += q->s[i].len;
        q->sdone = i + 1;
    }
}

/* Closed: give every reference back, sent or not. */
static void
refs_drop(struct conn *c)
{
    struct refq *q = c->rq;
    if (q == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    for (unsigned i = 0; i < q->no; i++)
        release_ref(c->w, &q->o[i]);
    q->no = 0;
    q->obytes = 0;
    pthread_mutex_unlock(&c->lock);
    for (unsigned i = q->sdone; i < q->ns; i++)
        release_ref(c->w, &q->s[i]);
    q->ns = q->sdone = 0;
    q->sbefore = 0;
    c->refs_out = 0;
}

/* Send sbuf's bytes and the references among them from soff on, in one
 * gathered send (at most SEND_IOV pieces: the rest next time). */
static long
send_gathered(struct conn *c)
{
    struct refq *q = c->rq;
    size_t soff = sent_off(c);
    /* from the first reference not wholly sent: all before it went out */
    size_t flat = q->sdone ? q->s[q->sdone - 1].at : 0;   /* in sbuf */
    size_t pos = flat + q->sbefore;                        /* logical */
    int n = 0;
    for (unsigned i = q->sdone; i <= q->ns && n < SEND_IOV; i++) {
        const char *piece[2];
        size_t plen[2];
        size_t at = i < q->ns ? q->s[i].at : q->sflat;
        plen[0] = at - flat;
        piece[0] = plen[0] ? c->sbuf + flat : NULL;
        piece[1] = i < q->ns ? q->s[i].ptr : NULL;
        plen[1] = i < q->ns ? q->s[i].len : 0;
        flat = at;
        for (int k = 0; k < 2 && n < SEND_IOV; k++) {
            size_t end = pos + plen[k];
            if (end > soff && plen[k] != 0) {
                size_t skip = soff > pos ? soff - pos : 0;
                q->iov[n].iov_base = (void *)(uintptr_t)(piece[k] + skip);
                q->iov[n].iov_len = plen[k] - skip;
                n++;
            }
            pos = end;
        }
    }
    memset(&q->mh, 0, sizeof(q->mh));
    q->mh.msg_iov = q->iov;
    q->mh.msg_iovlen = (size_t)n;
    return c->w->ops->sendv(c->w->be, &c->h, &q->mh);
}

/* n more bytes of the send queue went to the kernel. */
static void
sent(struct conn *c, size_t n)
{
    set_sent_off(c, sent_off(c) + n);
    sent_now(c, n);
    if (c->refs_out)
        refs_sent(c);
}

/* Push queued output to the backend until it is all sent or a send is in
 * flight; close a draining connection once nothing is left, and one whose
 * input has ended (the peer's FIN, a bad frame) once every reply owed has
 * gone out. */
static void
flush(struct conn *c)
{
    struct worker *w = c->w;
    size_t unsent;

    if (c->state == CONN_CONNECTING)
        return;   /* sent once connected */
    while (c->state <= CONN_DRAINING && !c->send_busy) {
        if (sent_off(c) == c->slen) {
            pthread_mutex_lock(&c->lock);
            struct refq *q = c->rq;
            if (c->olen == 0 && (q == NULL || q->no == 0)) {
                pthread_mutex_unlock(&c->lock);
                break;
            }
            char *t = c->sbuf; c->sbuf = c->obuf; c->obuf = t;
            size_t tc = c->scap; c->scap = c->ocap; c->ocap = tc;
            c->slen = c->olen;
            set_sent_off(c, 0);
            c->olen = 0;
            if (q != NULL)
                refs_swap(c, q);
            else
                c->refs_out = 0;
            pthread_mutex_unlock(&c->lock);
        }
        size_t soff = sent_off(c);
        long r = c->refs_out
                     ? send_gathered(c)
                     : w->ops->send(w->be, &c->h, c->sbuf + soff,
                                    c->slen - soff);
        if (r >= 0) {
            sent(c, (size_t)r);
        } else if (r == -EINPROGRESS) {
            c->send_busy = 1;
            c->inflight++;
        } else {
            conn_fail(c, CLOSE_RESET, (int)-r);
            return;
        }
    }
    if (c->state > CONN_DRAINING)
        return;
    pthread_mutex_lock(&c->lock);
    unsent = unsent_locked(c);
    int drained = c->drain_owed && unsent <= w->srv->cfg.max_unsent / 2;
    if (drained)
        c->drain_owed = 0;
    pthread_mutex_unlock(&c->lock);
    if (drained && w->srv->want_drain && c->state == CONN_OPEN)
        push_entry(w, c, ENTRY_DRAIN, NULL, 0, 0);
    if (check_backpressure(c, unsent)) {
        pthread_mutex_lock(&c->lock);
        unsent = unsent_locked(c);
        pthread_mutex_unlock(&c->lock);
    }
    if (c->xfer != NULL) {
        xfer_pump(c, unsent);
        return;   /* closing waits for the file (its end marks c dirty) */
    }
    if (unsent != 0 || c->state > CONN_DRAINING)
        return;
    if (c->graceful) {
        /* Our close: every reply is with the kernel.  Send FIN and wait
         * for the peer's (bounded by LINGER_MS in sweep()): closing with
         * unread input would make the kernel reset the connection and
         * drop the replies still in flight. */
        if (!c->wr_shut) {
            c->wr_shut = 1;
            c->drain_since = w->now;
            if (shutdown(c->h.fd, SHUT_WR) < 0) {
                conn_fail(c, CLOSE_RESET, errno);
                return;
            }
        }
        if (c->peer_eof)
            begin_close(c);
        return;
    }
    if (!settled(c))
        return;
    if (c->bad_input) {
        start_drain(c);   /* every message before the bad frame answered */
        return;
    }
    if (!c->peer_eof)
        return;
    /* The peer half-closed, and everything it sent has been handled and
     * answered.  The application has the last word (on_eof): it may keep
     * the connection open for replies still to come, until its close(). */
    if (c->rlen != c->rstart)
        note_reason(c, CLOSE_TRUNCATED, 0);   /* it left inside a message */
    if (w->srv->want_eof && !c->eof_told) {
        c->eof_told = 1;
        if (push_entry(w, c, ENTRY_EOF, NULL, 0, 0) == 0)
            return;   /* flush() decides again once it has been told */
    }
    if (c->keep_open)
        return;   /* bounded by half_close_ms (sweep()) */
    note_reason(c, CLOSE_EOF, 0);
    begin_close(c);
}

/* ---- receiving ------------------------------------------------------------ */

static int
hold_buffer(struct worker *w, uint16_t id, int *held)
{
    if (*held)
        return 0;
    if (grow_array(&w->held_bufs, &w->held_cap, w->nheld + 1,
                   sizeof(*w->held_bufs)) < 0)
        return -ENOMEM;
    *held = 1;
    w->held_bufs[w->nheld++] = id;
    return 0;
}

/* A whole message for the dispatch layer's batch: at ptr (an engine
 * buffer), or at rbuf + off when ptr is NULL. */
static int
emit(struct conn *c, const uint8_t *ptr, size_t off, size_t len)
{
    stat_add(&c->w->srv->stats.msgs_in, 1);
    return push_entry(c->w, c, ENTRY_MSG, ptr, off, len);
}

/* Make room for n more bytes at rlen (and up to `need` from rstart). */
static int
rbuf_room(struct conn *c, size_t n, size_t need)
{
    /* Compact only when the buffer would otherwise grow: moving a long
     * backlog on every append would be quadratic. */
    if (c->rstart > 0 && !c->rbuf_pinned && c->rlen + n > c->rcap) {
        memmove(c->rbuf, c->rbuf + c->rstart, c->rlen - c->rstart);
        c->rlen -= c->rstart;
        c->rstart = 0;
    }
    size_t want = c->rlen + n;
    /* Room for the rest of the message, but a header alone may not make
     * us reserve up to max_size: grow with the bytes that really come. */
    if (need > 0 && c->rstart + need > want)
        want = c->rstart + need < want + KEEP_BUF ? c->rstart + need
                                                  : want + KEEP_BUF;
    return reserve(&c->rbuf, &c->rcap, want);
}

static int
rbuf_append(struct conn *c, const uint8_t *p, size_t n, size_t need)
{
    if (rbuf_room(c, n, need) < 0)
        return -ENOMEM;
    memcpy(c->rbuf + c->rlen, p, n);
    c->rlen += n;
    return 0;
}

/* A bad frame ends the input: nothing after it can be framed.  The whole
 * messages before it are still handled and their replies sent; then the
 * connection closes gracefully (flush()), our FIN first and the peer's
 * input discarded until its own. */
static void
frame_error(struct conn *c, int st)
{
    note_reason(c, st == FRAME_TOO_BIG ? CLOSE_TOO_BIG : CLOSE_BAD_FRAME, 0);
    c->bad_input = 1;
    c->big = 0;
    c->rneed = 0;
    if (!c->direct)
        c->rlen = c->rstart;   /* (a direct receive's bytes: on_direct) */
    mark_dirty(c->w, c);
    update_recv(c);
}

/* Frame what rbuf holds.  0, or -1 if the connection failed. */
static int
frame_rbuf(struct worker *w, struct conn *c)
{
    const struct framing *f = &w->srv->cfg.framing;
    size_t from = c->rstart, echoed = 0;   /* native echo's frames */
    struct frame fr;
    int st = FRAME_OK;

    if (c->bad_input)
        return 0;
    while (c->rstart < c->rlen) {
        if (c->queued >= FRAME_BUDGET) {
            defer(w, c);
            break;
        }
        size_t avail = c->rlen - c->rstart;
        st = framing_next(f, c->rbuf + c->rstart, avail, c->rscan, &fr);
        if (st < 0)
            break;
        if (st == FRAME_NEED) {
            c->rscan = fr.scanned;
            c->rneed = fr.need;
            break;
        }
        if (w->srv->cfg.native_echo) {
            echoed++;
        } else {
            if (emit(c, NULL, c->rstart + fr.off, fr.len) < 0)
                goto nomem;
            if (!c->rbuf_pinned) {
                if (grow_array(&w->compact, &w->compact_cap, w->ncompact + 1,
                               sizeof(*w->compact)) < 0)
                    goto nomem;
                c->rbuf_pinned = 1;
                conn_ref(c);
                w->compact[w->ncompact++] = c;
            }
        }
        c->rstart += fr.consumed;
        c->rscan = 0;
    }
    /* (Whole messages before a bad frame are still answered.) */
    if (echoed != 0 && echo_rbuf(c, from, echoed) < 0)
        goto nomem;
    if (st < 0) {
        frame_error(c, st);
        return 0;
    }
    if (c->rstart < c->rlen)
        return 0;   /* the rest of a message, or over budget */
    c->rneed = 0;
    if (!c->rbuf_pinned && !c->direct)
        c->rstart = c->rlen = 0;
    return 0;
nomem:
    conn_fail(c, CLOSE_RESET, ENOMEM);
    return -1;
}

/* How many new bytes the message waiting in rbuf can use: all of them
 * would copy every later message too, so take only up to its end when the
 * framer knows it (length, fixed size) or up to the next delimiter. */
static size_t
take_for_partial(const struct framing *f, const struct conn *c,
                 const uint8_t *p, size_t len)
{
    size_t avail = c->rlen - c->rstart;
    if (c->rneed > avail)
        return c->rneed - avail < len ? c->rneed - avail : len;
    if (f->kind == FRAMING_DELIM) {
        const uint8_t *d = memmem(p, len, f->delim, f->delim_len);
        return d ? (size_t)(d - p) + f->delim_len : len;
    }
    return len;
}

static void
on_recv(struct worker *w, struct conn *c, const struct io_event *ev)
{
    const struct framing *f = &w->srv->cfg.framing;
    const uint8_t *p = (const uint8_t *)ev->buf;
    size_t len = (size_t)ev->res;
    struct frame fr;
    int held = 0, st;

    stat_add(&w->srv->stats.bytes_in, len);
    if (c->state != CONN_OPEN || c->bad_input)
        return;   /* draining, or after a bad frame: discarded */
    if (c->paused || c->deferred)
        goto later;
    /* First finish the message already buffered, copying only its bytes. */
    while (c->rlen != c->rstart && len > 0) {
        size_t take = take_for_partial(f, c, p, len);
        if (rbuf_append(c, p, take, c->rneed) < 0)
            goto nomem;
        p += take;
        len -= take;
        if (frame_rbuf(w, c) < 0 || c->bad_input)
            return;
        if (c->deferred)
            goto later;
    }
    /* Then frame straight from the receive buffer: no copy until the
     * handler's bytes object. */
    fr.need = fr.scanned = 0;
    st = FRAME_NEED;
    const uint8_t *echo = p;   /* native echo: whole frames from here */
    size_t echoed = 0;
    while (len > 0) {
        if (c->queued >= FRAME_BUDGET) {
            defer(w, c);
            break;
        }
        if ((st = framing_next(f, p, len, 0, &fr)) != FRAME_OK)
            break;
        if (w->srv->cfg.native_echo) {
            echoed++;
        } else if (hold_buffer(w, ev->buf_id, &held) < 0 ||
                   emit(c, p + fr.off, 0, fr.len) < 0) {
            goto nomem;
        }
        p += fr.consumed;
        len -= fr.consumed;
    }
    if (echoed != 0 && echo_queue(c, echo, (size_t)(p - echo), echoed) < 0)
        goto nomem;
    if (c->deferred)
        goto later;
    if (len == 0)
        return;
    if (st < 0) {
        frame_error(c, st);
        return;
    }
    if (rbuf_append(c, p, len, fr.need) < 0)
        goto nomem;
    c->rscan = fr.scanned;
    c->rneed = fr.need;
    return;
later:
    /* Paused by backpressure, or over this turn's budget: keep the bytes
     * unframed (framed when the replies drain, or next turn). */
    if (len > 0 && rbuf_append(c, p, len, 0) < 0)
        goto nomem;
    update_recv(c);
    return;
nomem:
    conn_fail(c, CLOSE_RESET, ENOMEM);
}

/* The final event of a direct receive brought n bytes, at rlen. */
static void
on_direct(struct worker *w, struct conn *c, size_t n)
{
    stat_add(&w->srv->stats.bytes_in, n);
    if (c->state != CONN_OPEN)
        return;   /* draining: discarded */
    if (c->bad_input) {
        c->rlen = c->rstart;   /* after a bad frame: discarded */
        return;
    }
    c->rlen += n;
    if (c->paused || c->deferred)
        return;   /* framed when the replies drain, or next turn */
    if (frame_rbuf(w, c) < 0)
        return;
    if (n < DIRECT_SMALL && c->rstart == c->rlen)
        c->big = 0;   /* small messages again: the engine's buffers */
}

/* ---- events ----------------------------------------------------------------- */

static struct conn *
conn_alloc(struct server *s, struct worker *w, int fd)
{
    struct conn *c = slab_get(s->conn_pool);
    if (c == NULL)
        return NULL;
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        slab_put(c);
        return NULL;
    }
    c->h.fd = fd;
    c->w = w;
    c->id = atomic_fetch_add_explicit(&s->next_id, 1, memory_order_relaxed) + 1;
    atomic_init(&c->refs, 1);
    atomic_init(&c->holds, 0);
    atomic_init(&c->soff, 0);
    return c;
}

/* Worker thread: the connection joins this worker's list. */
static void
conn_link(struct worker *w, struct conn *c)
{
    c->last_active = w->now;
    c->next = &w->conns;
    c->prev = w->conns.prev;
    w->conns.prev->next = c;
    w->conns.prev = c;
    w->nconns++;
}

static void
set_nodelay(int fd)
{
    int one = 1;
    /* Best effort: not every socket type has Nagle's algorithm. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Worker thread: an accepted connection given to this worker starts: its
 * first receive, and the dispatch layer hears of it. */
static void
conn_adopt(struct worker *w, struct conn *c)
{
    struct server *s = w->srv;
    c->adopt_req = 0;
    if (atomic_load_explicit(&w->stopping, memory_order_acquire)) {
        c->state = CONN_DEAD;
        close(c->h.fd);   /* handed over as the server stops */
        stat_add(&s->stats.refused, 1);
        unassign(w);
        conn_unref(c);
        return;
    }
    conn_link(w, c);
    c->state = CONN_OPEN;
    if (s->dops != NULL && !s->cfg.native_echo && s->want_open)
        push_entry(w, c, ENTRY_OPEN, NULL, 0, 0);
    recv_start(c);
}

/* An accepted connection goes to another worker, through its mailbox.
 * Under start_lock: once the server stops taking work, no mailbox takes
 * it (a worker that has drained its own for the last time would leak it). */
static void
hand_over(struct server *s, struct conn *c)
{
    pthread_mutex_lock(&s->start_lock);
    if (s->accepting_work) {
        c->adopt_req = 1;
        pthread_mutex_lock(&c->lock);
        post_to_mailbox(c);
        pthread_mutex_unlock(&c->lock);
        pthread_mutex_unlock(&s->start_lock);
        return;
    }
    pthread_mutex_unlock(&s->start_lock);
    close(c->h.fd);
    stat_add(&s->stats.refused, 1);
    unassign(c->w);
    conn_unref(c);
}

static void
arm_accept(struct worker *w, struct listener_slot *ls)
{
    int rc = w->ops->accept_start(w->be, &ls->h);
    if (rc < 0)
        ls->retry_at = w->now + ACCEPT_RETRY_MS;
    else
        ls->armed = 1;
}

static void
on_accept(struct worker *w, struct listener_slot *ls, const struct io_event *ev)
{
    struct server *s = w->srv;

    if (!ev->more)
        ls->armed = ls->pausing = 0;
    if (ev->res < 0) {
        if (ev->res == -ECANCELED || atomic_load(&w->stopping))
            return;
        /* EMFILE, ENFILE, ENOBUFS, ENOMEM...: pause, don't spin.  A
         * multishot accept that goes on through the error is cancelled;
         * timers() re-arms it once the pause is over. */
        stat_add(&s->stats.accept_errors, 1);
        ls->retry_at = w->now + ACCEPT_RETRY_MS;
        if (ls->armed && !ls->pausing) {
            ls->pausing = 1;
            w->ops->cancel(w->be, &ls->h);
        }
        return;
    }
    int fd = ev->res;
    if (atomic_load_explicit(&s->nconns, memory_order_relaxed) >=
            s->cfg.max_connections || atomic_load(&w->stopping)) {
        close(fd);
        stat_add(&s->stats.refused, 1);
    } else {
        set_nodelay(fd);
        /* Whichever worker the kernel woke, the connection goes to the
         * least loaded one (io_uring wakes the same ring every time). */
        struct worker *t = s->nworkers > 1 ? least_loaded(s) : w;
        struct conn *c = conn_alloc(s, t, fd);
        if (c == NULL) {
            close(fd);
            stat_add(&s->stats.accept_errors, 1);
        } else {
            assign(t);
            stat_add(&s->stats.accepted, 1);
            c->peerlen = sizeof(c->peer);
            if (getpeername(fd, &c->peer.sa, &c->peerlen) < 0 ||
                c->peerlen > sizeof(c->peer))
                c->peerlen = 0;   /* already reset (the first recv says so),
                                   * or not TCP: no address kept */
            if (t == w)
                conn_adopt(w, c);
            else
                hand_over(s, c);
        }
    }
    if (!ls->armed && !atomic_load(&w->stopping))
        arm_accept(w, ls);
}

/* Worker thread: the next attempt of an outgoing connection, on a new
 * socket (the last one failed, or there was none yet); once no address is
 * left, or the deadline has passed, it fails. */
static void
dial_next(struct worker *w, struct conn *c)
{
    struct dial *d = c->dial;
    if (atomic_load(&w->stopping))
        d->last_err = ECANCELED;
    while (d->last_err != ECANCELED && d->next < d->n && w->now < d->deadline) {
        unsigned i = d->next++;
        if (c->h.fd >= 0) {
            w->ops->forget(w->be, &c->h);
            close(c->h.fd);
        }
        c->h.fd = socket(d->addrs[i].ss_family,
                         SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->h.fd < 0) {
            d->last_err = errno;
            continue;
        }
        memcpy(&c->peer, &d->addrs[i], d->lens[i]);
        c->peerlen = d->lens[i];
        /* Each attempt gets an equal share of the time left, so that an
         * address that never answers leaves time for the others. */
        d->attempt_due = w->now + (d->deadline - w->now) / (int64_t)(d->n - i);
        if (w->connect_due == 0 || d->attempt_due < w->connect_due)
            w->connect_due = d->attempt_due;
        int rc = w->ops->connect(w->be, &c->h, &c->peer.sa, c->peerlen);
        if (rc == 0) {
            c->inflight++;
            return;
        }
        d->last_err = -rc;
    }
    if (w->now >= d->deadline && d->last_err != ECANCELED)
        d->last_err = ETIMEDOUT;
    conn_fail(c, CLOSE_CONNECT, d->last_err ? d->last_err : ECONNREFUSED);
}

/* Worker thread: a connect() request from the mailbox. */
static void
start_connect(struct worker *w, struct conn *c)
{
    c->connect_req = 0;
    conn_link(w, c);
    dial_next(w, c);
}

static void
on_connect_event(struct worker *w, struct conn *c, int res)
{
    struct dial *d = c->dial;
    if (c->state != CONN_CONNECTING) {
        /* Closed while connecting (close(), stop). */
        if (c->reason == CLOSE_NONE) {
            c->reason = CLOSE_CONNECT;
            c->err = ECANCELED;
        }
        op_done(c);
        return;
    }
    if (res == 0) {
        pthread_mutex_lock(&c->lock);
        c->state = CONN_OPEN;
        c->dial = NULL;
        pthread_mutex_unlock(&c->lock);
        free(d->addrs);
        free(d->lens);
        free(d);
        set_nodelay(c->h.fd);
        c->last_active = w->now;
        push_entry(w, c, ENTRY_OPEN, NULL, 0, 0);
        recv_start(c);
        mark_dirty(w, c);   /* what was sent while connecting */
        op_done(c);
        return;
    }
    /* Only an expired attempt is cancelled while still connecting. */
    d->last_err = res == -ECANCELED ? ETIMEDOUT : -res;
    d->timed_out = 0;
    c->inflight--;
    dial_next(w, c);
}

/* Worker thread: cancel the connect attempts past their share of time
 * (their final events try the next address); note the next deadline. */
static void
expire_connects(struct worker *w)
{
    int64_t due = 0;
    for (struct conn *c = w->conns.next; c != &w->conns; c = c->next) {
        struct dial *d = c->dial;
        if (c->state != CONN_CONNECTING || d == NULL || d->timed_out)
            continue;
        if (w->now >= d->attempt_due) {
            d->timed_out = 1;
            w->ops->cancel(w->be, &c->h);
        } else if (due == 0 || d->attempt_due < due) {
            due = d->attempt_due;
        }
    }
    w->connect_due = due;
}

int
server_connect(struct server *s, const struct sockaddr_storage *addrs,
               const socklen_t *lens, unsigned n, int64_t timeout_ms,
               void *py, struct conn **out)
{
    if (n == 0)
        return -EINVAL;
    for (unsigned i = 0; i < n; i++)
        if ((addrs[i].ss_family != AF_INET && addrs[i].ss_family != AF_INET6) ||
            lens[i] > sizeof(((struct conn *)0)->peer))
            return -EINVAL;   /* TCP over IPv4 or IPv6 only */
    struct dial *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return -ENOMEM;
    d->addrs = malloc(n * sizeof(*d->addrs));
    d->lens = malloc(n * sizeof(*d->lens));
    if (d->addrs == NULL || d->lens == NULL) {
        free(d->addrs);
        free(d->lens);
        free(d);
        return -ENOMEM;
    }
    memcpy(d->addrs, addrs, n * sizeof(*d->addrs));
    memcpy(d->lens, lens, n * sizeof(*d->lens));
    d->n = n;
    d->deadline = now_ms() + timeout_ms;
    pthread_mutex_lock(&s->start_lock);
    struct conn *c = NULL;
    if (s->accepting_work) {
        struct worker *w = least_loaded(s);
        c = conn_alloc(s, w, -1);
        if (c != NULL)
            assign(w);
    }
    if (c == NULL) {
        int running = s->accepting_work;
        pthread_mutex_unlock(&s->start_lock);
        free(d->addrs);
        free(d->lens);
        free(d);
        return running ? -ENOMEM : -EPIPE;
    }
    c->dial = d;
    c->outgoing = 1;
    c->connect_req = 1;
    c->state = CONN_CONNECTING;
    c->py = py;
    conn_ref(c);   /* the dispatch layer's link */
    pthread_mutex_lock(&c->lock);
    post_to_mailbox(c);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_unlock(&s->start_lock);
    *out = c;
    return 0;
}

/* An operation ended by our cancel: -ECANCELED, or, once we are closing,
 * whatever the interrupted call returned (a blocking send that io_uring
 * handed to a kernel thread ends with -EINTR). */
static int
cancelled(const struct conn *c, int res)
{
    return res == -ECANCELED || c->state >= CONN_CLOSING;
}

static void
on_event(struct worker *w, const struct io_event *ev)
{
    struct io_handle *h = ev->h;

    if (h->tag == HANDLE_LISTENER) {
        on_accept(w, (struct listener_slot *)h, ev);
        return;
    }
    if (ev->op == IO_FILE) {
        on_file_event(w, (struct file_req *)h, ev);
        return;
    }
    struct conn *c = (struct conn *)h;
    switch (ev->op) {
    case IO_RECV:
        if (ev->res > 0 && c->direct) {
            c->last_active = w->now;
            c->direct = 0;   /* single shot: this is its final event */
            on_direct(w, c, (size_t)ev->res);
        } else if (ev->res > 0) {
            c->last_active = w->now;
            on_recv(w, c, ev);
            /* Held buffers are released after dispatch; others now. */
            if (w->nheld == 0 || w->held_bufs[w->nheld - 1] != ev->buf_id)
                w->ops->release_buf(w->be, ev->buf_id);
            /* A large message began, or a full buffer says more than a
             * buffer's worth was waiting (bulk input): direct from now. */
            if (ev->more && c->recv == RECV_ON) {
                if ((size_t)ev->res >= w->srv->cfg.bufsize)
                    c->big = 1;
                if (direct_len(c) != 0)
                    recv_stop(c);
            }
        }
        if (ev->more)
            return;
        c->recv = RECV_OFF;
        c->direct = 0;
        if (ev->res == 0) {
            c->peer_eof = 1;
            mark_dirty(w, c);   /* close once every reply owed is out */
        } else if (ev->res < 0 && !cancelled(c, ev->res)) {
            conn_fail(c, CLOSE_RESET, -ev->res);
        } else {
            update_recv(c);   /* stopped; resumed since? */
        }
        op_done(c);
        return;
    case IO_SEND:
        c->send_busy = 0;
        if (ev->res >= 0) {
            sent(c, (size_t)ev->res);
            mark_dirty(w, c);
        } else if (!cancelled(c, ev->res)) {
            conn_fail(c, CLOSE_RESET, -ev->res);
        }
        op_done(c);
        return;
    case IO_CONNECT:
        on_connect_event(w, c, ev->res);
        return;
    default:
        op_done(c);
        return;
    }
}

/* ---- files ------------------------------------------------------------- */

static void
file_final(struct worker *w, struct file_req *r, long res)
{
    if (r->is_xfer) {
        xfer_on_read(w, (struct xfer *)r, res);
        return;
    }
    r->res = res;
    if (grow_array(&w->batch, &w->batch_cap, w->nbatch + 1,
                   sizeof(struct entry)) < 0) {
        /* Cannot report it now: retry at the next turn, never drop it. */
        r->next = w->file_retry;
        w->file_retry = r;
        return;
    }
    w->batch[w->nbatch++] = (struct entry){NULL, r, NULL, 0, 0, ENTRY_FILE};
}

static void
file_issue(struct worker *w, struct file_req *r)
{
    int rc;
    if (atomic_load(&w->stopping) && r->done == 0)
        rc = -ECANCELED;
    else if (w->ops->file_op == NULL)
        rc = -EOPNOTSUPP;
    else
        rc = w->ops->file_op(w->be, &r->h, r->op, r->buf + r->done,
                             r->len - r->done, r->off + r->done);
    if (rc < 0)
        file_final(w, r, r->done ? (long)r->done : rc);
    else
        w->file_inflight++;
}

static void
on_file_event(struct worker *w, struct file_req *r, const struct io_event *ev)
{
    w->file_inflight--;
    if (ev->res < 0) {
        /* Report a failure even after a partial write: the data is not
         * all there, and the caller must know. */
        file_final(w, r, ev->res);
        return;
    }
    r->done += (size_t)ev->res;
    if (r->op == FILE_WRITE && ev->res > 0 && r->done < r->len) {
        file_issue(w, r);   /* a short write: the rest, where it belongs */
        return;
    }
    file_final(w, r, (long)r->done);
}

/* Start file requests taken from the mailbox (a stack, newest first). */
static void
start_file_mail(struct worker *w, struct file_req *r)
{
    /* Restore submission order. */
    struct file_req *fifo = NULL;
    while (r != NULL) {
        struct file_req *next = r->next;
        r->next = fifo;
        fifo = r;
        r = next;
    }
    for (r = fifo; r != NULL; ) {
        struct file_req *next = r->next;
        file_issue(w, r);
        r = next;
    }
    for (r = w->file_retry, w->file_retry = NULL; r != NULL; ) {
        struct file_req *next = r->next;
        file_final(w, r, r->res);
        r = next;
    }
}

struct worker *
server_this_worker(struct server *s)
{
    struct worker *w = NULL;
    pthread_mutex_lock(&s->start_lock);   /* workers[] is valid while set */
    for (unsigned i = 0; s->accepting_work && i < s->nworkers; i++)
        if (on_worker_thread(&s->workers[i]))
            w = &s->workers[i];
    pthread_mutex_unlock(&s->start_lock);
    return w;
}

struct conn *
server_current_conn(struct server *s)
{
    struct worker *w = server_this_worker(s);
    return w != NULL ? w->current : NULL;
}

unsigned
server_pick_worker(struct server *s)
{
    struct worker *w = server_this_worker(s);
    if (w != NULL)
        return w->index;
    return atomic_fetch_add_explicit(&s->next_worker, 1, memory_order_relaxed);
}

int
server_file_submit(struct server *s, struct file_req *r)
{
    struct file *f = r->f;
    r->h.fd = f->fd;
    r->done = 0;
    if (r->append) {
        pthread_mutex_lock(&f->lock);
        r->off = f->append_off;
        f->append_off += r->len;
        pthread_mutex_unlock(&f->lock);
    }
    pthread_mutex_lock(&s->start_lock);
    if (!s->accepting_work) {
        pthread_mutex_unlock(&s->start_lock);
        return -EPIPE;
    }
    struct worker *w = &s->workers[f->windex % s->nworkers];
    if (on_worker_thread(w)) {
        file_issue(w, r);
    } else {
        pthread_mutex_lock(&w->mbox_lock);
        r->next = w->file_mail;
        w->file_mail = r;
        pthread_mutex_unlock(&w->mbox_lock);
        if (atomic_exchange_explicit(&w->mbox_flag, 1, memory_order_acq_rel) == 0)
            w->ops->wake(w->be);
    }
    pthread_mutex_unlock(&s->start_lock);
    return 0;
}

/* ---- send_file ---------------------------------------------------------- */

int
conn_send_file(struct conn *c, struct xfer *x)
{
    int rc = 0;
    x->chunk = malloc(XFER_CHUNK);   /* freed by xfer_finish() */
    if (x->chunk == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&c->lock);
    if (c->state > CONN_OPEN)
        rc = -EPIPE;
    else if (c->xfer_new != NULL || c->xfer_busy)
        rc = -EBUSY;
    if (rc < 0) {
        pthread_mutex_unlock(&c->lock);
        free(x->chunk);
        x->chunk = NULL;
        return rc;
    }
    x->c = c;
    conn_ref(c);
    c->xfer_new = x;
    int local = on_worker_thread(c->w);
    if (!local)
        post_to_mailbox(c);
    pthread_mutex_unlock(&c->lock);
    if (local)
        xfer_attach(c);
    return 0;
}

/* Worker thread: start a send_file that conn_send_file() queued. */
static void
xfer_attach(struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    struct xfer *x = c->xfer_new;
    c->xfer_new = NULL;
    if (x != NULL) {
        c->xfer = x;
        c->xfer_busy = 1;
    }
    pthread_mutex_unlock(&c->lock);
    if (x == NULL)
        return;
    x->r.is_xfer = 1;
    x->r.op = FILE_READ;
    x->r.h.fd = x->r.f->fd;
    if (c->state > CONN_DRAINING)
        xfer_finish(c, EPIPE);
    else
        mark_dirty(c->w, c);   /* flush() pumps it */
}

/* Worker thread: read the next chunk while little is waiting to be sent;
 * finish once everything read has been handed to the kernel. */
static void
xfer_pump(struct conn *c, size_t unsent)
{
    struct xfer *x = c->xfer;
    if (x == NULL || x->reading)
        return;
    if (x->off >= x->end) {
        if (unsent == 0)
            xfer_finish(c, 0);
        return;
    }
    if (unsent >= XFER_MARK)
        return;   /* the next send completion pumps again */
    uint64_t left = x->end - x->off;
    x->r.buf = x->chunk;
    x->r.len = left < XFER_CHUNK ? (size_t)left : XFER_CHUNK;
    x->r.off = x->off;
    x->r.done = 0;
    x->reading = 1;
    file_issue(c->w, &x->r);
}

static void
xfer_on_read(struct worker *w, struct xfer *x, long res)
{
    struct conn *c = x->c;
    x->reading = 0;
    if (x->err || c->state > CONN_DRAINING) {
        xfer_finish(c, x->err ? x->err : EPIPE);
        return;
    }
    if (res <= 0) {
        xfer_finish(c, res < 0 ? (int)-res : ENODATA);   /* ENODATA: it shrank */
        return;
    }
    pthread_mutex_lock(&c->lock);
    int rc = reserve(&c->obuf, &c->ocap, c->olen + (size_t)res);
    if (rc == 0) {
        memcpy(c->obuf + c->olen, x->chunk, (size_t)res);
        c->olen += (size_t)res;
    }
    pthread_mutex_unlock(&c->lock);
    if (rc < 0) {
        xfer_finish(c, ENOMEM);
        return;
    }
    x->off += (uint64_t)res;
    x->queued += (uint64_t)res;
    mark_dirty(w, c);   /* flush() sends it and pumps the next read */
}

/* Worker thread: the transfer is over (err 0: all of it is with the
 * kernel).  Messages held behind it join the send queue. */
static void
xfer_finish(struct conn *c, int err)
{
    struct xfer *x = c->xfer;
    struct worker *w = c->w;
    if (x == NULL)
        return;
    if (x->reading) {
        x->err = err;   /* its read completes first, then this runs again */
        return;
    }
    pthread_mutex_lock(&c->lock);
    c->xfer = NULL;
    c->xfer_busy = 0;
    if (c->hlen > 0 && c->state <= CONN_DRAINING &&
        reserve(&c->obuf, &c->ocap, c->olen + c->hlen) == 0) {
        memcpy(c->obuf + c->olen, c->hbuf, c->hlen);
        c->olen += c->hlen;
    }
    c->hlen = 0;
    pthread_mutex_unlock(&c->lock);
    x->err = x->err ? x->err : err;
    free(x->chunk);
    x->chunk = NULL;
    x->c = NULL;
    if (grow_array(&w->batch, &w->batch_cap, w->nbatch + 1,
                   sizeof(struct entry)) == 0)
        w->batch[w->nbatch++] = (struct entry){NULL, &x->r, NULL, 0, 0, ENTRY_XFER};
    /* else: out of memory for the notice; the dispatch layer's data leaks
     * rather than touch freed memory. */
    if (c->state <= CONN_DRAINING)
        mark_dirty(w, c);
    conn_unref(c);
}

static void
drain_mailbox(struct worker *w)
{
    /* Clear the flag and take both lists under one lock: a request posted
     * after this sees the flag clear and wakes us again. */
    pthread_mutex_lock(&w->mbox_lock);
    atomic_store_explicit(&w->mbox_flag, 0, memory_order_release);
    struct conn *c = w->mailbox;
    w->mailbox = NULL;
    struct file_req *files = w->file_mail;
    w->file_mail = NULL;
    /* Once in_mailbox is clear another thread may post c again, which
     * rewrites next_mail: walk a link of our own. */
    for (struct conn *m = c; m != NULL; m = m->next_mail) {
        m->in_mailbox = 0;
        m->next_drain = m->next_mail;
    }
    pthread_mutex_unlock(&w->mbox_lock);
    start_file_mail(w, files);

    while (c != NULL) {
        struct conn *next = c->next_drain;
        if (c->adopt_req)
            conn_adopt(w, c);
        if (c->connect_req)
            start_connect(w, c);
        if (c->xfer_new != NULL)   /* racy read; xfer_attach rechecks */
            xfer_attach(c);
        pthread_mutex_lock(&c->lock);
        int req = c->close_req, why = c->close_why;
        c->close_req = 0;
        pthread_mutex_unlock(&c->lock);
        if (c->state <= CONN_DRAINING) {
            if (req == 2 && why != CLOSE_NONE)
                conn_fail(c, (enum close_reason)why, 0);
            else if (req)
                conn_close(c, req == 1);
            else
                mark_dirty(w, c);
        }
        conn_unref(c);
        c = next;
    }
}

static void
dispatch_batch(struct worker *w)
{
    struct server *s = w->srv;
    unsigned n = w->nbatch;

    if (n > 0) {
        s->dops->dispatch(w, 0, n);
        /* Handlers may have closed connections and queued CLOSE entries
         * of their own: deliver those too before dropping references. */
        while (w->nbatch > n) {
            unsigned from = n;
            n = w->nbatch;
            s->dops->dispatch(w, from, n);
        }
        for (unsigned i = 0; i < n; i++) {
            struct conn *c = w->batch[i].c;
            if (c == NULL)
                continue;   /* a file completion: the dispatch layer owns it */
            if (w->batch[i].kind == ENTRY_MSG)
                w->delivered = 1;   /* and gave a reference back first */
            if (((w->batch[i].kind == ENTRY_MSG && --c->queued == 0 &&
                  (c->peer_eof || c->graceful || c->bad_input)) ||
                 w->batch[i].kind == ENTRY_EOF) &&
                c->state <= CONN_DRAINING)
                mark_dirty(w, c);   /* flush() decides whether to close */
            conn_unref(c);
        }
        w->nbatch = 0;
    }
    for (unsigned i = 0; i < w->nheld; i++)
        w->ops->release_buf(w->be, w->held_bufs[i]);
    w->nheld = 0;
    for (unsigned i = 0; i < w->ncompact; i++) {
        struct conn *c = w->compact[i];
        c->rbuf_pinned = 0;
        if (c->direct) {
            conn_unref(c);   /* a receive writes at rlen: next time */
            continue;
        }
        /* Nothing points into rbuf now: move what is left (a partial
         * message, unframed bytes) to the front, or appends made while it
         * was pinned would slide it ever further and grow it without
         * bound.  Only when the consumed prefix is at least as big as what
         * is left, so each byte moved was paid for by one consumed. */
        size_t left = c->rlen - c->rstart;
        if (left == 0) {
            c->rstart = c->rlen = 0;
        } else if (c->rstart >= left) {
            memmove(c->rbuf, c->rbuf + c->rstart, left);
            c->rstart = 0;
            c->rlen = left;
        }
        if (c->recv == RECV_OFF)
            update_recv(c);   /* a direct receive waited for this */
        conn_unref(c);
    }
    w->ncompact = 0;
}

/* Frame what waited for the next turn (see FRAME_BUDGET). */
static void
run_deferred(struct worker *w)
{
    struct conn *c = w->deferred;
    w->deferred = NULL;
    while (c != NULL) {
        struct conn *next = c->next_deferred;
        c->deferred = 0;
        if (c->state != CONN_OPEN) {
            mark_dirty(w, c);   /* closing: flush() decides */
        } else if (!c->paused && frame_rbuf(w, c) == 0) {
            update_recv(c);     /* the backlog may have shrunk */
            if (!c->deferred && c->peer_eof)
                mark_dirty(w, c);   /* may be ready to close */
        }
        conn_unref(c);
        c = next;
    }
}

static void
flush_dirty(struct worker *w)
{
    while (w->dirty != NULL) {
        struct conn *c = w->dirty;
        w->dirty = c->next_dirty;
        c->dirty = 0;
        flush(c);
        conn_unref(c);
    }
}

/* Buffers given back by a sweep that make at least this many bytes are
 * worth returning to the kernel (malloc_trim releases the free pages inside
 * the heap; connections live in slabs, so those pages are wholly free).
 * Only buffers below glibc's default mmap threshold count (larger ones went
 * back at free()), and a worker trims at most once per TRIM_EVERY_MS:
 * malloc_trim walks every arena under its lock. */
#define TRIM_RETURN_BYTES (256 * 1024)
#define TRIM_HEAP_MAX (128 * 1024)
#define TRIM_EVERY_MS 10000

static size_t
heap_bytes(size_t cap)
{
    return cap < TRIM_HEAP_MAX ? cap : 0;
}

/* A quiet connection gives its empty buffers back, so memory per idle
 * connection is the struct alone; one malloc when traffic resumes after a
 * second of silence costs nothing.  (A busy connection keeps them: no
 * allocation per message.)  Returns the bytes given back. */
static size_t
trim(struct conn *c)
{
    size_t freed = 0;
    if (c->big && c->direct && c->rstart == c->rlen) {
        /* Quiet between messages: stop holding a large buffer open for the
         * next one; the final event re-arms with the engine's buffers.
         * (Mid-message the buffer holds what came, as it would anyway.) */
        c->big = 0;
        recv_stop(c);
    }
    if (c->rstart == c->rlen && !c->rbuf_pinned && !c->direct &&
        c->rbuf != NULL) {
        freed += heap_bytes(c->rcap);
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = c->rstart = c->rlen = 0;
    }
    if (!c->send_busy && sent_off(c) == c->slen && c->sbuf != NULL) {
        freed += heap_bytes(c->scap);
        free(c->sbuf);
        c->sbuf = NULL;
        c->scap = c->slen = 0;
        set_sent_off(c, 0);
    }
    pthread_mutex_lock(&c->lock);
    if (c->olen == 0 && c->obuf != NULL) {
        freed += heap_bytes(c->ocap);
        free(c->obuf);
        c->obuf = NULL;
        c->ocap = 0;
    }
    struct refq *q = c->rq;
    if (q != NULL && q->no == 0 && !c->send_busy && sent_off(c) == c->slen) {
        /* all sent (and given back) */
        c->refs_out = 0;
        free(q->o);
        free(q->s);
        free(q);
        c->rq = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    return freed;
}

static void
sweep(struct worker *w)
{
    int64_t idle = w->srv->cfg.idle_timeout_ms;
    int64_t half = w->srv->cfg.half_close_ms;
    size_t freed = 0;
    struct conn *c = w->conns.next;
    while (c != &w->conns) {
        struct conn *next = c->next;
        int64_t quiet = w->now - c->last_active;
        if (idle > 0 && c->state <= CONN_DRAINING && quiet >= idle)
            conn_fail(c, CLOSE_IDLE, 0);
        else if (c->peer_eof && half > 0 && c->state <= CONN_DRAINING &&
                 quiet >= half)
            conn_fail(c, CLOSE_IDLE, 0);   /* half-closed, nothing more sent */
        else if (c->state == CONN_DRAINING &&
                 ((c->wr_shut && w->now - c->drain_since >= LINGER_MS) ||
                  quiet >= DRAIN_MAX_MS))
            begin_close(c);   /* the peer never sent its FIN, or never read */
        else if (quiet >= TRIM_AFTER_MS)
            freed += trim(c);
        c = next;
    }
#ifdef __GLIBC__
    if (freed >= TRIM_RETURN_BYTES && w->now - w->last_trim >= TRIM_EVERY_MS) {
        w->last_trim = w->now;
        malloc_trim(0);
    }
#else
    (void)freed;
#endif
}

static int
next_timeout(struct worker *w)
{
    int64_t due = w->nconns ? w->next_sweep : INT64_MAX;
    if (w->connect_due != 0 && w->connect_due < due)
        due = w->connect_due;
    for (unsigned i = 0; i < w->nls; i++)
        if (!w->ls[i].armed && w->ls[i].retry_at && w->ls[i].retry_at < due)
            due = w->ls[i].retry_at;
    if (w->nbatch || w->dirty || w->deferred)
        return 0;
    if (due == INT64_MAX)
        return -1;
    int64_t t = due - now_ms();
    return t < 0 ? 0 : (t > 60000 ? 60000 : (int)t);
}

static void
timers(struct worker *w)
{
    int64_t idle = w->srv->cfg.idle_timeout_ms;
    if (w->connect_due != 0 && w->now >= w->connect_due)
        expire_connects(w);
    if (w->now >= w->next_sweep) {
        sweep(w);
        w->next_sweep = w->now + (idle == 0 || idle >= 4000 ? 1000 : idle / 4 + 1);
    }
    for (unsigned i = 0; i < w->nls; i++) {
        struct listener_slot *ls = &w->ls[i];
        if (!ls->armed && ls->retry_at && w->now >= ls->retry_at &&
            !atomic_load(&w->stopping)) {
            ls->retry_at = 0;
            arm_accept(w, ls);
        }
    }
}

/* Sent references wait for the next dispatch, which gives one back before
 * each message it delivers (the heap then reuses each block for the next
 * message instead of trimming and faulting in again after a batch of
 * frees).  Given back here, all at once, after a turn that delivered no
 * message, when many wait, or at the end (all = 1). */
#define RELEASE_KEEP 256
#define RELEASE_KEEP_BYTES (8 * 1024 * 1024)
#define RELEASE_WAIT_MS 50

static void
release_refs(struct worker *w, int all)
{
    if (w->nrelease == 0 || w->srv->dops == NULL) {
        w->release_bytes = 0;   /* (an upper bound: dispatch pops too) */
        return;
    }
    if (!all && w->delivered && w->nrelease <= RELEASE_KEEP &&
        w->release_bytes <= RELEASE_KEEP_BYTES)
        return;
    w->srv->dops->release(w, w->release, w->nrelease);
    w->nrelease = 0;
    w->release_bytes = 0;
}

/* One turn: reap, frame, dispatch, give buffers back, flush. */
static int
turn(struct worker *w, int timeout)
{
    if (w->nrelease > 0 && (timeout < 0 || timeout > RELEASE_WAIT_MS))
        timeout = RELEASE_WAIT_MS;
    int n = w->ops->wait(w->be, w->events, EVENT_BATCH, timeout);
    if (n < 0 && n != -EINTR)
        return n;
    w->now = now_ms();
    w->delivered = 0;
    for (int i = 0; i < n; i++)
        on_event(w, &w->events[i]);
    if (atomic_load_explicit(&w->mbox_flag, memory_order_acquire) ||
        w->file_retry != NULL)
        drain_mailbox(w);
    dispatch_batch(w);
    flush_dirty(w);
    /* Messages left for this turn's second round (FRAME_BUDGET, or
     * unpaused by the flush), and CLOSE notices queued by the flush. */
    run_deferred(w);
    dispatch_batch(w);
    release_refs(w, 0);
    timers(w);
    return 0;
}

/* wait() failed (ENOMEM and the like: anything else is a bug): note it,
 * pause so the loop cannot spin, and try again. */
static void
backend_failed(struct worker *w, int rc)
{
    struct timespec pause = {0, 10 * 1000 * 1000};
    w->loop_err = -rc;
    w->loop_errors++;
    nanosleep(&pause, NULL);
}

static void
shutdown_worker(struct worker *w)
{
    for (unsigned i = 0; i < w->nls; i++) {
        struct listener_slot *ls = &w->ls[i];
        if (ls->armed)
            w->ops->cancel(w->be, &ls->h);
    }
    for (struct conn *c = w->conns.next, *next; c != &w->conns; c = next) {
        next = c->next;
        begin_close(c);
    }
    dispatch_batch(w);
    for (unsigned failures = 0;;) {
        int busy = w->nconns > 0 || w->file_inflight > 0;
        for (unsigned i = 0; i < w->nls; i++)
            busy |= w->ls[i].armed;
        if (!busy)
            break;
        int rc = turn(w, 1000);
        if (rc == 0) {
            failures = 0;
        } else if (++failures < 100) {
            backend_failed(w, rc);
        } else {
            /* The backend is broken for good: close what is left without
             * its final events rather than hang stop() forever. */
            for (struct conn *c = w->conns.next, *next; c != &w->conns; c = next) {
                next = c->next;
                if (c->direct)
                    c->rbuf = NULL;   /* leaked: the kernel may still write it */
                if (c->send_busy) {   /* ...or still read these (the
                                          references too: never given back) */
                    c->sbuf = NULL;
                    c->rq = NULL;
                }
                c->inflight = 0;
                finish_close(c);
            }
            for (unsigned i = 0; i < w->nls; i++)
                w->ls[i].armed = 0;
        }
    }
    for (unsigned i = 0; i < w->nls; i++)
        w->ops->forget(w->be, &w->ls[i].h);
    drain_mailbox(w);
    flush_dirty(w);
    dispatch_batch(w);
    release_refs(w, 1);
}

static void *
worker_main(void *arg)
{
    struct worker *w = arg;
    struct server *s = w->srv;

    for (unsigned i = 0; i < w->nls; i++)
        arm_accept(w, &w->ls[i]);
    w->next_sweep = now_ms() + 1000;
    while (!atomic_load_explicit(&w->stopping, memory_order_acquire)) {
        int rc = turn(w, next_timeout(w));
        if (rc < 0)
            backend_failed(w, rc);
    }
    shutdown_worker(w);
    if (s->dops != NULL && s->dops->thread_exit != NULL)
        s->dops->thread_exit(w);
    return NULL;
}

/* ---- server ------------------------------------------------------------- */

static int server_setup(struct server *s);
static void stop_workers(struct server *s);

int
server_init(struct server *s, const struct server_config *cfg,
            const struct dispatch_ops *dops, void *dispatch_arg)
{
    memset(s, 0, sizeof(*s));
    s->cfg = *cfg;
    s->dops = dops;
    s->dispatch_arg = dispatch_arg;
    if (s->cfg.workers == 0)
        s->cfg.workers = 1;
    if (s->cfg.nbufs == 0)
        s->cfg.nbufs = 256;
    if (s->cfg.bufsize == 0)
        s->cfg.bufsize = 16384;
    if (s->cfg.unsent_limit == 0)
        s->cfg.unsent_limit = SIZE_MAX;
    return server_setup(s);
}

int
server_add_listener(struct server *s, int fd)
{
    if (s->running)
        return -EBUSY;
    if (s->nlfds >= MAX_LISTENERS)
        return -ENOSPC;
    s->lfds[s->nlfds++] = fd;
    return 0;
}

static void
worker_release(struct worker *w)
{
    if (w->be != NULL)
        w->ops->destroy(w->be);
    w->be = NULL;
    pthread_mutex_destroy(&w->mbox_lock);
    free(w->batch);
    free(w->held_bufs);
    free(w->compact);
    free(w->release);
}

static int
worker_prepare(struct server *s, struct worker *w, unsigned index)
{
    memset(w, 0, sizeof(*w));
    w->srv = s;
    w->index = index;
    w->ops = s->cfg.ops;
    w->conns.next = w->conns.prev = &w->conns;
    if (pthread_mutex_init(&w->mbox_lock, NULL) != 0)
        return -ENOMEM;
    for (unsigned i = 0; i < s->nlfds; i++) {
        w->ls[i].h.fd = s->lfds[i];
        w->ls[i].h.tag = HANDLE_LISTENER;
        w->nls++;
    }
    return 0;
}

/* Create the backend on the worker's own thread: an io_uring created with
 * SINGLE_ISSUER and DEFER_TASKRUN may only be entered by its creator. */
static int
worker_open_backend(struct worker *w)
{
    const struct server_config *cfg = &w->srv->cfg;
    w->be = w->ops->create(cfg->nbufs, cfg->bufsize);
    if (w->be == NULL && cfg->fallback && w->ops != &iocp_epoll_ops) {
        w->fell_back = errno ? errno : ENOSYS;
        w->ops = &iocp_epoll_ops;
        w->be = w->ops->create(cfg->nbufs, cfg->bufsize);
    }
    if (w->be == NULL)
        return errno ? -errno : -ENOMEM;
    if (w->srv->dops != NULL && w->srv->dops->thread_start != NULL) {
        int rc = w->srv->dops->thread_start(w);
        if (rc < 0) {
            w->ops->destroy(w->be);
            w->be = NULL;
            return rc;
        }
    }
    return 0;
}

static void *
worker_thread(void *arg)
{
    struct worker *w = arg;
    struct server *s = w->srv;
    int rc = worker_open_backend(w);

    pthread_mutex_lock(&s->start_lock);
    w->start_err = -rc;
    s->nready++;
    pthread_cond_broadcast(&s->start_cond);
    pthread_mutex_unlock(&s->start_lock);
    if (rc < 0)
        return NULL;
    return worker_main(w);
}

int
server_start(struct server *s)
{
    int rc = 0;
    unsigned started = 0;

    if (s->running)
        return -EBUSY;
    s->workers = calloc(s->cfg.workers, sizeof(*s->workers));
    if (s->workers == NULL)
        return -ENOMEM;
    s->nready = 0;
    for (; started < s->cfg.workers; started++) {
        struct worker *w = &s->workers[started];
        rc = worker_prepare(s, w, started);
        if (rc == 0)
            rc = -pthread_create(&w->thread, NULL, worker_thread, w);
        if (rc < 0) {
            pthread_mutex_destroy(&w->mbox_lock);
            break;
        }
    }
    s->nworkers = started;
    pthread_mutex_lock(&s->start_lock);
    while (s->nready < started)
        pthread_cond_wait(&s->start_cond, &s->start_lock);
    pthread_mutex_unlock(&s->start_lock);
    for (unsigned i = 0; i < started && rc == 0; i++)
        if (s->workers[i].start_err)
            rc = -s->workers[i].start_err;
    s->running = 1;
    if (rc < 0) {
        stop_workers(s);   /* the listeners stay, for another try */
        return rc;
    }
    s->backend_name = s->workers[0].ops->name;
    s->fell_back = s->workers[0].fell_back;
    pthread_mutex_lock(&s->start_lock);
    s->accepting_work = 1;
    pthread_mutex_unlock(&s->start_lock);
    return 0;
}

static void
close_listeners(struct server *s)
{
    for (unsigned i = 0; i < s->nlfds; i++)
        close(s->lfds[i]);
    s->nlfds = 0;
}

static void
stop_workers(struct server *s)
{
    pthread_mutex_lock(&s->start_lock);
    s->accepting_work = 0;   /* connect() posts nothing from now on */
    pthread_mutex_unlock(&s->start_lock);
    for (unsigned i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        atomic_store_explicit(&w->stopping, 1, memory_order_release);
        if (w->be != NULL)
            w->ops->wake(w->be);
    }
    for (unsigned i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        pthread_join(w->thread, NULL);
        worker_release(w);
    }
    free(s->workers);
    s->workers = NULL;
    s->nworkers = 0;
    s->running = 0;
}

/* Serialised: two threads may call stop() at once (atexit and another). */
void
server_stop(struct server *s)
{
    pthread_mutex_lock(&s->stop_lock);
    if (s->running)
        stop_workers(s);
    close_listeners(s);   /* a stopped server gives its ports back */
    pthread_mutex_unlock(&s->stop_lock);
}

static int
server_setup(struct server *s)
{
    s->conn_pool = slab_pool_new(sizeof(struct conn));
    if (s->conn_pool == NULL)
        return -ENOMEM;
    if (pthread_mutex_init(&s->start_lock, NULL) != 0)
        goto fail_start;
    if (pthread_mutex_init(&s->stop_lock, NULL) != 0)
        goto fail_stop;
    if (pthread_cond_init(&s->start_cond, NULL) != 0)
        goto fail_cond;
    return 0;
fail_cond:
    pthread_mutex_destroy(&s->stop_lock);
fail_stop:
    pthread_mutex_destroy(&s->start_lock);
fail_start:
    slab_pool_release(s->conn_pool);
    s->conn_pool = NULL;
    return -ENOMEM;
}

void
server_destroy(struct server *s)
{
    server_stop(s);
    pthread_cond_destroy(&s->start_cond);
    pthread_mutex_destroy(&s->stop_lock);
    pthread_mutex_destroy(&s->start_lock);
    /* Connections still referenced (none, normally) keep it until freed. */
    slab_pool_release(s->conn_pool);
    s->conn_pool = NULL;
}
