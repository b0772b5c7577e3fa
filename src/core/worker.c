/* worker.c - the worker loop.  Each worker thread owns one engine and the
 * connections given to it; a turn reaps a batch of completions, frames
 * every received byte natively, hands all the whole messages of the batch
 * to the dispatch layer at once (one GIL hold per batch), gives the receive
 * buffers back, and flushes every connection that has output: one send per
 * connection per batch.  Other threads reach a worker only through its
 * mailbox (sends, closes, connects, accepted connections, file requests)
 * and the engine's wake().  Timers: the sweep (idle and half-closed
 * connections, closes stuck on a peer that never reads, giving idle
 * buffers back), lingering closes, connect deadlines, accept retries. */
#include "core/internal.h"

#include <malloc.h>

#define TRIM_AFTER_MS 1000    /* idle buffers are given back after this */
/* A connection we close gracefully waits this long after its FIN for the
 * peer's (linger_expire(), on a timer of its own); and at most
 * DRAIN_MAX_MS in all, for a peer that stopped reading our replies (the
 * sweep).  The sweep runs every SWEEP_MS (or more often, for a short idle
 * timeout).  tests/c/core_test.c's linger build overrides LINGER_MS and
 * SWEEP_MS, to tell the two timers apart. */
#ifndef LINGER_MS
#define LINGER_MS 2000
#endif
#ifndef SWEEP_MS
#define SWEEP_MS 1000
#endif
#define DRAIN_MAX_MS 30000
/* Buffers given back by a sweep that make at least this many bytes are
 * worth returning to the kernel (malloc_trim releases the free pages inside
 * the heap; connections live in slabs, so those pages are wholly free).
 * Only buffers below glibc's default mmap threshold count (larger ones went
 * back at free()), and a worker trims at most once per TRIM_EVERY_MS:
 * malloc_trim walks every arena under its lock. */
#define TRIM_RETURN_BYTES (256 * 1024)
#define TRIM_HEAP_MAX (128 * 1024)
#define TRIM_EVERY_MS 10000
/* ... unless this much was given back since the last trim: many
 * connections going quiet at once (a TLS connection gives back some 40 KB
 * of record buffers) would otherwise hold their pages for TRIM_EVERY_MS. */
#define TRIM_OWED_MAX (8 * 1024 * 1024)
/* Sent references wait for the next dispatch, which gives one back before
 * each message it delivers (the heap then reuses each block for the next
 * message instead of trimming and faulting in again after a batch of
 * frees).  Given back here, all at once, after a turn that delivered no
 * message, when many wait, or at the end (all = 1). */
#define RELEASE_KEEP 256
#define RELEASE_KEEP_BYTES (8 * 1024 * 1024)
#define RELEASE_WAIT_MS 50

static void on_event(struct worker *w, const struct io_event *ev);
static void drain_mailbox(struct worker *w);
static void dispatch_batch(struct worker *w);
static void flush_dirty(struct worker *w);
static void run_deferred(struct worker *w);
static void release_refs(struct worker *w, int all);
static void timers(struct worker *w);

/* One turn.  Returns 0, or the engine's -errno if its wait failed. */
static int
turn(struct worker *w, int timeout)
{
    /* Wait for completions (on io_uring the same system call submits
     * everything the last turn queued). */
    if (w->nrelease > 0 && (timeout < 0 || timeout > RELEASE_WAIT_MS))
        timeout = RELEASE_WAIT_MS;
    int n = w->ops->wait(w->be, w->events, EVENT_BATCH, timeout);
    if (n < 0 && n != -EINTR)
        return n;
    w->now = now_ms();
    w->delivered = 0;
    /* Reap: accept, frame what was received (whole messages join the
     * batch), note sends done, connects, file results. */
    for (int i = 0; i < n; i++)
        on_event(w, &w->events[i]);
    /* What other threads asked: sends, closes, connects, files. */
    if (atomic_load_explicit(&w->mbox_flag, memory_order_acquire) ||
        w->file_retry != NULL)
        drain_mailbox(w);
    /* The batch to Python under one GIL hold; receive buffers back. */
    dispatch_batch(w);
    /* One send per connection with output; closes decided. */
    flush_dirty(w);
    /* Messages left for this turn's second round (FRAME_BUDGET, or
     * unpaused by the flush), and the notices the flush queued. */
    run_deferred(w);
    dispatch_batch(w);
    /* Sent references back to their owners; the sweep and deadlines. */
    release_refs(w, 0);
    timers(w);
    return 0;
}

