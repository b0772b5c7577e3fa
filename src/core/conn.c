/* conn.c - a connection's life: allocation from the slab pool, its
 * references, the close reasons, and closing in all its forms (at once,
 * gracefully, or once every reply owed has gone out).
 *
 * Lifetime: `refs` counts the worker's own reference (held until the fd is
 * closed; it covers the worker's connection list and linger queue, which
 * the connection leaves first), one per batch entry, one per list it is on
 * (flush, deferred, mailbox), one per hold and one for the dispatch
 * layer's object.
 * Operations in flight are counted in `inflight`: the fd is closed only
 * when the last one has reported its final event, so the kernel never
 * writes into freed memory and a reused fd number never receives an old
 * completion.
 *
 * States: CONNECTING (outgoing) -> OPEN -> DRAINING (our graceful close:
 * no more input handled, queued output goes out, our FIN, the peer's) ->
 * CLOSING (operations cancelled, waiting for their final events) -> DEAD
 * (fd closed, ENTRY_CLOSE queued; the struct lives on until its last
 * reference).  The input can end before the state changes: the peer's
 * FIN (peer_eof), a bad frame or a handler that raised (bad_input);
 * conn_output_done() closes
 * once everything owed for it has gone out. */
#include "core/internal.h"

#include "lib/slab.h"

#include <sys/socket.h>
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

struct conn *
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

void
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
    tls_free(c);
    http_conn_free(c);
    resp_conn_free(c);
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

void
conn_note_reason(struct conn *c, enum close_reason why, int err)
{
    if (why == CLOSE_RESET && c->tls != NULL && tls_cut_handshake(c, err))
        why = CLOSE_TLS;   /* a reset mid-handshake is a TLS failure */
    if (c->reason == CLOSE_NONE) {
        c->reason = (uint8_t)why;
        c->err = err;
        stat_add(&c->w->srv->stats.errors[why], 1);
    }
}

void
conn_fail(struct conn *c, enum close_reason why, int err)
{
    conn_note_reason(c, why, err);
    conn_begin_close(c);
}

void
conn_end_input(struct conn *c, enum close_reason why)
{
    if (on_worker_thread(c->w)) {
        if (c->state <= CONN_DRAINING)
            recv_end_input(c, why);
        return;
    }
    pthread_mutex_lock(&c->lock);
    if (c->state < CONN_CLOSING && c->close_req == 0) {
        c->close_req = 3;
        c->close_why = (uint8_t)why;
        conn_post(c);
    }
    pthread_mutex_unlock(&c->lock);
}

void
conn_finish_close(struct conn *c)
{
    struct worker *w = c->w;
    struct server *s = w->srv;

    conn_unlinger(c);   /* (stop()'s last resort skips conn_begin_close) */
    if (c->h.fd >= 0) {   /* (-1: an outgoing one that got no socket) */
        w->ops->forget(w->be, &c->h);
        close(c->h.fd);   /* errors from close are not actionable here */
        c->h.fd = -1;
    }
    c->next->prev = c->prev;
    c->prev->next = c->next;
    w->nconns--;
    server_unassign(w);
    stat_add(&s->stats.closed, 1);
    pthread_mutex_lock(&c->lock);
    c->state = CONN_DEAD;
    pthread_mutex_unlock(&c->lock);
    send_refs_drop(c);
    xfer_attach(c);           /* one asked for but never started */
    xfer_finish(c, EPIPE);    /* waits for its read if one is in flight */
    if (s->dops != NULL)
        push_entry(w, c, ENTRY_CLOSE, NULL, 0, 0);
    conn_unref(c);   /* the worker's reference */
}

void
conn_begin_close(struct conn *c)
{
    if (c->state >= CONN_CLOSING)
        return;
    conn_unlinger(c);
    pthread_mutex_lock(&c->lock);
    c->state = CONN_CLOSING;
    pthread_mutex_unlock(&c->lock);
    if (c->inflight == 0)
        conn_finish_close(c);
    else
        c->w->ops->cancel(c->w->be, &c->h);
}

void
conn_op_done(struct conn *c)
{
    if (--c->inflight == 0 && c->state == CONN_CLOSING)
        conn_finish_close(c);
}

int
conn_settled(const struct conn *c)
{
    return c->queued == 0 && !c->deferred && !c->paused &&
           atomic_load_explicit(&c->holds, memory_order_acquire) == 0;
}

/* No more input is handled; what is queued goes out, then our FIN
 * (conn_output_done()). */
void
conn_start_drain(struct conn *c)
{
    c->graceful = 1;
    c->drain_since = c->w->now;
    pthread_mutex_lock(&c->lock);
    c->state = CONN_DRAINING;
    pthread_mutex_unlock(&c->lock);
    recv_update(c);
    mark_dirty(c->w, c);
}

