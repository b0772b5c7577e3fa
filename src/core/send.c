/* send.c - sending: the send queue and its double buffer, sends by
 * reference, flushing to the engine, backpressure.
 *
 * The queue: users append to obuf under c->lock, from any thread; the
 * worker swaps it with sbuf, which the engine owns while a send is in
 * flight (send_busy).  A bytes object of SEND_REF_MIN or more is queued
 * as a reference (struct sref) between the flat bytes, not copied, and the
 * two go out in one gathered send.  Backpressure: once the unsent bytes
 * pass max_unsent the connection stops receiving (paused) until they are
 * back to half; sends past unsent_limit close it (overflow). */
#include "core/internal.h"

#include <sys/socket.h>

/* A message at least this big, handed over with an owner, is sent from
 * the caller's memory (struct sref) instead of being copied. */
#define SEND_REF_MIN (32 * 1024)

static int send_backpressure(struct conn *c, size_t unsent);

size_t
conn_unsent(struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    size_t n = conn_unsent_locked(c);
    pthread_mutex_unlock(&c->lock);
    return n;
}

int
conn_writable(struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    int ok = conn_unsent_locked(c) <= c->w->srv->cfg.max_unsent;
    if (!ok)
        c->drain_owed = 1;   /* it was told to wait: owed an ENTRY_DRAIN */
    pthread_mutex_unlock(&c->lock);
    return ok;
}

/* A frame's header or trailer (0 to 8 bytes): the usual sizes as one
 * move the compiler inlines, not a memcpy call per message. */
static void
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
void
send_counted(struct conn *c, size_t n)
{
    c->last_active = c->w->now;
    stat_add(&c->w->srv->stats.bytes_out, (uint64_t)n);
}

/* On the worker thread, after bytes joined obuf: flush them this turn, and
 * pause at once, not after the batch (a batch can hold many messages, each
 * with a big reply). */
void
send_queued_here(struct conn *c, size_t unsent)
{
    mark_dirty(c->w, c);
    if (!c->paused && unsent > c->w->srv->cfg.max_unsent)
        send_backpressure(c, unsent);
}

int
conn_send(struct conn *c, const void *data, size_t len, int frame,
          void *owner)
{
    struct worker *w = c->w;
    uint8_t hdr[8], trl[8];
    size_t hlen = 0, tlen = 0;

    const struct framing *f = &w->srv->cfg.framing;
    if (frame && framing_wrap(f, len, hdr, &hlen, trl, &tlen) != FRAME_OK)
        return -EMSGSIZE;
    if (frame && f->kind == FRAMING_DELIM &&
        memmem(data, len, f->delim, f->delim_len) != NULL)
        return -EILSEQ;   /* the peer would see two messages, or more */
    pthread_mutex_lock(&c->lock);
    if (c->state > CONN_OPEN) {
        pthread_mutex_unlock(&c->lock);
        return -EPIPE;
    }
    int local = on_worker_thread(w);
    size_t queued = conn_unsent_locked(c), add = hlen + len + tlen;
    if (queued + c->hlen + add > w->srv->cfg.unsent_limit) {
        /* The peer takes our bytes far slower than we queue them: close
         * it (counted and logged) rather than buffer without bound. */
        if (!local) {
            c->close_req = 2;
            c->close_why = CLOSE_OVERFLOW;
            conn_post(c);
        }
        pthread_mutex_unlock(&c->lock);
        if (local)
            conn_fail(c, CLOSE_OVERFLOW, 0);
        return -ENOBUFS;
    }
    /* While a file streams, later messages wait behind it (copied). */
    int held = c->xfer_new != NULL || c->xfer_busy;
    int ref = owner != NULL && len >= SEND_REF_MIN && !held && c->tls == NULL;
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
        conn_post(c);
    size_t unsent = held ? queued : queued + add;   /* (hbuf is not sent yet) */
    if (unsent > w->srv->cfg.max_unsent)
        c->drain_owed = 1;   /* unwritable now: whoever sent is told later */
    pthread_mutex_unlock(&c->lock);
    if (local)
        send_queued_here(c, unsent);
    stat_add(&w->srv->stats.msgs_out, 1);
    return ref;
}

/* Pause receiving above max_unsent; resume at half.  Returns 1 when it
 * resumed: the input held meanwhile is then the caller's to frame
 * (recv_resume()), outside whatever sending it was doing. */
