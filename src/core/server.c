/* server.c - the server: its workers started and stopped, its listeners,
 * and new connections, accepted or connected.
 *
 * Every worker keeps an accept armed on every listener; whichever the
 * kernel wakes, a new connection goes to the least loaded worker (handed
 * over through its mailbox when that is another one).  Outgoing
 * connections (dial_*) try their addresses in turn, each with a share of
 * the time left.  Stream sockets of every family the peer union holds are
 * served alike: TCP over IPv4 or IPv6, and Unix sockets. */
#include "core/internal.h"

#include "lib/slab.h"

#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#define ACCEPT_RETRY_MS 100   /* pause after EMFILE & co, so accept never spins */

static int server_setup(struct server *s);
static void stop_workers(struct server *s);

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

/* Until conn_finish_close(), or server_unassign() if it never starts. */
void
server_assign(struct worker *w)
{
    atomic_fetch_add_explicit(&w->load, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->opened, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->srv->nconns, 1, memory_order_relaxed);
}

void
server_unassign(struct worker *w)
{
    atomic_fetch_sub_explicit(&w->load, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->srv->nconns, 1, memory_order_relaxed);
}

static void
set_nodelay(int fd)
{
    int one = 1;
    /* Best effort: not every socket type has Nagle's algorithm. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Its first receive, and the dispatch layer hears of it. */
void
accept_adopt(struct worker *w, struct conn *c)
{
    struct server *s = w->srv;
    c->adopt_req = 0;
    if (atomic_load_explicit(&w->stopping, memory_order_acquire)) {
        c->state = CONN_DEAD;
        close(c->h.fd);   /* handed over as the server stops */
        stat_add(&s->stats.refused, 1);
        server_unassign(w);
        conn_unref(c);
        return;
    }
    conn_link(w, c);
    c->state = CONN_OPEN;
    if (c->tls == NULL && s->dops != NULL && !s->cfg.native_echo &&
        s->cfg.want_open)
        push_entry(w, c, ENTRY_OPEN, NULL, 0, 0);   /* TLS: once established */
    recv_start(c);
    if (c->tls != NULL && c->state == CONN_OPEN)
        tls_start(c);
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
        conn_post(c);
        pthread_mutex_unlock(&c->lock);
        pthread_mutex_unlock(&s->start_lock);
        return;
    }
    pthread_mutex_unlock(&s->start_lock);
    close(c->h.fd);
    stat_add(&s->stats.refused, 1);
    server_unassign(c->w);
    conn_unref(c);
}

void
accept_arm(struct worker *w, struct listener_slot *ls)
{
    int rc = w->ops->accept_start(w->be, &ls->h);
    if (rc < 0)
        ls->retry_at = w->now + ACCEPT_RETRY_MS;
    else
        ls->armed = 1;
}

void
accept_on_event(struct worker *w, struct listener_slot *ls, const struct io_event *ev)
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
        const struct tls_config *tls = &s->ltls[ls - w->ls];
        if (c != NULL && ((tls->o != NULL && tls_attach(c, tls) < 0) ||
                          (s->cfg.framing.kind == FRAMING_HTTP &&
                           http_conn_init(c) < 0) ||
                          (s->cfg.framing.kind == FRAMING_RESP &&
                           resp_conn_init(c) < 0))) {
            conn_unref(c);
            c = NULL;
        }
        if (c == NULL) {
            close(fd);
            stat_add(&s->stats.accept_errors, 1);
        } else {
            server_assign(t);
            stat_add(&s->stats.accepted, 1);
            c->peerlen = sizeof(c->peer);
            if (getpeername(fd, &c->peer.sa, &c->peerlen) < 0 ||
                c->peerlen > sizeof(c->peer))
                c->peerlen = 0;   /* already reset (the first recv says so),
                                   * or too long: no address kept */
            if (t == w)
                accept_adopt(w, c);
            else
                hand_over(s, c);
        }
    }
    if (!ls->armed && !atomic_load(&w->stopping))
        accept_arm(w, ls);
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

void
dial_start(struct worker *w, struct conn *c)
{
    c->connect_req = 0;
    conn_link(w, c);
    dial_next(w, c);
}

void
dial_on_event(struct worker *w, struct conn *c, int res)
{
    struct dial *d = c->dial;
    if (c->state != CONN_CONNECTING) {
        /* Closed while connecting (close(), stop). */
        if (c->reason == CLOSE_NONE) {
            c->reason = CLOSE_CONNECT;
            c->err = ECANCELED;
        }
        conn_op_done(c);
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
        if (c->tls == NULL)
            push_entry(w, c, ENTRY_OPEN, NULL, 0, 0);   /* TLS: once established */
        recv_start(c);
        if (c->tls != NULL && c->state == CONN_OPEN)
            tls_start(c);
        mark_dirty(w, c);   /* what was sent while connecting */
        conn_op_done(c);
        return;
    }
    /* Only an expired attempt is cancelled while still connecting. */
    d->last_err = res == -ECANCELED ? ETIMEDOUT : -res;
    d->timed_out = 0;
    c->inflight--;
    dial_next(w, c);
}