/* Route one event to the code that owns what it is about. */
static void
on_event(struct worker *w, const struct io_event *ev)
{
    struct io_handle *h = ev->h;
    if (h->tag == HANDLE_LISTENER) {
        accept_on_event(w, (struct listener_slot *)h, ev);
        return;
    }
    if (ev->op == IO_FILE) {
        file_on_event(w, (struct file_req *)h, ev);
        return;
    }
    struct conn *c = (struct conn *)h;
    switch (ev->op) {
    case IO_RECV:
        recv_on_event(w, c, ev);
        break;
    case IO_SEND:
        send_on_event(w, c, ev);
        break;
    case IO_CONNECT:
        dial_on_event(w, c, ev->res);
        break;
    default:
        conn_op_done(c);
        break;
    }
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
    file_start_mail(w, files);

    while (c != NULL) {
        struct conn *next = c->next_drain;
        if (c->adopt_req)
            accept_adopt(w, c);
        if (c->connect_req)
            dial_start(w, c);
        pthread_mutex_lock(&c->lock);
        int req = c->close_req, why = c->close_why;
        int xfer = c->xfer_new != NULL;
        c->close_req = 0;
        pthread_mutex_unlock(&c->lock);
        if (xfer)
            xfer_attach(c);
        if (c->state <= CONN_DRAINING) {
            if (req == 3)
                recv_end_input(c, (enum close_reason)why);
            else if (req == 2 && why != CLOSE_NONE)
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
        /* Messages in a connection's own buffer: where they lie now.
         * (rbuf may move while the turn frames, not while handlers run:
         * nothing they can call receives, frames or compacts.) */
        for (unsigned i = 0; i < n; i++) {
            struct entry *e = &w->batch[i];
            if (e->kind != ENTRY_MSG)
                continue;
            if (e->ptr == NULL)
                e->ptr = e->c->rbuf + e->off;
            if (s->cfg.hold_msgs)   /* before its handler can finish it */
                atomic_fetch_add_explicit(&e->c->held, held_cost(e->len),
                                          memory_order_relaxed);
        }
        s->dops->dispatch(w, 0, n);
        /* Handlers may have closed connections and queued CLOSE entries
         * of their own: deliver those too before dropping references. */
        while (w->nbatch > n) {
            unsigned from = n;
            n = w->nbatch;
            s->dops->dispatch(w, from, n);
        }
        for (unsigned i = 0; i < n; i++) {
            struct entry *e = &w->batch[i];
            struct conn *c = e->c;
            if (c == NULL)
                continue;   /* a file completion: the dispatch layer owns it */
            /* send_flush() decides whether to close (and, with held
             * messages, whether to pause receiving). */
            int look = e->kind == ENTRY_EOF;
            if (e->kind == ENTRY_MSG) {
                w->delivered = 1;   /* and gave a reference back first */
                look = (--c->queued == 0 &&
                        (c->peer_eof || c->graceful || c->bad_input)) ||
                       s->cfg.hold_msgs;
            }
            if (look && c->state <= CONN_DRAINING)
                mark_dirty(w, c);
            conn_unref(c);
        }
        w->nbatch = 0;
        w->nhmsgs = w->nhfields = 0;
        w->nrmsgs = w->nrargs = 0;
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
            recv_update(c);   /* a direct receive waited for this */
        conn_unref(c);
    }
    w->ncompact = 0;
}

/* Frame what waited for the next turn (recv.c's FRAME_BUDGET). */
static void
run_deferred(struct worker *w)
{
    struct conn *c = w->deferred;
    w->deferred = NULL;
    while (c != NULL) {
        struct conn *next = c->next_deferred;
        c->deferred = 0;
        if (c->state != CONN_OPEN) {
            mark_dirty(w, c);   /* closing: send_flush() decides */
        } else if (!c->paused && recv_frame(w, c) == 0) {
            recv_update(c);     /* the backlog may have shrunk */
            if (!c->deferred && (c->peer_eof || c->bad_input))
                mark_dirty(w, c);   /* the input is over: may be ready
                                       to close */
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
        send_flush(c);
        conn_unref(c);
    }
}

static size_t
heap_bytes(size_t cap)
{
    return cap < TRIM_HEAP_MAX ? cap : 0;
}

/* A quiet connection gives its empty buffers back, so memory per idle
 * connection is the struct alone; one malloc when traffic resumes after a
 * second of silence costs nothing.  (A busy connection keeps them: no
 * allocation per message.)  Returns the bytes given back. */
size_t
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
    if (c->tls != NULL)
        freed += tls_trim(c);
    /* Under the lock: senders on other threads read slen (the unsent
     * count). */
    pthread_mutex_lock(&c->lock);
    if (!c->send_busy && sent_off(c) == c->slen && c->sbuf != NULL) {
        freed += heap_bytes(c->scap);
        free(c->sbuf);
        c->sbuf = NULL;
        c->scap = c->slen = 0;
        set_sent_off(c, 0);
    }
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
        if (c->tls != NULL && tls_expired(c, w->now))
            ;   /* the handshake took too long: failed */
        else if (c->http != NULL && http_header_expired(c, w->now))
            ;   /* a request's header section took too long: 408 */
        else if (idle > 0 && c->state <= CONN_DRAINING && quiet >= idle)
            conn_fail(c, CLOSE_IDLE, 0);
        else if (c->peer_eof && half > 0 && c->state <= CONN_DRAINING &&
                 quiet >= half)
            conn_fail(c, CLOSE_IDLE, 0);   /* half-closed, nothing more sent */
        else if (c->state == CONN_DRAINING && quiet >= DRAIN_MAX_MS)
            conn_begin_close(c);   /* the peer never read our replies */
        else if (quiet >= TRIM_AFTER_MS)
            freed += trim(c);
        c = next;
    }
#ifdef __GLIBC__
    w->trim_owed += freed;
    if ((w->trim_owed >= TRIM_RETURN_BYTES && w->now - w->last_trim >= TRIM_EVERY_MS) ||
        w->trim_owed >= TRIM_OWED_MAX) {
        w->last_trim = w->now;
        w->trim_owed = 0;
        malloc_trim(0);
    }
#else
    (void)freed;
#endif
}

