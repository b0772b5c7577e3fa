/* ring.h - an io_uring instance driven with raw system calls (no liburing):
 * setting it up and mapping its queues, getting and filling submission
 * entries, submitting and waiting, reaping completions, and its
 * ring-mapped provided buffers.  It knows nothing of operations on
 * handles: that is uring.c, the engine built on it. */
#ifndef IOCPORT_IO_RING_H
#define IOCPORT_IO_RING_H

#include <linux/io_uring.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct ring {
    int fd;                       /* -1 until set up */
    unsigned setup_flags;         /* what the kernel accepted */

    /* the queues (one mapping: IORING_FEAT_SINGLE_MMAP) */
    void *mem;
    size_t mem_sz;
    struct io_uring_sqe *sqes;
    size_t sqes_sz;
    _Atomic uint32_t *sq_khead;
    _Atomic uint32_t *sq_ktail;
    uint32_t sq_mask;
    uint32_t sq_entries;
    uint32_t sq_tail;             /* next free SQE, published at submit */
    _Atomic uint32_t *cq_khead;
    _Atomic uint32_t *cq_ktail;
    uint32_t cq_mask;
    struct io_uring_cqe *cqes;

    /* provided buffers: group 0, nbufs x bufsize bytes in one block */
    struct io_uring_buf_ring *br;
    size_t br_sz;
    char *bufs;
    size_t bufs_sz;
    unsigned nbufs;               /* a power of two, the buffer ring's size */
    unsigned bufsize;
    uint16_t br_tail;             /* our copy of the buffer ring's tail */
};

#define RING_BGID 0               /* the provided-buffer group */

/* Set up a ring of `entries` SQEs and `cq_entries` CQEs, trying each flag
 * set of attempts[0..n) in turn while the kernel says -EINVAL, and map its
 * queues; -EINVAL if it lacks a feature of need_features.  r->fd must be
 * -1 before.  0 or -errno (ring_free() undoes a partial setup). */
int ring_setup(struct ring *r, unsigned entries, unsigned cq_entries,
               const unsigned *attempts, size_t n, unsigned need_features);
/* Register nbufs (rounded up to a power of two, at most 32768) buffers of
 * bufsize bytes as group RING_BGID, all given to the kernel.  0 or -errno. */
int ring_setup_bufs(struct ring *r, unsigned nbufs, unsigned bufsize);
/* Close the ring (the kernel cancels what is still in flight) and unmap
 * everything; fields left zero are skipped. */
void ring_free(struct ring *r);

int ring_register(struct ring *r, unsigned op, void *arg, unsigned nr);
int ring_enter(struct ring *r, unsigned to_submit, unsigned min_complete,
               unsigned flags, void *arg, size_t argsz);

/* Make the SQEs written so far visible to the kernel; returns how many
 * wait to be submitted. */
unsigned ring_publish(struct ring *r);
/* A zeroed SQE, or NULL with *err set (a full queue is submitted first). */
struct io_uring_sqe *ring_get_sqe(struct ring *r, int *err);

/* Fill the fields every operation sets, as liburing's io_uring_prep_rw
 * does; each operation adds its own flags. */
static inline void
ring_prep(struct io_uring_sqe *sqe, uint8_t opcode, int fd, uint64_t addr,
          uint32_t len, uint64_t off, uint64_t user_data)
{
    sqe->opcode = opcode;
    sqe->fd = fd;
    sqe->addr = addr;
    sqe->len = len;
    sqe->off = off;
    sqe->user_data = user_data;
}

/* Completions: [*head, tail) are ready; ring_cq_advance() frees them. */
static inline uint32_t
ring_cq_tail(struct ring *r)
{
    return atomic_load_explicit(r->cq_ktail, memory_order_acquire);
}

static inline uint32_t
ring_cq_head(struct ring *r)
{
    return atomic_load_explicit(r->cq_khead, memory_order_relaxed);
}

static inline void
ring_cq_advance(struct ring *r, uint32_t head)
{
    atomic_store_explicit(r->cq_khead, head, memory_order_release);
}

static inline struct io_uring_cqe *
ring_cqe(struct ring *r, uint32_t i)
{
    return &r->cqes[i & r->cq_mask];
}

/* Provided buffers: give buffer `bid` back to the kernel (visible after
 * ring_buf_publish). */
void ring_buf_put(struct ring *r, uint16_t bid);
void ring_buf_publish(struct ring *r);

static inline char *
ring_buf(struct ring *r, uint16_t bid)
{
    return r->bufs + (size_t)bid * r->bufsize;
}

#endif
