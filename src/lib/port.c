/* port.c - the completion port core (see port.h): one mutex guards a ring
 * buffer of packets (grows by doubling, never shrinks: no allocation per
 * packet in steady state), a LIFO stack of sleeping waits (each with its own
 * CLOCK_MONOTONIC condition variable, so a post wakes exactly one thread),
 * the list of every wait in progress (for port_visit) and the ids of the
 * threads that count as running (at most `concurrency` of them).
 *
 * Invariant (outside the lock): if packets are queued and a wait sleeps, then
 * running == concurrency (or the port is closed).  Packets are handed to a
 * sleeping wait by whoever frees a slot or posts (handoff()); the chosen
 * wait is popped, filled and counted as running before it even wakes up, so
 * the state after post()/leave() returns is deterministic.
 *
 * Also the per-thread lists behind port_key_create()/port_track(): which
 * ports a thread must leave when it exits, and the reference counts that
 * keep a port's memory valid until the last such thread has left it. */
#include "lib/port.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { W_NEW, W_ACTIVE, W_STACKED, W_DONE };

struct port {
    pthread_mutex_t mu;
    pthread_condattr_t cattr;
    struct port_packet *ring;   /* cap is a power of two */
    size_t head, count, cap;
    struct port_wait *top;      /* LIFO stack via ->below */
    struct port_wait *atop;     /* async waits' LIFO stack, via ->below */
    struct port_wait *active;   /* every wait in progress via ->next/->prev */
    unsigned nwaiters;
    unsigned concurrency, nrunning;
    int closed;
    /* The owner's reference plus one per tracking thread.  Atomic, not
     * under mu: the last release destroys mu. */
    atomic_uint refs;
    pthread_t running[];        /* nrunning <= concurrency */
};

/* A thread's key value: the ports it tracks, each holding a reference.
 * Only that thread touches it (port_track, and the key's destructor, which
 * runs in the exiting thread), so it needs no lock. */
struct port_thread {
    struct port **ports;
    size_t n, cap;
};

static void
port_fatal(const char *what, int rc)
{
    fprintf(stderr, "iocport: %s failed: %s\n", what, strerror(rc));
    abort();
}

