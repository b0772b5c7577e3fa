/* file.c - file requests and send_file.
 *
 * A file request (struct file_req, filled by the dispatch layer) runs on
 * its file's worker: io_uring's file operations, or the epoll engine's
 * thread pool.  Its final result joins that worker's batch (ENTRY_FILE),
 * so its callback runs with the messages.  A short write goes on for the
 * rest where it belongs; appends get their offsets at submission.
 *
 * send_file (struct xfer): a range of a file streamed to a connection in
 * XFER_CHUNK reads, one in flight, the next only while fewer than
 * XFER_MARK bytes wait to be sent, so memory stays bounded whatever the
 * size.  Messages sent meanwhile wait behind the file (hbuf). */
#include "core/internal.h"

#define XFER_CHUNK (256 * 1024)   /* send_file reads this much at a time */
#define XFER_MARK (1024 * 1024)   /* ...while fewer bytes than this wait */

static void xfer_on_read(struct worker *w, struct xfer *x, long res);

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
    w->batch[w->nbatch++] = (struct entry){NULL, r, NULL, 0, 0, ENTRY_FILE, 0};
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

void
file_on_event(struct worker *w, struct file_req *r, const struct io_event *ev)
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

/* (The mailbox is a stack, newest first.) */
void
file_start_mail(struct worker *w, struct file_req *r)
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
        conn_post(c);
    pthread_mutex_unlock(&c->lock);
    if (local)
        xfer_attach(c);
    return 0;
}

void
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
        mark_dirty(c->w, c);   /* send_flush() pumps it */
}

/* Finishes once everything read has been handed to the kernel. */
void
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
    mark_dirty(w, c);   /* send_flush() sends it and pumps the next read */
}

/* Messages held behind it join the send queue. */
void
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
        w->batch[w->nbatch++] = (struct entry){NULL, &x->r, NULL, 0, 0, ENTRY_XFER, 0};
    /* else: out of memory for the notice; the dispatch layer's data leaks
     * rather than touch freed memory. */
    if (c->state <= CONN_DRAINING)
        mark_dirty(w, c);
    conn_unref(c);
}
