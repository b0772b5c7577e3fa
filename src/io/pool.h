/* pool.h - regular-file operations on a few native threads, for an engine
 * that cannot wait on regular files (epoll) or whose kernel lacks the
 * ring's file operations (io_uring before 5.6).  The way libuv's io_uring
 * calls fall back to its thread pool: the engine asks the pool whenever it
 * cannot do the operation itself, and its callers never know. */
#ifndef IOCPORT_IO_POOL_H
#define IOCPORT_IO_POOL_H

#include "io/backend.h"

struct io_pool;

/* A pool (its threads start at the first request).  wake(arg) is called
 * from a pool thread when a result waits and none did before: the engine's
 * wait() must then return and call io_pool_take().  NULL with errno set. */
struct io_pool *io_pool_create(void (*wake)(void *arg), void *arg);
/* Stops and joins the threads; requests still queued (a caller's bug:
 * they were never waited for) are dropped without an event. */
void io_pool_destroy(struct io_pool *p);
/* Run file_op() `op` (enum file_opcode) on h->fd, reading into or writing
 * from buf[0..len) at `off`; one final IO_FILE event follows (through
 * io_pool_take).  0, or -errno and nothing started (-EBUSY: h has one). */
int io_pool_submit(struct io_pool *p, struct io_handle *h, int op, void *buf,
                   size_t len, uint64_t off);
/* Move finished requests into out[0..max) as final IO_FILE events; the
 * count.  Cheap when none are done. */
int io_pool_take(struct io_pool *p, struct io_event *out, int max);

#endif
