/* slab.h - a thread-safe pool of fixed-size objects carved from 64 KiB
 * slabs.  Used for struct conn: connections live together, apart from the
 * heap that holds their buffers, so the buffers idle connections give back
 * leave whole pages free for the allocator to return to the kernel. */
#ifndef IOCPORT_SLAB_H
#define IOCPORT_SLAB_H

#include <stddef.h>

struct slab_pool;

/* A pool of objects of `size` bytes (aligned to 16); NULL without memory. */
struct slab_pool *slab_pool_new(size_t size);
/* A zeroed object, or NULL without memory.  Any thread. */
void *slab_get(struct slab_pool *p);
/* Give an object back; an emptied slab goes back to the system (unless it
 * is the last one).  Any thread, even after slab_pool_release(). */
void slab_put(void *obj);
/* The owner is done with the pool: it is freed now, or when the last
 * object still out is put back. */
void slab_pool_release(struct slab_pool *p);

#endif
