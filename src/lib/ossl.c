/* ossl.c - finds OpenSSL's functions in the library Python's ssl module
 * loaded (see ossl.h). */
#include "lib/ossl.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

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
    if (missing == NULL &&
        (*(void **)&o->get_peer_cert = dlsym(h, "SSL_get1_peer_certificate")) == NULL &&
        (*(void **)&o->get_peer_cert = dlsym(h, "SSL_get_peer_certificate")) == NULL)
        missing = "SSL_get1_peer_certificate";
    if (missing != NULL) {
        snprintf(err, errlen, "the ssl module's OpenSSL has no %s (linked "
                 "statically, or not OpenSSL?)", missing);
        dlclose(h);
        return -1;
    }
    unsigned long v = o->OpenSSL_version_num();
    if (v < OSSL_MIN_VERSION) {
        snprintf(err, errlen, "OpenSSL %lx is older than 1.1.1", v);
        dlclose(h);
        return -1;
    }
    o->handle = h;
    return 0;
}

void
ossl_unload(struct ossl *o)
{
    if (o->handle != NULL)
        dlclose(o->handle);
    o->handle = NULL;
}
