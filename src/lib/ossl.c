/* ossl.c - finds OpenSSL's functions in the library Python's ssl module
 * loaded (see ossl.h), and the BIO that hands an SSL its ciphertext. */
#include "lib/ossl.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The first capacity of ossl_io.out: a handshake flight fits. */
#define OUT_FIRST (8 * 1024)

/* The BIO callbacks get only the BIO, and reaching its data takes one of
 * OpenSSL's functions: these three, written by every ossl_load with the
 * same addresses (one OpenSSL in the process, never unloaded while Python's
 * ssl module lives), so set once in effect; atomic because two
 * interpreters may load at once. */
static void *(*_Atomic bio_get_data)(BIO *);
static void (*_Atomic bio_set_flags)(BIO *, int);
static void (*_Atomic bio_clear_flags)(BIO *, int);

static int
bio_read(BIO *b, char *buf, int len)
{
    struct ossl_io *io = atomic_load_explicit(&bio_get_data, memory_order_relaxed)(b);
    atomic_load_explicit(&bio_clear_flags, memory_order_relaxed)(
        b, OSSL_BIO_FLAGS_RWS | OSSL_BIO_FLAGS_SHOULD_RETRY);
    if (io->in_len == 0) {
        atomic_load_explicit(&bio_set_flags, memory_order_relaxed)(
            b, OSSL_BIO_FLAGS_READ | OSSL_BIO_FLAGS_SHOULD_RETRY);
        return -1;
    }
    size_t n = len < 0 ? 0 : (size_t)len;
    if (n > io->in_len)
        n = io->in_len;
    memcpy(buf, io->in, n);
    io->in += n;
    io->in_len -= n;
    return (int)n;
}

static int
bio_write(BIO *b, const char *buf, int len)
{
    struct ossl_io *io = atomic_load_explicit(&bio_get_data, memory_order_relaxed)(b);
    atomic_load_explicit(&bio_clear_flags, memory_order_relaxed)(
        b, OSSL_BIO_FLAGS_RWS | OSSL_BIO_FLAGS_SHOULD_RETRY);
    size_t n = len < 0 ? 0 : (size_t)len;
    if (io->out_len + n > io->out_cap) {
        /* Doubling: a busy connection stops growing at its largest batch
         * and keeps it until it is idle (ossl_io's owner frees it). */
        size_t cap = io->out_cap ? io->out_cap * 2 : OUT_FIRST;
        while (cap < io->out_len + n)
            cap *= 2;
        char *p = realloc(io->out, cap);
        if (p == NULL) {
            io->nomem = 1;
            return -1;
        }
        io->out = p;
        io->out_cap = cap;
    }
    memcpy(io->out + io->out_len, buf, n);
    io->out_len += n;
    return (int)n;
}

static long
bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == OSSL_BIO_CTRL_FLUSH;   /* (nothing to flush: the owner
                                            sends `out`); the rest unknown */
}

int
ossl_load(struct ossl *o, const char *path, char *err, size_t errlen)
{
    memset(o, 0, sizeof(*o));
    /* RTLD_NOLOAD: only a library already in the process; dlsym on its
     * handle searches it and the libraries it depends on (libssl,
     * libcrypto). */
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL) {
        snprintf(err, errlen, "cannot reach the ssl module's library %s: %s",
                 path ? path : "(the program)", dlerror());
        return -1;
    }
    const char *missing = NULL;
#define OSSL_FIND(ret, name, params)                                          \
    if (missing == NULL &&                                                    \
        (*(void **)&o->name = dlsym(h, #name)) == NULL)                       \
        missing = #name;
    OSSL_FUNCS(OSSL_FIND)
#undef OSSL_FIND
    o->has_ktls = 1;
#define OSSL_FIND_KTLS(ret, name, params)                                     \
    if ((*(void **)&o->name = dlsym(h, #name)) == NULL)                       \
        o->has_ktls = 0;
    OSSL_KTLS_FUNCS(OSSL_FIND_KTLS)
#undef OSSL_FIND_KTLS
    if (missing == NULL &&
        (*(void **)&o->get_peer_cert = dlsym(h, "SSL_get1_peer_certificate")) == NULL &&
        (*(void **)&o->get_peer_cert = dlsym(h, "SSL_get_peer_certificate")) == NULL)
        missing = "SSL_get1_peer_certificate";
    if (missing != NULL) {
        snprintf(err, errlen, "the ssl module's OpenSSL has no %s (linked "
                 "statically, or not OpenSSL?)", missing);
        goto fail;
    }
    unsigned long v = o->OpenSSL_version_num();
    if (v < OSSL_MIN_VERSION) {
        snprintf(err, errlen, "OpenSSL %lx is older than 1.1.1", v);
        goto fail;
    }
    atomic_store_explicit(&bio_get_data, o->BIO_get_data, memory_order_relaxed);
    atomic_store_explicit(&bio_set_flags, o->BIO_set_flags, memory_order_relaxed);
    atomic_store_explicit(&bio_clear_flags, o->BIO_clear_flags, memory_order_relaxed);
    int type = o->BIO_get_new_index();
    if (type == -1 ||
        (o->bio_method = o->BIO_meth_new(type | OSSL_BIO_TYPE_SOURCE_SINK,
                                          "iocport")) == NULL ||
        o->BIO_meth_set_read(o->bio_method, bio_read) != 1 ||
        o->BIO_meth_set_write(o->bio_method, bio_write) != 1 ||
        o->BIO_meth_set_ctrl(o->bio_method, bio_ctrl) != 1) {
        snprintf(err, errlen, "cannot make a BIO method (out of memory?)");
        goto fail;
    }
    o->handle = h;
    return 0;
fail:
    if (o->bio_method != NULL)
        o->BIO_meth_free(o->bio_method);
    o->bio_method = NULL;
    dlclose(h);
    return -1;
}

void
ossl_unload(struct ossl *o)
{
    if (o->bio_method != NULL)
        o->BIO_meth_free(o->bio_method);
    o->bio_method = NULL;
    if (o->handle != NULL)
        dlclose(o->handle);
    o->handle = NULL;
}
