/* ring.c - an io_uring instance by raw system calls (see ring.h): setup
 * and mapping, submission, provided buffers.  Every memory barrier is a
 * C11 atomic on a shared index: release when we publish (the SQ tail, the
 * CQ head, the buffer ring's tail) so the kernel sees what we wrote before
 * it, acquire when we read the kernel's (the SQ head, the CQ tail) so we
 * see what it wrote before it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* syscall() */
#endif
#include "io/ring.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_BUFS 32768u       /* the kernel's limit for a buffer ring */

static int
sys_setup(unsigned entries, struct io_uring_params *p)
{
    long r = syscall(__NR_io_uring_setup, entries, p);
    return r < 0 ? -errno : (int)r;
}

int
ring_enter(struct ring *r, unsigned to_submit, unsigned min_complete,
           unsigned flags, void *arg, size_t argsz)
{
    long n = syscall(__NR_io_uring_enter, r->fd, to_submit, min_complete,
                     flags, arg, argsz);
    return n < 0 ? -errno : (int)n;
}

int
ring_register(struct ring *r, unsigned op, void *arg, unsigned nr)
{
    long n = syscall(__NR_io_uring_register, r->fd, op, arg, nr);
    return n < 0 ? -errno : (int)n;
}

static unsigned
unsubmitted(struct ring *r)
{
    return r->sq_tail - atomic_load_explicit(r->sq_khead,
                                             memory_order_acquire);
}

unsigned
ring_publish(struct ring *r)
{
    atomic_store_explicit(r->sq_ktail, r->sq_tail, memory_order_release);
    return unsubmitted(r);
}

struct io_uring_sqe *
ring_get_sqe(struct ring *r, int *err)
{
    if (unsubmitted(r) >= r->sq_entries) {
        unsigned n = ring_publish(r);
        int rc;
        do
            rc = ring_enter(r, n, 0, 0, NULL, 0);
        while (rc == -EINTR);
        if (unsubmitted(r) >= r->sq_entries) {
            *err = rc < 0 ? rc : -EBUSY;
            return NULL;
        }
    }
    struct io_uring_sqe *sqe = &r->sqes[r->sq_tail & r->sq_mask];
    memset(sqe, 0, sizeof(*sqe));
    r->sq_tail++;
    return sqe;
}

/* Map the queues the kernel described in p. */
static int
map_queues(struct ring *r, const struct io_uring_params *p)
{
    size_t sq_sz = p->sq_off.array + p->sq_entries * sizeof(uint32_t);
    size_t cq_sz = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
    r->mem_sz = sq_sz > cq_sz ? sq_sz : cq_sz;
    void *m = mmap(NULL, r->mem_sz, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (m == MAP_FAILED)
        return -errno;
    r->mem = m;
    r->sqes_sz = p->sq_entries * sizeof(struct io_uring_sqe);
    m = mmap(NULL, r->sqes_sz, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (m == MAP_FAILED)
        return -errno;
    r->sqes = m;

    char *base = r->mem;
    r->sq_khead = (_Atomic uint32_t *)(base + p->sq_off.head);
    r->sq_ktail = (_Atomic uint32_t *)(base + p->sq_off.tail);
    r->sq_mask = *(uint32_t *)(base + p->sq_off.ring_mask);
    r->sq_entries = *(uint32_t *)(base + p->sq_off.ring_entries);
    r->sq_tail = atomic_load_explicit(r->sq_ktail, memory_order_relaxed);
    uint32_t *array = (uint32_t *)(base + p->sq_off.array);
    for (uint32_t i = 0; i < r->sq_entries; i++)
        array[i] = i;   /* SQE i always sits in slot i */
    r->cq_khead = (_Atomic uint32_t *)(base + p->cq_off.head);
    r->cq_ktail = (_Atomic uint32_t *)(base + p->cq_off.tail);
    r->cq_mask = *(uint32_t *)(base + p->cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(base + p->cq_off.cqes);
    return 0;
}

int
ring_setup(struct ring *r, unsigned entries, unsigned cq_entries,
           const unsigned *attempts, size_t n, unsigned need_features)
{
    struct io_uring_params p;
    int fd = -EINVAL;
    for (size_t i = 0; i < n && fd == -EINVAL; i++) {
        memset(&p, 0, sizeof(p));
        p.flags = attempts[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = cq_entries;
        fd = sys_setup(entries, &p);
    }
    if (fd < 0)
        return fd;
    r->fd = fd;
    r->setup_flags = p.flags;
    need_features |= IORING_FEAT_SINGLE_MMAP;   /* map_queues() needs it */
    if ((p.features & need_features) != need_features)
        return -EINVAL;
    return map_queues(r, &p);
}

void
ring_buf_put(struct ring *r, uint16_t bid)
{
    struct io_uring_buf *e = &r->br->bufs[r->br_tail & (r->nbufs - 1)];
    e->addr = (uint64_t)(uintptr_t)ring_buf(r, bid);
    e->len = r->bufsize;
    e->bid = bid;
    r->br_tail++;
}

void
ring_buf_publish(struct ring *r)
{
    _Atomic uint16_t *t = (_Atomic uint16_t *)&r->br->tail;
    atomic_store_explicit(t, r->br_tail, memory_order_release);
}

int
ring_setup_bufs(struct ring *r, unsigned nbufs, unsigned bufsize)
{
    if (nbufs == 0 || bufsize == 0 || nbufs > MAX_BUFS || bufsize > INT32_MAX)
        return -EINVAL;
    unsigned n = 1;
    while (n < nbufs)
        n <<= 1;
    if ((size_t)n > SIZE_MAX / bufsize)
        return -EINVAL;
    r->nbufs = n;
    r->bufsize = bufsize;

    /* the ring must be page aligned: mmap gives that */
    r->br_sz = (size_t)n * sizeof(struct io_uring_buf);
    void *m = mmap(NULL, r->br_sz, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    r->br = m;
    r->bufs_sz = (size_t)n * bufsize;
    m = mmap(NULL, r->bufs_sz, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    r->bufs = m;

    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)r->br;
    reg.ring_entries = n;
    reg.bgid = RING_BGID;
    int rc = ring_register(r, IORING_REGISTER_PBUF_RING, &reg, 1);
    if (rc < 0)
        return rc;
    r->br_tail = 0;
    for (unsigned i = 0; i < n; i++)
        ring_buf_put(r, (uint16_t)i);
    ring_buf_publish(r);
    return 0;
}

void
ring_free(struct ring *r)
{
    /* Closing the ring cancels what is still in flight (a caller's bug)
     * and unpins the buffer ring, which is then safe to unmap. */
    if (r->fd >= 0)
        close(r->fd);
    if (r->bufs != NULL)
        munmap(r->bufs, r->bufs_sz);
    if (r->br != NULL)
        munmap(r->br, r->br_sz);
    if (r->sqes != NULL)
        munmap(r->sqes, r->sqes_sz);
    if (r->mem != NULL)
        munmap(r->mem, r->mem_sz);
    memset(r, 0, sizeof(*r));
    r->fd = -1;
}