/* Our FIN went out LINGER_MS ago and the peer's has not come: close.
 * The queue is in deadline order, so only its head is looked at. */
static void
linger_expire(struct worker *w)
{
    struct conn *c;
    while ((c = w->linger_head) != NULL && w->now - c->drain_since >= LINGER_MS) {
        conn_unlinger(c);
        conn_begin_close(c);
    }
}

static int
next_timeout(struct worker *w)
{
    int64_t due = w->nconns ? w->next_sweep : INT64_MAX;
    if (w->connect_due != 0 && w->connect_due < due)
        due = w->connect_due;
    if (w->linger_head != NULL && w->linger_head->drain_since + LINGER_MS < due)
        due = w->linger_head->drain_since + LINGER_MS;
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
    /* The sweep checks the idle, handshake and HTTP header timeouts: at
     * least four times in the shortest. */
    int64_t shortest = w->srv->cfg.idle_timeout_ms;
    int64_t hs = w->srv->cfg.tls_handshake_ms;
    int64_t hh = w->srv->cfg.framing.http_header_ms;
    if (shortest == 0 || (hs != 0 && hs < shortest))
        shortest = hs;
    if (shortest == 0 || (hh != 0 && hh < shortest))
        shortest = hh;
    if (w->connect_due != 0 && w->now >= w->connect_due)
        dial_expire(w);
    linger_expire(w);
    if (w->now >= w->next_sweep) {
        sweep(w);
        w->next_sweep = w->now +
            (shortest == 0 || shortest >= 4 * SWEEP_MS ? SWEEP_MS
                                                        : shortest / 4 + 1);
    }
    for (unsigned i = 0; i < w->nls; i++) {
        struct listener_slot *ls = &w->ls[i];
        if (!ls->armed && ls->retry_at && w->now >= ls->retry_at &&
            !atomic_load(&w->stopping)) {
            ls->retry_at = 0;
            accept_arm(w, ls);
        }
    }
}

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
        conn_begin_close(c);
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
                conn_finish_close(c);
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

void *
worker_main(void *arg)
{
    struct worker *w = arg;
    struct server *s = w->srv;

    for (unsigned i = 0; i < w->nls; i++)
        accept_arm(w, &w->ls[i]);
    w->next_sweep = now_ms() + SWEEP_MS;
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

struct entry *
worker_entry(struct worker *w, unsigned i)
{
    return &w->batch[i];
}

const struct http_msg *
worker_http_msg(struct worker *w, const struct entry *e)
{
    return &w->hmsgs[e->aux];
}

const struct http_field *
worker_http_fields(struct worker *w, const struct http_msg *m)
{
    return &w->hfields[m->field0];
}

const struct resp_msg *
worker_resp_msg(struct worker *w, const struct entry *e)
{
    return &w->rmsgs[e->aux];
}

const struct resp_arg *
worker_resp_args(struct worker *w, const struct resp_msg *m)
{
    return &w->rargs[m->arg0];
}

void *
worker_dispatch_arg(struct worker *w)
{
    return w->srv->dispatch_arg;
}

void **
worker_dctx(struct worker *w)
{
    return &w->dctx;
}

void
worker_set_current(struct worker *w, struct conn *c)
{
    w->current = c;
}

void *
worker_pop_release(struct worker *w)
{
    return w->nrelease > 0 ? w->release[--w->nrelease] : NULL;
}