/* Calls that can only fail on a programming error (EINVAL, EDEADLK...). */
#define CHECK(call) do { int rc_ = (call); \
    if (rc_ != 0) port_fatal(#call, rc_); } while (0)

static void lock(struct port *p) { CHECK(pthread_mutex_lock(&p->mu)); }
static void unlock(struct port *p) { CHECK(pthread_mutex_unlock(&p->mu)); }

struct port *
port_create(unsigned concurrency, unsigned capacity_hint)
{
    if (concurrency == 0 || concurrency > PORT_MAX_CONCURRENCY) {
        errno = EINVAL;
        return NULL;
    }
    struct port *p = calloc(1, sizeof *p + concurrency * sizeof(pthread_t));
    if (p == NULL)
        return NULL;
    size_t cap = 16;
    while (cap < capacity_hint && cap < ((size_t)1 << 30))
        cap *= 2;
    p->ring = malloc(cap * sizeof *p->ring);
    if (p->ring == NULL) {
        free(p);
        errno = ENOMEM;
        return NULL;
    }
    p->cap = cap;
    p->concurrency = concurrency;
    atomic_init(&p->refs, 1);
    int rc = pthread_mutex_init(&p->mu, NULL);
    if (rc != 0)
        goto fail;
    rc = pthread_condattr_init(&p->cattr);
    if (rc != 0) {
        pthread_mutex_destroy(&p->mu);
        goto fail;
    }
    rc = pthread_condattr_setclock(&p->cattr, CLOCK_MONOTONIC);
    if (rc != 0) {
        pthread_condattr_destroy(&p->cattr);
        pthread_mutex_destroy(&p->mu);
        goto fail;
    }
    return p;
fail:
    free(p->ring);
    free(p);
    errno = rc;
    return NULL;
}

void
port_release(struct port *p)
{
    if (p == NULL)
        return;
    /* acq_rel: whoever frees sees every other holder's last writes. */
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
        return;
    /* Values are the owner's to drop (e.g. only under the GIL): one left
     * here would leak, and a wait in progress would use freed memory. */
    if (p->active != NULL || p->count != 0)
        port_fatal("port_release with a wait in progress or packets queued",
                   EBUSY);
    free(p->ring);
    CHECK(pthread_condattr_destroy(&p->cattr));
    CHECK(pthread_mutex_destroy(&p->mu));
    free(p);
}

/* ---- ring buffer (under the lock) ---- */

static int
ring_reserve(struct port *p, size_t need)
{
    if (need <= p->cap)
        return 0;
    size_t cap = p->cap;
    while (cap < need) {
        if (cap > SIZE_MAX / 2 / sizeof *p->ring)
            return -ENOMEM;
        cap *= 2;
    }
    struct port_packet *r = malloc(cap * sizeof *r);
    if (r == NULL)
        return -ENOMEM;
    size_t first = p->cap - p->head;
    if (first > p->count)
        first = p->count;
    memcpy(r, p->ring + p->head, first * sizeof *r);
    memcpy(r + first, p->ring, (p->count - first) * sizeof *r);
    free(p->ring);
    p->ring = r;
    p->cap = cap;
    p->head = 0;
    return 0;
}

static int
ring_take(struct port *p, struct port_packet *out, int max)
{
    int n = 0;
    while (n < max && p->count > 0) {
        out[n++] = p->ring[p->head];
        p->head = (p->head + 1) & (p->cap - 1);
        p->count--;
    }
    return n;
}

/* ---- running threads, waits (under the lock) ---- */

static void
running_remove(struct port *p, pthread_t self)
{
    for (unsigned i = 0; i < p->nrunning; i++) {
        if (pthread_equal(p->running[i], self)) {
            p->running[i] = p->running[--p->nrunning];
            return;
        }
    }
}

static void
running_add(struct port *p, pthread_t self)
{
    /* Callers check nrunning < concurrency. */
    p->running[p->nrunning++] = self;
}

static void
stack_remove(struct port *p, struct port_wait *w)
{
    struct port_wait **top = w->is_async ? &p->atop : &p->top;
    for (struct port_wait **pp = top; *pp != NULL; pp = &(*pp)->below) {
        if (*pp == w) {
            *pp = w->below;
            w->below = NULL;
            p->nwaiters--;
            return;
        }
    }
}

static void
active_remove(struct port *p, struct port_wait *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        p->active = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

/* Wake a wait: its thread, or an async wait's eventfd.  The eventfd's
 * counter only overflows (EAGAIN) when it is already signalled. */
static void
wake(struct port_wait *w)
{
    if (!w->is_async) {
        CHECK(pthread_cond_signal(&w->cond));
        return;
    }
    uint64_t one = 1;
    while (write(w->notify_fd, &one, sizeof one) < 0) {
        if (errno == EAGAIN)
            break;
        if (errno != EINTR)
            port_fatal("write(eventfd)", errno);
    }
}

/* Give queued packets to sleeping waits, most recent first: threads while
 * slots are free (the chosen one counts as running from here), then async
 * waits, which the bound does not hold back. */
static void
handoff(struct port *p)
{
    while (!p->closed && p->count > 0) {
        struct port_wait **top;
        if (p->top != NULL && p->nrunning < p->concurrency)
            top = &p->top;
        else if (p->atop != NULL)
            top = &p->atop;
        else
            break;
        struct port_wait *w = *top;
        *top = w->below;
        w->below = NULL;
        p->nwaiters--;
        w->state = W_ACTIVE;
        w->n = ring_take(p, w->out, w->max);
        if (!w->is_async)
            running_add(p, w->self);
        wake(w);
    }
}

/* ---- public API ---- */

int
port_post(struct port *p, const struct port_packet *pk)
{
    int rc = 0;
    lock(p);
    if (p->closed) {
        rc = -EPIPE;
    } else if ((rc = ring_reserve(p, p->count + 1)) == 0) {
        p->ring[(p->head + p->count) & (p->cap - 1)] = *pk;
        p->count++;
        handoff(p);
    }
    unlock(p);
    return rc;
}

int
port_wait_init(struct port *p, struct port_wait *w, struct port_packet *out,
               int max)
{
    memset(w, 0, sizeof *w);
    if (max < 1)
        return -EINVAL;
    int rc = pthread_cond_init(&w->cond, &p->cattr);
    if (rc != 0)
        return -rc;
    w->out = out;
    w->max = max;
    w->self = pthread_self();
    w->state = W_NEW;
    w->notify_fd = -1;
    return 0;
}

int
port_wait_async(struct port *p, struct port_wait *w, int notify_fd)
{
    int rc = 0;
    w->is_async = 1;
    lock(p);
    if (p->closed) {
        rc = -EPIPE;
    } else if (p->count > 0) {
        w->n = ring_take(p, w->out, w->max);
        rc = w->n;
    } else if (notify_fd < 0) {
        rc = 0;
    } else {
        w->notify_fd = notify_fd;
        w->below = p->atop;
        p->atop = w;
        p->nwaiters++;
        w->state = W_STACKED;
    }
    if (rc > 0 || w->state == W_STACKED) {
        w->next = p->active;   /* port_visit sees what it holds */
        if (p->active != NULL)
            p->active->prev = w;
        p->active = w;
        if (rc > 0)
            w->state = W_ACTIVE;
    }
    unlock(p);
    return rc;
}

int
port_wait_poll(struct port *p, struct port_wait *w)
{
    lock(p);
    int rc = w->n > 0 ? w->n : p->closed ? -EPIPE : 0;
    unlock(p);
    return rc;
}

static void
deadline_after(struct timespec *ts, int64_t ns)
{
    CHECK(clock_gettime(CLOCK_MONOTONIC, ts) == 0 ? 0 : errno);
    ts->tv_sec += (time_t)(ns / 1000000000);
    ts->tv_nsec += (long)(ns % 1000000000);
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

int
port_get(struct port *p, struct port_wait *w, int64_t timeout_ns)
{
    struct timespec deadline;
    int rc;
    if (timeout_ns > 0)
        deadline_after(&deadline, timeout_ns);
    lock(p);
    if (w->state == W_NEW) {
        running_remove(p, w->self);
        w->next = p->active;
        if (p->active != NULL)
            p->active->prev = w;
        p->active = w;
        w->state = W_ACTIVE;
    }
    for (;;) {
        if (w->n > 0) {
            /* Handed packets: take whatever else is queued too (this
             * thread already counts as running). */
            if (w->n < w->max && !p->closed)
                w->n += ring_take(p, w->out + w->n, w->max - w->n);
            rc = w->n;
            break;
        }
        if (p->closed) {
            rc = -EPIPE;
            break;
        }
        if (w->state == W_ACTIVE) {
            if (p->count > 0 && p->nrunning < p->concurrency) {
                w->n = ring_take(p, w->out, w->max);
                running_add(p, w->self);
                continue;
            }
            if (timeout_ns == 0) {
                rc = 0;
                break;
            }
            w->below = p->top;
            p->top = w;
            p->nwaiters++;
            w->state = W_STACKED;
        }
        /* W_STACKED: asleep until handoff() or close pops us. */
        if (timeout_ns == 0) {
            rc = 0;
            break;
        }
        if (timeout_ns < 0) {
            CHECK(pthread_cond_wait(&w->cond, &p->mu));
        } else {
            int r = pthread_cond_timedwait(&w->cond, &p->mu, &deadline);
            if (r == ETIMEDOUT) {
                if (w->n == 0 && !p->closed) {
                    rc = 0;     /* keep our place in the stack */
                    break;
                }
            } else if (r != 0) {
                port_fatal("pthread_cond_timedwait", r);
            }
        }
        /* Loop: a wakeup may be spurious. */
    }
    unlock(p);
    return rc;
}

static void
wait_finish(struct port *p, struct port_wait *w)
{
    if (w->state == W_STACKED)
        stack_remove(p, w);
    if (w->state != W_NEW && w->state != W_DONE)
        active_remove(p, w);
    w->state = W_DONE;
}

int
port_wait_done(struct port *p, struct port_wait *w)
{
    lock(p);
    wait_finish(p, w);
    int n = w->n;
    unlock(p);
    CHECK(pthread_cond_destroy(&w->cond));
    return n;
}

int
port_wait_cancel(struct port *p, struct port_wait *w)
{
    int left = 0;
    lock(p);
    wait_finish(p, w);
    if (w->n > 0) {
        if (!w->is_async)
            running_remove(p, w->self);
        if (p->closed) {
            left = w->n;        /* nobody can get them any more */
        } else if (ring_reserve(p, p->count + (size_t)w->n) == 0) {
            for (int i = w->n - 1; i >= 0; i--) {
                p->head = (p->head - 1) & (p->cap - 1);
                p->ring[p->head] = w->out[i];
                p->count++;
            }
        } else {
            left = w->n;
        }
        w->n = 0;
        handoff(p);
    }
    unlock(p);
    CHECK(pthread_cond_destroy(&w->cond));
    return left;
}

void
port_leave(struct port *p)
{
    lock(p);
    running_remove(p, pthread_self());
    handoff(p);
    unlock(p);
}

void
port_close(struct port *p)
{
    lock(p);
    p->closed = 1;
    while (p->top != NULL) {
        struct port_wait *w = p->top;
        p->top = w->below;
        w->below = NULL;
        w->state = W_ACTIVE;
        CHECK(pthread_cond_signal(&w->cond));
    }
    while (p->atop != NULL) {
        struct port_wait *w = p->atop;
        p->atop = w->below;
        w->below = NULL;
        w->state = W_ACTIVE;
        wake(w);
    }
    p->nwaiters = 0;
    unlock(p);
}

int
port_drain(struct port *p, struct port_packet *out, int max)
{
    lock(p);
    int n = ring_take(p, out, max);
    unlock(p);
    return n;
}

int
port_visit(struct port *p, int (*fn)(void *value, void *arg), void *arg)
{
    int r = 0;
    lock(p);
    for (size_t i = 0; r == 0 && i < p->count; i++)
        r = fn(p->ring[(p->head + i) & (p->cap - 1)].value, arg);
    for (struct port_wait *w = p->active; r == 0 && w != NULL; w = w->next)
        for (int i = 0; r == 0 && i < w->n; i++)
            r = fn(w->out[i].value, arg);
    unlock(p);
    return r;
}

void
port_stats(struct port *p, struct port_stats *out)
{
    lock(p);
    out->concurrency = p->concurrency;
    out->running = p->nrunning;
    out->waiters = p->nwaiters;
    out->queued = p->count;
    out->closed = p->closed;
    unlock(p);
}

/* ---- threads that exit ---- */

/* The key's destructor: runs in the exiting thread (after its Python thread
 * state is gone, so it must not and does not touch Python), where
 * pthread_self() is still that thread's id, which port_leave() removes from
 * running[].  It also runs for ports whose owner has gone: they are closed,
 * so leaving hands nothing out, and the release frees them. */
static void
thread_exit(void *arg)
{
    struct port_thread *t = arg;
    for (size_t i = 0; i < t->n; i++) {
        port_leave(t->ports[i]);
        port_release(t->ports[i]);
    }
    free(t->ports);
    free(t);
}

int
port_key_create(pthread_key_t *key)
{
    return -pthread_key_create(key, thread_exit);
}

void
port_key_delete(pthread_key_t key)
{
    /* Taken before the delete, which makes it unreachable; the deleted key
     * will not run thread_exit for it. */
    struct port_thread *mine = pthread_getspecific(key);
    CHECK(pthread_key_delete(key));
    if (mine != NULL)
        thread_exit(mine);
}

static int
is_closed(struct port *p)
{
    lock(p);
    int closed = p->closed;
    unlock(p);
    return closed;
}

int
port_track(pthread_key_t key, struct port *p)
{
    struct port_thread *t = pthread_getspecific(key);
    if (t != NULL) {
        /* The common case: already tracked.  A pointer match is the same
         * port: a tracked port cannot be freed and its memory reused. */
        for (size_t i = 0; i < t->n; i++)
            if (t->ports[i] == p)
                return 0;
    } else {
        t = calloc(1, sizeof *t);
        if (t == NULL)
            return -ENOMEM;
        int rc = pthread_setspecific(key, t);
        if (rc != 0) {
            free(t);
            return -rc;
        }
    }
    /* Forget closed ports: once its owner has gone a port is closed, and
     * keeping it until this thread exits would pile up dead ports in a
     * long-lived thread.  A closed port hands out nothing, so leaving it
     * now rather than at exit only changes its `running` count. */
    size_t kept = 0;
    for (size_t i = 0; i < t->n; i++) {
        struct port *q = t->ports[i];
        if (is_closed(q)) {
            port_leave(q);
            port_release(q);
        } else {
            t->ports[kept++] = q;
        }
    }
    t->n = kept;
    if (t->n == t->cap) {
        size_t cap = t->cap != 0 ? 2 * t->cap : 4;
        struct port **ports = realloc(t->ports, cap * sizeof *ports);
        if (ports == NULL)
            return -ENOMEM;
        t->ports = ports;
        t->cap = cap;
    }
    /* Relaxed: the caller's own reference keeps p alive meanwhile. */
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    t->ports[t->n++] = p;
    return 0;
}
