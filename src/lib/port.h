/* port.h - the completion port: a queue of packets that threads wait on.
 * Waiters are woken last-in-first-out; at most `concurrency` threads run
 * between two waits.  No sockets, no Python: the binding (py/port.c) keeps
 * Python objects alive through `value`.
 *
 * A get is a `struct port_wait` owned by the calling thread (on its stack)
 * from port_wait_init() to port_wait_done()/port_wait_cancel().  Between the
 * two it may call port_get() several times (e.g. in slices, to check for
 * signals) and keeps its place in the LIFO stack meanwhile.  Packets handed
 * to a wait stay visible to port_visit() until port_wait_done(), so a caller
 * that only runs port_visit/port_wait_done/port_post/port_close under one
 * lock (the GIL) sees every value exactly once at any moment.  port_leave()
 * needs no such lock (a thread's exit runs it without): its hand-off only
 * moves packets from the queue to a wait, under the port's own lock.
 *
 * A thread that exits stops counting as running, as on Windows: the
 * embedder owns a pthread key (port_key_create) and registers each thread
 * with a port before it waits there (port_track); the key's destructor, run
 * by the exiting thread itself, leaves those ports.  Such a thread may exit
 * after the port's owner let go of it, so the port is reference counted:
 * the owner holds the reference port_create() returns and each thread that
 * tracks the port holds one more. */
#ifndef IOCPORT_PORT_H
#define IOCPORT_PORT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct port_packet {
    uint64_t key;
    uint64_t nbytes;
    void *value;
};

struct port;

/* One get in progress.  All fields are private to port.c. */
struct port_wait {
    pthread_cond_t cond;
    struct port_wait *below;          /* LIFO stack of sleeping waits */
    struct port_wait *prev, *next;    /* every wait in progress */
    struct port_packet *out;
    pthread_t self;
    int max, n, state;
    int is_async;                     /* port_wait_async's: not counted */
    int notify_fd;                    /* a stacked async wait's eventfd */
};

struct port_stats {
    unsigned concurrency;
    unsigned running;                 /* threads counting as running */
    unsigned waiters;                 /* waits asleep in the LIFO stack */
    size_t queued;                    /* packets in the queue */
    int closed;
};

#define PORT_MAX_CONCURRENCY 65536u

/* 1 <= concurrency <= PORT_MAX_CONCURRENCY.  Returns the owner's reference,
 * or NULL with errno set on failure. */
struct port *port_create(unsigned concurrency, unsigned capacity_hint);
/* Drop a reference; the last one frees the port.  The owner closes the port
 * and drains it (port_drain) before dropping its reference, so nothing is
 * queued once only tracking threads hold it, and no wait may be in progress
 * then. */
void port_release(struct port *p);

/* 0, or -EPIPE if the port is closed, -ENOMEM. */
int port_post(struct port *p, const struct port_packet *pk);

/* 0 or -errno.  out[max] receives the packets (max >= 1). */
int port_wait_init(struct port *p, struct port_wait *w,
                   struct port_packet *out, int max);
/* Wait up to timeout_ns (-1 = forever, 0 = poll) for packets.  The first
 * call makes the calling thread stop counting as running.  Returns the count
 * (>= 1, in w's out), 0 on timeout (the wait keeps its place: call again to
 * go on waiting, or finish it), -EPIPE once the port is closed (a closed port
 * hands out nothing, even if packets are queued).  The calling thread counts
 * as running from the moment it gets packets until its next get or
 * port_leave(). */
int port_get(struct port *p, struct port_wait *w, int64_t timeout_ns);
/* An asynchronous get (e.g. a coroutine's, whose thread must not sleep),
 * after port_wait_init().  It neither counts as running nor is held back by
 * the concurrency bound: a loop's coroutines share one thread, which the
 * bound is about.  Takes what is queued at once (returns the count); with
 * notify_fd -1 returns 0 when nothing is; otherwise stacks the wait (0):
 * when a post hands it packets (a thread's get() within the bound goes
 * first) or the port closes, notify_fd, an eventfd, is written, under the
 * port's lock, so the eventfd must outlive the wait.  -EPIPE once closed.
 * Then port_wait_poll(), and port_wait_done() or port_wait_cancel(). */
int port_wait_async(struct port *p, struct port_wait *w, int notify_fd);
/* What an async wait has: the count (>= 1), 0 (nothing yet) or -EPIPE. */
int port_wait_poll(struct port *p, struct port_wait *w);
/* Finish a wait; returns the packets it holds (possibly handed to it after
 * port_get last returned 0: the caller owns them). */
int port_wait_done(struct port *p, struct port_wait *w);
/* Abandon a wait (e.g. a signal handler raised): packets it holds go back to
 * the front of the queue and the thread stops counting as running.  Returns
 * how many could not be requeued (out of memory, or the port is closed);
 * they are left in out[0..] for the caller to drop. */
int port_wait_cancel(struct port *p, struct port_wait *w);

/* The calling thread stops counting as running (e.g. it will block
 * elsewhere; a thread that exits leaves by itself, see port_track); the
 * freed slot hands queued packets to the top waiter. */
void port_leave(struct port *p);
/* Close: every waiter and every later get() returns -EPIPE, post() too.
 * Queued packets stay until port_drain(). */
void port_close(struct port *p);
/* Remove up to max queued packets without waiting or counting as running. */
int port_drain(struct port *p, struct port_packet *out, int max);
/* Call fn on every value the port holds (queued or held by a wait in
 * progress) until it returns non-zero; returns that. */
int port_visit(struct port *p, int (*fn)(void *value, void *arg), void *arg);
void port_stats(struct port *p, struct port_stats *out);

/* Threads that exit.  One key per embedder (e.g. per module state): 0 or
 * -errno.  port_key_delete() leaves and releases the ports the calling
 * thread tracks; the lists of other threads still alive then are leaked
 * (their ports stay allocated, without values), since no thread can reach
 * another's value and a deleted key runs no destructor. */
int port_key_create(pthread_key_t *key);
void port_key_delete(pthread_key_t key);
/* Register the calling thread with p (once; later calls are cheap) so that
 * its exit leaves p.  Call it before a get, while the caller keeps p alive.
 * Also forgets (leaving and releasing them) the closed ports the thread
 * tracks, so a long-lived thread that uses many ports in turn keeps only
 * the open ones.  0 or -ENOMEM (the thread is not registered). */
int port_track(pthread_key_t key, struct port *p);

#endif