static int
send_backpressure(struct conn *c, size_t unsent)
{
    size_t hi = c->w->srv->cfg.max_unsent;
    unsent += atomic_load_explicit(&c->held, memory_order_relaxed);
    if (!c->paused && unsent > hi) {
        c->paused = 1;
        stat_add(&c->w->srv->stats.pauses, 1);
        recv_update(c);
    } else if (c->paused && unsent <= hi / 2) {
        c->paused = 0;
        return 1;
    }
    return 0;
}

void
conn_held_done(struct conn *c, size_t len)
{
    size_t cost = held_cost(len), half = c->w->srv->cfg.max_unsent / 2;
    size_t before = atomic_fetch_sub_explicit(&c->held, cost,
                                              memory_order_relaxed);
    /* Back to half: the worker looks again (send_settle), and resumes
     * receiving if the rest allows.  Once per crossing, not per message;
     * the mailbox orders this count before its look. */
    if (before > half && before - cost <= half)
        conn_post(c);
}

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
void
send_refs_drop(struct conn *c)
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
    if (c->tls != NULL) {
        tls_sent(c, n);   /* ciphertext */
        return;
    }
    set_sent_off(c, sent_off(c) + n);
    send_counted(c, n);
    if (c->refs_out)
        refs_sent(c);
}

int
send_took(struct conn *c, long r)
{
    if (r >= 0) {
        sent(c, (size_t)r);
    } else if (r == -EINPROGRESS) {
        c->send_busy = 1;
        c->inflight++;
    } else {
        conn_fail(c, CLOSE_RESET, (int)-r);
        return -1;
    }
    return 0;
}

void
send_advance(struct conn *c, size_t n)
{
    set_sent_off(c, sent_off(c) + n);
}

int
send_swap(struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    struct refq *q = c->rq;
    if (c->olen == 0 && (q == NULL || q->no == 0)) {
        pthread_mutex_unlock(&c->lock);
        return 0;
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
    return 1;
}

/* Hand the queue to the engine until all of it is sent or a send is in
 * flight (swapping obuf in when sbuf is done).  0, or -1 if it failed. */
static int
send_out(struct conn *c)
{
    struct worker *w = c->w;
    if (c->tls != NULL)
        return tls_send_out(c);
    while (c->state <= CONN_DRAINING && !c->send_busy) {
        if (sent_off(c) == c->slen && !send_swap(c))
            break;
        size_t soff = sent_off(c);
        long r = c->refs_out
                     ? send_gathered(c)
                     : w->ops->send(w->be, &c->h, c->sbuf + soff,
                                    c->slen - soff);
        if (send_took(c, r) < 0)
            return -1;
    }
    return 0;
}

/* The unsent count after a flush: owed on_drain notices go out, receiving
 * pauses or resumes (a resumed connection frames the input it held, whose
 * native echo may queue more: counted again). */
static size_t
send_settle(struct conn *c)
{
    struct worker *w = c->w;
    pthread_mutex_lock(&c->lock);
    size_t unsent = conn_unsent_locked(c);
    int drained = c->drain_owed && unsent <= w->srv->cfg.max_unsent / 2;
    if (drained)
        c->drain_owed = 0;
    pthread_mutex_unlock(&c->lock);
    if (drained && w->srv->cfg.want_drain && c->state == CONN_OPEN)
        push_entry(w, c, ENTRY_DRAIN, NULL, 0, 0);
    if (send_backpressure(c, unsent)) {
        recv_resume(c);
        pthread_mutex_lock(&c->lock);
        unsent = conn_unsent_locked(c);
        pthread_mutex_unlock(&c->lock);
    }
    return unsent;
}

void
send_flush(struct conn *c)
{
    if (c->state == CONN_CONNECTING)
        return;   /* sent once connected */
    if (send_out(c) < 0 || c->state > CONN_DRAINING)
        return;
    size_t unsent = send_settle(c);
    if (c->xfer != NULL)
        xfer_pump(c, unsent);   /* closing waits for the file (its end
                                   marks c dirty) */
    else if (unsent == 0 && c->state <= CONN_DRAINING)
        conn_output_done(c);
}

void
send_on_event(struct worker *w, struct conn *c, const struct io_event *ev)
{
    c->send_busy = 0;
    if (ev->res >= 0) {
        sent(c, (size_t)ev->res);
        mark_dirty(w, c);
    } else if (!conn_cancelled(c, ev->res)) {
        conn_fail(c, CLOSE_RESET, -ev->res);
    }
    conn_op_done(c);
}
