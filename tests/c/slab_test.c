/* slab_test.c - the object pool of src/slab.c, driven directly (the
 * source is included, so the test can read the pool's counters).  Built
 * with ASan+UBSan by tests/test_backend_c.py.  Exit 0 when every check
 * holds; a failed check prints it and exits 1. */
#include "lib/slab.c"
#include "check.h"

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

enum { OBJ = 400, MANY = 1000 };   /* 1000 x 400 B: several slabs */

static void
test_get_put(void)
{
    struct slab_pool *p = slab_pool_new(OBJ);
    CHECK(p != NULL && p->size == OBJ);
    static unsigned char *objs[MANY];
    for (int i = 0; i < MANY; i++) {
        objs[i] = slab_get(p);
        CHECK(objs[i] != NULL);
        CHECK(((uintptr_t)objs[i] & 15) == 0);
        for (int k = 0; k < OBJ; k++)
            CHECK(objs[i][k] == 0);
        memset(objs[i], 0xA5, OBJ);
    }
    for (int i = 1; i < MANY; i++)     /* distinct, not overlapping */
        CHECK(objs[i] >= objs[i - 1] + OBJ || objs[i] + OBJ <= objs[i - 1]);
    CHECK(p->live == MANY && p->nslabs >= MANY * OBJ / SLAB_BYTES + 1);
    size_t full = p->nslabs;

    /* every other one back: a reused slot comes back zeroed */
    for (int i = 0; i < MANY; i += 2)
        slab_put(objs[i]);
    CHECK(p->live == MANY / 2 && p->nslabs == full);
    for (int i = 0; i < MANY; i += 2) {
        objs[i] = slab_get(p);
        for (int k = 0; k < OBJ; k++)
            CHECK(objs[i][k] == 0);
    }
    CHECK(p->nslabs == full);           /* the holes were reused */

    /* all back: emptied slabs go to the system, one stays */
    for (int i = 0; i < MANY; i++)
        slab_put(objs[i]);
    CHECK(p->live == 0 && p->nslabs == 1 && p->nempty == 1);
    slab_pool_release(p);              /* freed now (LSan checks) */
}

/* A connection coming and going at a slab's edge reuses the spare empty
 * slab instead of allocating and freeing one each time. */
static void
test_spare_slab(void)
{
    struct slab_pool *p = slab_pool_new(OBJ);
    size_t per = (SLAB_BYTES - SLAB_FIRST) / p->size;
    void **objs = calloc(per + 1, sizeof(*objs));
    CHECK(objs != NULL);
    for (size_t i = 0; i <= per; i++)
        CHECK((objs[i] = slab_get(p)) != NULL);
    CHECK(p->nslabs == 2 && p->nempty == 0);
    void *second = objs[per];
    for (int k = 0; k < 100; k++) {
        slab_put(objs[per]);
        CHECK(p->nslabs == 2 && p->nempty == 1);
        objs[per] = slab_get(p);
        CHECK(objs[per] == second && p->nslabs == 2 && p->nempty == 0);
    }
    for (size_t i = 0; i <= per; i++)
        slab_put(objs[i]);
    CHECK(p->live == 0 && p->nslabs == 1 && p->nempty == 1);
    free(objs);
    slab_pool_release(p);
}

static void
test_release_before_last_put(void)
{
    struct slab_pool *p = slab_pool_new(64);
    void *a = slab_get(p), *b = slab_get(p);
    slab_pool_release(p);              /* the owner goes first */
    CHECK(p->released && p->live == 2);
    slab_put(a);
    memset(b, 1, 64);                  /* still valid memory */
    slab_put(b);                       /* frees the pool */
}

static void
test_use_after_put_is_caught(void)
{
#if defined(__SANITIZE_ADDRESS__)
    struct slab_pool *p = slab_pool_new(OBJ);
    unsigned char *a = slab_get(p);
    slab_put(a);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        ((volatile unsigned char *)a)[100] = 1;   /* ASan must stop this */
        _exit(0);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(!(WIFEXITED(st) && WEXITSTATUS(st) == 0));
    slab_pool_release(p);
#endif
}

struct churn {
    struct slab_pool *p;
    unsigned seed;
};

static void *
churn(void *arg)
{
    struct churn *c = arg;
    void *held[64] = {0};
    for (int i = 0; i < 200000; i++) {
        c->seed = c->seed * 1103515245u + 12345u;
        unsigned k = (c->seed >> 16) % 64;
        if (held[k] != NULL) {
            slab_put(held[k]);
            held[k] = NULL;
        } else {
            held[k] = slab_get(c->p);
            if (held[k] == NULL)
                return "slab_get failed";
            memset(held[k], (int)k, 200);
        }
    }
    for (int k = 0; k < 64; k++)
        if (held[k] != NULL)
            slab_put(held[k]);
    return NULL;
}

static void
test_threads(void)
{
    struct slab_pool *p = slab_pool_new(200);
    pthread_t t[4];
    struct churn c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = (struct churn){p, (unsigned)i + 1};
        CHECK(pthread_create(&t[i], NULL, churn, &c[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        void *r;
        CHECK(pthread_join(t[i], &r) == 0 && r == NULL);
    }
    CHECK(p->live == 0 && p->nslabs == 1);
    slab_pool_release(p);
}

int
main(void)
{
    struct slab_pool *tiny = slab_pool_new(1);  /* sizes round up to 16 */
    CHECK(tiny != NULL && tiny->size == 16);
    slab_pool_release(tiny);
    CHECK(slab_pool_new(SLAB_BYTES) == NULL);   /* cannot fit a slab */
    test_get_put();
    test_spare_slab();
    test_release_before_last_put();
    test_use_after_put_is_caught();
    test_threads();
    puts("slab: ok");
    return 0;
}