void
conn_output_done(struct conn *c)
{
    struct worker *w = c->w;
    if (c->graceful) {
        /* Our close: every reply is with the kernel.  Send FIN and wait
         * for the peer's, LINGER_MS at most (the linger queue, see
         * linger_expire() in worker.c): closing with unread input would
         * make the kernel reset the connection and drop the replies
         * still in flight. */
        if (!c->wr_shut) {
            if (c->tls != NULL && tls_notify(c))
                return;   /* decided again once close_notify is out */
            c->wr_shut = 1;
            c->drain_since = w->now;
            if (shutdown(c->h.fd, SHUT_WR) < 0) {
                conn_fail(c, CLOSE_RESET, errno);
                return;
            }
            if (!c->peer_eof)
                conn_linger(c);
        }
        if (c->peer_eof)
            conn_begin_close(c);
        return;
    }
    if (!conn_settled(c))
        return;
    if (c->bad_input) {
        conn_start_drain(c);   /* every message before the bad frame answered */
        return;
    }
    if (!c->peer_eof)
        return;
    /* The peer half-closed, and everything it sent has been handled and
     * answered.  The application has the last word (on_eof): it may keep
     * the connection open for replies still to come, until its close(). */
    if (c->rlen != c->rstart)
        conn_note_reason(c, CLOSE_TRUNCATED, 0);   /* it left inside a message */
    if (w->srv->cfg.want_eof && !c->eof_told) {
        c->eof_told = 1;
        if (push_entry(w, c, ENTRY_EOF, NULL, 0, 0) == 0)
            return;   /* decided again once it has been told */
    }
    if (c->keep_open)
        return;   /* bounded by half_close_ms (sweep()) */
    if (c->tls != NULL && tls_notify(c))
        return;   /* our close_notify first */
    conn_note_reason(c, CLOSE_EOF, 0);
    conn_begin_close(c);
}

void
conn_close(struct conn *c, int graceful)
{
    if (on_worker_thread(c->w)) {
        if (c->state >= CONN_CLOSING)
            return;
        if (!graceful || c->state == CONN_CONNECTING) {
            conn_begin_close(c);
            return;
        }
        if (c->state != CONN_DRAINING)
            conn_start_drain(c);
        return;
    }
    pthread_mutex_lock(&c->lock);
    if (c->state < CONN_CLOSING) {
        c->close_req = graceful ? 1 : 2;
        conn_post(c);
    }
    pthread_mutex_unlock(&c->lock);
}

void
conn_post(struct conn *c)
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
conn_linger(struct conn *c)
{
    struct worker *w = c->w;
    /* Appended: drain_since is the worker's clock, which never goes back,
     * so the queue stays in deadline order (worker.c, linger_expire()). */
    c->lingering = 1;
    c->next_linger = NULL;
    c->prev_linger = w->linger_tail;
    if (w->linger_tail != NULL)
        w->linger_tail->next_linger = c;
    else
        w->linger_head = c;
    w->linger_tail = c;
}

void
conn_unlinger(struct conn *c)
{
    if (!c->lingering)
        return;
    struct worker *w = c->w;
    if (c->prev_linger != NULL)
        c->prev_linger->next_linger = c->next_linger;
    else
        w->linger_head = c->next_linger;
    if (c->next_linger != NULL)
        c->next_linger->prev_linger = c->prev_linger;
    else
        w->linger_tail = c->prev_linger;
    c->next_linger = c->prev_linger = NULL;
    c->lingering = 0;
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
            conn_post(c);
        pthread_mutex_unlock(&c->lock);
        if (local)
            mark_dirty(c->w, c);
    }
    conn_unref(c);
}

void *
conn_py(const struct conn *c)
{
    return c->py;
}

void
conn_attach(struct conn *c, void *py)
{
    c->py = py;
    conn_ref(c);
}

void
conn_detach(struct conn *c)
{
    c->py = NULL;
    conn_unref(c);
}

int
conn_deliverable(const struct conn *c, enum entry_kind kind)
{
    if (c->handler_failed)
        return 0;   /* a handler of this connection already failed */
    if (kind == ENTRY_MSG)   /* we closed it: close() stops handling input,
                                even messages framed in the same turn */
        return !(c->state >= CONN_DRAINING && c->reason == CLOSE_NONE);
    if (kind == ENTRY_EOF || kind == ENTRY_DRAIN)
        return c->state < CONN_CLOSING;   /* closed since: on_close says so */
    return 1;
}

uint64_t
conn_id(const struct conn *c)
{
    return c->id;
}

enum close_reason
conn_reason(const struct conn *c)
{
    return (enum close_reason)c->reason;
}

int
conn_err(const struct conn *c)
{
    return c->err;
}

int
conn_outgoing(const struct conn *c)
{
    return c->outgoing;
}

const struct sockaddr *
conn_peer(const struct conn *c, socklen_t *len)
{
    *len = c->peerlen;
    return &c->peer.sa;
}

void
conn_keep_open(struct conn *c)
{
    c->keep_open = 1;
}
