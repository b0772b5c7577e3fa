/* slab.c - the object pool of slab.h.  A slab is SLAB_BYTES aligned to its
 * size, so an object finds its slab (and the pool) by masking its address:
 * no per-object header.  Each slab keeps its own free list; slabs with a
 * free slot are on the pool's `partial` list.  A slab whose objects are all
 * back is kept while it is the only empty one (so connections coming and
 * going at a slab's edge do not allocate and free a slab each time), and
 * freed otherwise. */
#include "lib/slab.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SLAB_BYTES ((size_t)64 * 1024)

/* Under AddressSanitizer a free object is poisoned (but for its free-list
 * link), so a use after slab_put() is caught as a malloc'd one would be. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct free_obj {
    struct free_obj *next;
};

struct slab {
    struct slab_pool *pool;
    struct slab *next, *prev;    /* on pool->partial while it has room */
    struct free_obj *free;
    char *fresh;                 /* never used objects start here */
    unsigned used;
    unsigned char partial;
};

struct slab_pool {
    pthread_mutex_t lock;
    size_t size;                 /* object size, a multiple of 16 */
    struct slab *partial;        /* slabs with a free slot */
    size_t nslabs;
    size_t nempty;               /* slabs with no object out */
    size_t live;                 /* objects out */
    int released;                /* the owner let go: free when live == 0 */
};

#define SLAB_FIRST (((sizeof(struct slab) + 15) / 16) * 16)

struct slab_pool *
slab_pool_new(size_t size)
{
    if (size > SLAB_BYTES - SLAB_FIRST)
        return NULL;
    if (size < sizeof(struct free_obj))
        size = sizeof(struct free_obj);
    size = (size + 15) / 16 * 16;
    struct slab_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        free(p);
        return NULL;
    }
    p->size = size;
    return p;
}

static void
partial_add(struct slab_pool *p, struct slab *s)
{
    s->prev = NULL;
    s->next = p->partial;
    if (p->partial != NULL)
        p->partial->prev = s;
    p->partial = s;
    s->partial = 1;
}

static void
partial_remove(struct slab_pool *p, struct slab *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        p->partial = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->partial = 0;
}

static void
pool_free(struct slab_pool *p)
{
    while (p->partial != NULL) {
        struct slab *s = p->partial;
        partial_remove(p, s);
        UNPOISON(s, SLAB_BYTES);
        free(s);
    }
    pthread_mutex_destroy(&p->lock);
    free(p);
}

void *
slab_get(struct slab_pool *p)
{
    pthread_mutex_lock(&p->lock);
    struct slab *s = p->partial;
    if (s == NULL) {
        void *mem = NULL;
        if (posix_memalign(&mem, SLAB_BYTES, SLAB_BYTES) != 0) {
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        s = mem;
        memset(s, 0, sizeof(*s));
        s->pool = p;
        s->fresh = (char *)s + SLAB_FIRST;
        POISON(s->fresh, SLAB_BYTES - SLAB_FIRST);
        partial_add(p, s);
        p->nslabs++;
        p->nempty++;
    }
    if (s->used == 0)
        p->nempty--;
    void *obj;
    if (s->free != NULL) {
        obj = s->free;
        UNPOISON(obj, p->size);
        s->free = s->free->next;
    } else {
        obj = s->fresh;
        UNPOISON(obj, p->size);
        s->fresh += p->size;
    }
    s->used++;
    if (s->free == NULL && (size_t)((char *)s + SLAB_BYTES - s->fresh) < p->size)
        partial_remove(p, s);   /* full */
    p->live++;
    pthread_mutex_unlock(&p->lock);
    memset(obj, 0, p->size);
    return obj;
}

void
slab_put(void *obj)
{
    struct slab *s = (struct slab *)((uintptr_t)obj & ~(uintptr_t)(SLAB_BYTES - 1));
    struct slab_pool *p = s->pool;
    pthread_mutex_lock(&p->lock);
    struct free_obj *f = obj;
    f->next = s->free;
    s->free = f;
    POISON((char *)obj + sizeof(*f), p->size - sizeof(*f));
    s->used--;
    if (!s->partial)
        partial_add(p, s);
    if (s->used == 0) {
        if (p->nempty == 0) {
            p->nempty++;              /* the spare */
        } else {
            partial_remove(p, s);
            p->nslabs--;
            UNPOISON(s, SLAB_BYTES);
            free(s);
        }
    }
    int done = --p->live == 0 && p->released;
    pthread_mutex_unlock(&p->lock);
    if (done)
        pool_free(p);
}

void
slab_pool_release(struct slab_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->released = 1;
    int done = p->live == 0;
    pthread_mutex_unlock(&p->lock);
    if (done)
        pool_free(p);
}
