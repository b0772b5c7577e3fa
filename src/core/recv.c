/* recv.c - receiving: the engine's receive events, the connection's
 * assembly buffer (rbuf), direct receives for large messages and bulk
 * input, and framing.
 *
 * Whole messages are framed straight from the engine's buffers where they
 * lie (no copy until the handler's bytes object); only the unfinished
 * message at a buffer's end is copied into rbuf, and only its own bytes.
 * A connection frames at most FRAME_BUDGET messages a turn; the rest wait,
 * unframed, for the next (deferred).  The input ends with the peer's FIN
 * (peer_eof), a bad frame or a handler that raised (bad_input,
 * recv_end_input()): after either, nothing more is framed and
 * conn_output_done() closes once the replies owed are out. */
#include "core/internal.h"

#define KEEP_BUF (64 * 1024)  /* most a header makes us reserve ahead */
/* Messages framed per connection per turn; the rest waits, unframed, for
 * the next turn.  Keeps one busy peer from filling a whole batch and
 * bounds the replies a batch can queue before backpressure can act. */
#define FRAME_BUDGET 32
/* Unframed bytes a deferred connection may hold before receiving stops. */
#define BACKLOG_MAX (256 * 1024)
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

static int rbuf_room(struct conn *c, size_t n, size_t need);

void
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

/* Note a large message (DIRECT_MIN bytes or more still to come: c->big)
 * and return how much a direct receive should ask for now, or 0 for the
 * engine's buffers. */