/* Their final events try the next address; note the next deadline. */
void
dial_expire(struct worker *w)
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
               const struct tls_config *tls, void *py, struct conn **out)
{
    if (n == 0)
        return -EINVAL;
    for (unsigned i = 0; i < n; i++)
        if ((addrs[i].ss_family != AF_INET && addrs[i].ss_family != AF_INET6 &&
             addrs[i].ss_family != AF_UNIX) ||
            lens[i] > sizeof(((struct conn *)0)->peer))
            return -EINVAL;   /* TCP over IPv4 or IPv6, or a Unix socket */
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
            server_assign(w);
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
    if ((tls != NULL && tls_attach(c, tls) < 0) ||
        (s->cfg.framing.kind == FRAMING_RESP && resp_conn_init(c) < 0)) {
        server_unassign(c->w);
        pthread_mutex_unlock(&s->start_lock);
        conn_unref(c);   /* (frees the dial too) */
        return -ENOMEM;
    }
    c->connect_req = 1;
    c->state = CONN_CONNECTING;
    conn_attach(c, py);
    pthread_mutex_lock(&c->lock);
    conn_post(c);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_unlock(&s->start_lock);
    *out = c;
    return 0;
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

struct server *
server_create(const struct server_config *cfg,
              const struct dispatch_ops *dops, void *dispatch_arg)
{
    struct server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
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
    int rc = server_setup(s);
    if (rc < 0) {
        free(s);
        errno = -rc;
        return NULL;
    }
    return s;
}

int
server_add_listener(struct server *s, int fd, const struct tls_config *tls)
{
    if (s->running)
        return -EBUSY;
    if (s->nlfds >= MAX_LISTENERS)
        return -ENOSPC;
    s->ltls[s->nlfds] = tls != NULL ? *tls : (struct tls_config){0};
    s->ltls[s->nlfds].host = NULL;
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
    free(w->hmsgs);
    free(w->hfields);
    free(w->rmsgs);
    free(w->rargs);
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
    /* Nothing is accepted before every worker is ready and counted: a new
     * connection may go to any of them (least_loaded). */
    while (rc == 0 && !s->accepting_work &&
           !atomic_load_explicit(&w->stopping, memory_order_acquire))
        pthread_cond_wait(&s->start_cond, &s->start_lock);
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
    pthread_cond_broadcast(&s->start_cond);   /* the workers begin */
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
    for (unsigned i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        atomic_store_explicit(&w->stopping, 1, memory_order_release);
        if (w->be != NULL)
            w->ops->wake(w->be);
    }
    pthread_cond_broadcast(&s->start_cond);   /* (workers not yet begun) */
    pthread_mutex_unlock(&s->start_lock);
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
    free(s);
}

const char *
server_backend(struct server *s)
{
    return s->backend_name != NULL ? s->backend_name : s->cfg.ops->name;
}

int
server_fell_back(struct server *s)
{
    return s->fell_back;
}

int
server_on_worker(struct server *s)
{
    int yes = 0;
    pthread_mutex_lock(&s->start_lock);   /* workers[] is valid while set */
    for (unsigned i = 0; s->workers != NULL && i < s->nworkers; i++)
        yes |= on_worker_thread(&s->workers[i]);
    pthread_mutex_unlock(&s->start_lock);
    return yes;
}

void
server_get_stats(struct server *s, struct server_stats *out)
{
    const struct stats *st = &s->stats;
#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)
    out->connections = LD(s->nconns);
    out->accepted = LD(st->accepted);
    out->closed = LD(st->closed);
    out->msgs_in = LD(st->msgs_in);
    out->msgs_out = LD(st->msgs_out);
    out->bytes_in = LD(st->bytes_in);
    out->bytes_out = LD(st->bytes_out);
    out->accept_errors = LD(st->accept_errors);
    out->refused = LD(st->refused);
    out->pauses = LD(st->pauses);
    for (int i = 0; i < CLOSE_REASON_COUNT; i++)
        out->errors[i] = LD(st->errors[i]);
    out->ktls_tx = LD(st->ktls_tx);
    out->ktls_no_ulp = LD(st->ktls_no_ulp);
    out->ktls_unsupported = LD(st->ktls_unsupported);
#undef LD
}

int
server_worker_load(struct server *s, unsigned i, unsigned *live,
                   uint64_t *opened)
{
    int rc = -1;
    pthread_mutex_lock(&s->start_lock);
    if (s->accepting_work && i < s->nworkers) {
        *live = atomic_load_explicit(&s->workers[i].load, memory_order_relaxed);
        *opened = atomic_load_explicit(&s->workers[i].opened,
                                       memory_order_relaxed);
        rc = 0;
    }
    pthread_mutex_unlock(&s->start_lock);
    return rc;
}
