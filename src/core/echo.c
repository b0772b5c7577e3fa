/* echo.c - native echo: every whole frame goes back as it came, framing
 * included, without calling Python (the server's ceiling, and a C dispatch
 * for tests).  A run of whole frames goes back in one piece: a large one
 * is sent at once from where it was received when nothing else waits to
 * go (send_now, as the plain C server does); otherwise the assembly buffer
 * itself becomes the send buffer when it can, else one copy. */
#include "core/internal.h"

/* Native echo sends a run of frames at least this big at once, from where
 * it was received, when nothing else waits to go: one send() costs less
 * than copying that much into obuf.  Smaller runs wait for the turn's
 * batched sends. */
#define ECHO_NOW_MIN (32 * 1024)

int
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
        k = c->w->ops->send_now(c->w->be, &c->h, p, len);
        if (k < 0) {
            if (k != -EAGAIN)
                err = (int)-k;
            k = 0;
        } else if ((size_t)k < len) {
            rest = len - (size_t)k;
            if (reserve(&c->obuf, &c->ocap, rest) == 0) {
                memcpy(c->obuf, (const char *)p + k, rest);   /* olen was 0 */
                c->olen = rest;
                unsent = conn_unsent_locked(c);
            } else {
                err = ENOMEM;
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (k > 0)
        send_counted(c, (size_t)k);
    if (err != 0) {
        conn_fail(c, CLOSE_RESET, err);
        return -1;
    }
    if (rest != 0)
        send_queued_here(c, unsent);
    return k + (long)rest;
}

/* rbuf[from..rstart) holds n whole frames, sent back as they came, in one
 * piece.  A large run goes to the socket at once if nothing
 * waits; what it does not take is queued: when it begins rbuf and nothing
 * waits in obuf, rbuf becomes obuf instead of being copied into it (a
 * partial message after it, if the smaller part, moves to the new rbuf). */
int
echo_rbuf(struct conn *c, size_t from, size_t n)
{
    size_t len = c->rstart - from, tail = c->rlen - c->rstart;
    if (len >= ECHO_NOW_MIN && c->tls == NULL) {
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
    size_t unsent = conn_unsent_locked(c);
    pthread_mutex_unlock(&c->lock);
    send_queued_here(c, unsent);
    return echo_queue(c, NULL, 0, n);
}
