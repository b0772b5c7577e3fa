/* pool.c - the file thread pool (see pool.h).
 *
 * Owns POOL_THREADS native threads (started at the first request), and
 * two intrusive FIFO lists of handles linked through h->pool.next, under
 * one mutex: requests, and results waiting to be taken.  A thread takes a
 * request, runs the system call without the lock, puts the result on the
 * done list and, if that list was empty, calls the engine's wake().
 * Threads block every signal, so SIGXFSZ and friends go elsewhere. */
#include "io/pool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_THREADS 2

struct io_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;                  /* destroy(): threads exit */
    int nthreads;
    pthread_t threads[POOL_THREADS];
    struct io_handle *q_head, *q_tail;    /* requests */
    struct io_handle *d_head, *d_tail;    /* results */
    _Atomic unsigned ndone;               /* length of the done list */
    void (*wake)(void *arg);
    void *wake_arg;
};

static void
push(struct io_handle **head, struct io_handle **tail, struct io_handle *h)
{
    h->pool.next = NULL;
    if (*tail != NULL)
        (*tail)->pool.next = h;
    else
        *head = h;
    *tail = h;
}

static struct io_handle *
pop(struct io_handle **head, struct io_handle **tail)
{
    struct io_handle *h = *head;
    if (h != NULL) {
        *head = h->pool.next;
        if (*head == NULL)
            *tail = NULL;
    }
    return h;
}

static long
run(struct io_handle *h)
{
    struct io_pool_req *r = &h->pool;
    ssize_t n;
    do {
        switch (r->op) {
        case FILE_READ:
            n = pread(h->fd, r->buf, r->len, (off_t)r->off);
            break;
        case FILE_WRITE:
            n = pwrite(h->fd, r->buf, r->len, (off_t)r->off);
            break;
        case FILE_FSYNC:
            n = fsync(h->fd);
            break;
        default:
            n = fdatasync(h->fd);
            break;
        }
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : (long)n;
}

static void *
pool_main(void *arg)
{
    struct io_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->q_head == NULL)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stop)
            break;
        struct io_handle *h = pop(&p->q_head, &p->q_tail);
        pthread_mutex_unlock(&p->mu);

        long res = run(h);

        pthread_mutex_lock(&p->mu);
        h->pool.res = res;
        push(&p->d_head, &p->d_tail, h);
        if (atomic_fetch_add(&p->ndone, 1) == 0) {
            /* The engine takes the list down to empty, or keeps looking
             * at it before it blocks: only the first result must wake it. */
            pthread_mutex_unlock(&p->mu);
            p->wake(p->wake_arg);
            pthread_mutex_lock(&p->mu);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Start threads up to POOL_THREADS; 0 if at least one runs. */
static int
start_threads(struct io_pool *p)
{
    if (p->nthreads == POOL_THREADS)
        return 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);   /* inherited by threads */
    int err = 0;
    while (p->nthreads < POOL_THREADS) {
        err = pthread_create(&p->threads[p->nthreads], NULL, pool_main, p);
        if (err)
            break;
        p->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return p->nthreads > 0 ? 0 : -err;
}

struct io_pool *
io_pool_create(void (*wake)(void *arg), void *arg)
{
    struct io_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    int e = pthread_mutex_init(&p->mu, NULL);
    if (e == 0 && (e = pthread_cond_init(&p->cv, NULL)) != 0)
        pthread_mutex_destroy(&p->mu);
    if (e != 0) {
        free(p);
        errno = e;
        return NULL;
    }
    p->wake = wake;
    p->wake_arg = arg;
    return p;
}

void
io_pool_destroy(struct io_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int
io_pool_submit(struct io_pool *p, struct io_handle *h, int op, void *buf,
               size_t len, uint64_t off)
{
    if (h == NULL || h->fd < 0 || op < FILE_READ || op > FILE_FDATASYNC ||
        off > (uint64_t)INT64_MAX)
        return -EINVAL;
    pthread_mutex_lock(&p->mu);
    int rc = h->pool.busy ? -EBUSY : start_threads(p);
    if (rc == 0) {
        h->pooled = 1;
        h->pool.busy = 1;
        h->pool.op = op;
        h->pool.buf = buf;
        h->pool.len = len > IO_FILE_MAX_LEN ? IO_FILE_MAX_LEN : len;
        h->pool.off = off;
        push(&p->q_head, &p->q_tail, h);
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int
io_pool_take(struct io_pool *p, struct io_event *out, int max)
{
    int n = 0;
    if (max <= 0 || atomic_load(&p->ndone) == 0)
        return 0;
    pthread_mutex_lock(&p->mu);
    struct io_handle *h;
    while (n < max && (h = pop(&p->d_head, &p->d_tail)) != NULL) {
        atomic_fetch_sub(&p->ndone, 1);
        h->pool.busy = 0;
        out[n++] = (struct io_event){ .h = h, .res = (int32_t)h->pool.res,
                                      .op = IO_FILE, .more = 0 };
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}