static size_t
direct_len(struct conn *c)
{
    if (c->state != CONN_OPEN || c->bad_input || c->tls != NULL)
        return 0;   /* (TLS: the records are decrypted into rbuf anyway) */
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
 * move until the final event: recv_frame(), the compaction after dispatch
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

void
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
void
recv_update(struct conn *c)
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
defer(struct worker *w, struct conn *c)
{
    if (!c->deferred) {
        c->deferred = 1;
        conn_ref(c);
        c->next_deferred = w->deferred;
        w->deferred = c;
    }
}

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

/* The first whole message at p[0 .. len): the server's framing, or its
 * HTTP parser (which may de-chunk a body in place: the bytes are ours). */
static inline int
frame_next(const struct framing *f, struct conn *c, const uint8_t *p,
           size_t len, size_t scan_from, struct frame *fr)
{
    if (c->http != NULL)
        return http_frame(c, (uint8_t *)p, len, fr);
    if (c->resp != NULL)
        return resp_frame(c, p, len, fr);
    return framing_next(f, p, len, scan_from, fr);
}

/* An HTTP request or RESP command framed at ptr (or rbuf + off): into
 * the batch, or answered here (native HTTP), or skipped (an empty RESP
 * command).  1 if it went into the batch, 0 if not, or -ENOMEM. */
static int
take_request(struct conn *c, const uint8_t *ptr, size_t off, size_t len)
{
    if (c->resp != NULL)
        return resp_emit(c, ptr, off, len);
    if (c->w->srv->cfg.native_echo)
        return http_native_reply(c, ptr != NULL ? ptr : c->rbuf + off) < 0 ? -ENOMEM : 0;
    return http_emit(c, ptr, off, len) < 0 ? -ENOMEM : 1;
}

/* After an HTTP request: the input ends with it unless it keeps the
 * connection alive.  1 if it ended. */
static int
request_ends_input(struct conn *c)
{
    if (c->http == NULL || http_keep_alive(c))
        return 0;
    recv_end_input(c, CLOSE_NONE);
    return 1;
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
 * connection closes gracefully (send_flush()), our FIN first and the peer's
 * input discarded until its own. */
static void
frame_error(struct conn *c, int st)
{
    if (st == -ENOMEM)
        conn_fail(c, CLOSE_RESET, ENOMEM);
    else if (st == FRAME_REFUSED && c->resp != NULL)
        resp_refuse(c);   /* answered in its turn, then the same */
    else if (st == FRAME_REFUSED)
        http_refuse(c);
    else
        recv_end_input(c, st == FRAME_TOO_BIG ? CLOSE_TOO_BIG : CLOSE_BAD_FRAME);
}

void
recv_end_input(struct conn *c, enum close_reason why)
{
    if (why != CLOSE_NONE)   /* (NONE: an HTTP request without keep-alive) */
        conn_note_reason(c, why, 0);
    if (why == CLOSE_HANDLER)
        c->handler_failed = 1;
    c->bad_input = 1;
    c->big = 0;
    c->rneed = 0;
    if (!c->direct)
        c->rlen = c->rstart;   /* (a direct receive's bytes: on_direct) */
    mark_dirty(c->w, c);
    recv_update(c);
}

int
recv_frame(struct worker *w, struct conn *c)
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
        st = frame_next(f, c, c->rbuf + c->rstart, avail, c->rscan, &fr);
        if (st < 0)
            break;
        if (st == FRAME_NEED) {
            c->rscan = fr.scanned;
            c->rneed = fr.need;
            break;
        }
        int pin = 1;
        if (c->http != NULL || c->resp != NULL) {
            if ((pin = take_request(c, NULL, c->rstart, fr.len)) < 0)
                goto nomem;
        } else if (w->srv->cfg.native_echo) {
            echoed++;
            pin = 0;
        } else if (emit(c, NULL, c->rstart + fr.off, fr.len) < 0) {
            goto nomem;
        }
        if (pin && !c->rbuf_pinned) {
            if (grow_array(&w->compact, &w->compact_cap, w->ncompact + 1,
                           sizeof(*w->compact)) < 0)
                goto nomem;
            c->rbuf_pinned = 1;
            conn_ref(c);
            w->compact[w->ncompact++] = c;
        }
        c->rstart += fr.consumed;
        c->rscan = 0;
        if (request_ends_input(c))
            return 0;
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

int
recv_room(struct conn *c, size_t n)
{
    return rbuf_room(c, n, 0);
}

/* TLS: the records' plaintext goes to rbuf (tls.c), framed there. */
static void
on_tls_recv(struct worker *w, struct conn *c, const uint8_t *p, size_t len)
{
    if (tls_on_input(c, p, len) == 1)
        return;   /* the handshake goes on */
    /* (-1: the input is over, but what came before it is framed) */
    if (c->state != CONN_OPEN)
        return;
    if (!c->paused && !c->deferred && recv_frame(w, c) < 0)
        return;
    recv_update(c);   /* paused, deferred (framed when the replies drain,
                         or next turn), or the peer's close_notify */
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
    if (c->tls != NULL) {
        on_tls_recv(w, c, p, len);
        return;
    }
    if (c->paused || c->deferred)
        goto later;
    /* First finish the message already buffered, copying only its bytes. */
    while (c->rlen != c->rstart && len > 0) {
        size_t take = take_for_partial(f, c, p, len);
        if (rbuf_append(c, p, take, c->rneed) < 0)
            goto nomem;
        p += take;
        len -= take;
        if (recv_frame(w, c) < 0 || c->bad_input)
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
        if ((st = frame_next(f, c, p, len, 0, &fr)) != FRAME_OK)
            break;
        if (c->http != NULL || c->resp != NULL) {
            int r = take_request(c, p, 0, fr.len);
            if (r < 0 || (r == 1 && hold_buffer(w, ev->buf_id, &held) < 0))
                goto nomem;
        } else if (w->srv->cfg.native_echo) {
            echoed++;
        } else if (hold_buffer(w, ev->buf_id, &held) < 0 ||
                   emit(c, p + fr.off, 0, fr.len) < 0) {
            goto nomem;
        }
        p += fr.consumed;
        len -= fr.consumed;
        if (request_ends_input(c))
            return;   /* what follows is discarded */
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
    recv_update(c);
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
    if (recv_frame(w, c) < 0)
        return;
    if (n < DIRECT_SMALL && c->rstart == c->rlen)
        c->big = 0;   /* small messages again: the engine's buffers */
}

void
recv_resume(struct conn *c)
{
    if (c->state == CONN_OPEN && recv_frame(c->w, c) == 0)
        recv_update(c);
}

void
recv_on_event(struct worker *w, struct conn *c, const struct io_event *ev)
{
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
        if (c->tls != NULL)
            tls_on_fin(c);
        c->peer_eof = 1;
        mark_dirty(w, c);   /* close once every reply owed is out */
    } else if (ev->res < 0 && !conn_cancelled(c, ev->res)) {
        conn_fail(c, CLOSE_RESET, -ev->res);
    } else {
        recv_update(c);   /* stopped; resumed since? */
    }
    conn_op_done(c);
}
