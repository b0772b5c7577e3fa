/* ossl.h - OpenSSL, reached at run time: the functions the TLS layer
 * calls, looked up in the copy Python's ssl module has already loaded (one
 * OpenSSL in the process, and nothing OpenSSL needed to build iocport).
 * The types are opaque; the constants below are OpenSSL's ABI, the same
 * from 1.1.1 (the oldest CPython 3.10 accepts) to 3.x. */
#ifndef IOCPORT_LIB_OSSL_H
#define IOCPORT_LIB_OSSL_H

#include <stddef.h>
#include <stdint.h>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_cipher_st SSL_CIPHER;
typedef struct bio_st BIO;
typedef struct bio_method_st BIO_METHOD;
typedef struct x509_st X509;
typedef struct ssl_session_st SSL_SESSION;
typedef struct X509_VERIFY_PARAM_st X509_VERIFY_PARAM;
typedef struct evp_md_st EVP_MD;
typedef struct evp_cipher_st EVP_CIPHER;
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct engine_st ENGINE;
typedef void (*ossl_keylog_cb)(const SSL *, const char *);
typedef void (*ossl_msg_cb)(int, int, int, const void *, size_t, SSL *, void *);

#define OSSL_ERROR_NONE        0
#define OSSL_ERROR_SSL         1
#define OSSL_ERROR_WANT_READ   2
#define OSSL_ERROR_WANT_WRITE  3
#define OSSL_ERROR_SYSCALL     5
#define OSSL_ERROR_ZERO_RETURN 6

#define OSSL_CTRL_MODE                   33
#define OSSL_CTRL_CLEAR_MODE             78
#define OSSL_CTRL_SET_MSG_CALLBACK_ARG   16
#define OSSL_CTRL_SET_READ_AHEAD         41
#define OSSL_CRYPTO_EX_INDEX_SSL         0
#define OSSL_BIO_CTRL_FLUSH              11
#define OSSL_BIO_FLAGS_READ              0x01
#define OSSL_BIO_FLAGS_RWS               0x07
#define OSSL_BIO_FLAGS_SHOULD_RETRY      0x08
#define OSSL_BIO_TYPE_SOURCE_SINK        0x0400
#define OSSL_CTRL_SET_TLSEXT_HOSTNAME    55
#define OSSL_TLSEXT_NAMETYPE_host_name   0
#define OSSL_MODE_ENABLE_PARTIAL_WRITE   0x1u
#define OSSL_MODE_ACCEPT_MOVING_WRITE_BUFFER 0x2u
#define OSSL_MODE_RELEASE_BUFFERS        0x10u
#define OSSL_OP_NO_RENEGOTIATION         (1ull << 30)
#define OSSL_EVP_CTRL_AEAD_GET_TAG       0x10

#define OSSL_MIN_VERSION 0x10101000ul   /* 1.1.1 */

/* X(return type, name, parameters): every function, the one list. */
#define OSSL_FUNCS(X)                                                        \
    X(unsigned long, OpenSSL_version_num, (void))                            \
    X(SSL *, SSL_new, (SSL_CTX *))                                           \
    X(void, SSL_free, (SSL *))                                               \
    X(void, SSL_set_bio, (SSL *, BIO *, BIO *))                              \
    X(void, SSL_set_accept_state, (SSL *))                                   \
    X(void, SSL_set_connect_state, (SSL *))                                  \
    X(int, SSL_do_handshake, (SSL *))                                        \
    X(int, SSL_read, (SSL *, void *, int))                                   \
    X(int, SSL_write, (SSL *, const void *, int))                            \
    X(int, SSL_shutdown, (SSL *))                                            \
    X(int, SSL_get_error, (const SSL *, int))                                \
    X(long, SSL_ctrl, (SSL *, int, long, void *))                            \
    X(uint64_t, SSL_set_options, (SSL *, uint64_t))                          \
    X(const char *, SSL_get_version, (const SSL *))                          \
    X(const SSL_CIPHER *, SSL_get_current_cipher, (const SSL *))             \
    X(const char *, SSL_CIPHER_get_name, (const SSL_CIPHER *))               \
    X(const char *, SSL_CIPHER_get_version, (const SSL_CIPHER *))            \
    X(int, SSL_CIPHER_get_bits, (const SSL_CIPHER *, int *))                 \
    X(void, SSL_get0_alpn_selected,                                          \
      (const SSL *, const unsigned char **, unsigned int *))                 \
    X(long, SSL_get_verify_result, (const SSL *))                            \
    X(const char *, X509_verify_cert_error_string, (long))                   \
    X(int, SSL_set1_host, (SSL *, const char *))                             \
    X(X509_VERIFY_PARAM *, SSL_get0_param, (SSL *))                          \
    X(int, X509_VERIFY_PARAM_set1_ip_asc, (X509_VERIFY_PARAM *, const char *)) \
    X(int, i2d_X509, (X509 *, unsigned char **))                             \
    X(void, X509_free, (X509 *))                                             \
    X(int, SSL_free_buffers, (SSL *))                                        \
    X(int, SSL_has_pending, (const SSL *))                                   \
    X(int, BIO_get_new_index, (void))                                        \
    X(BIO_METHOD *, BIO_meth_new, (int, const char *))                       \
    X(void, BIO_meth_free, (BIO_METHOD *))                                   \
    X(int, BIO_meth_set_write, (BIO_METHOD *, int (*)(BIO *, const char *, int))) \
    X(int, BIO_meth_set_read, (BIO_METHOD *, int (*)(BIO *, char *, int)))   \
    X(int, BIO_meth_set_ctrl, (BIO_METHOD *, long (*)(BIO *, int, long, void *))) \
    X(BIO *, BIO_new, (const BIO_METHOD *))                                  \
    X(int, BIO_free, (BIO *))                                                \
    X(void, BIO_set_data, (BIO *, void *))                                   \
    X(void *, BIO_get_data, (BIO *))                                         \
    X(void, BIO_set_init, (BIO *, int))                                      \
    X(void, BIO_set_flags, (BIO *, int))                                     \
    X(void, BIO_clear_flags, (BIO *, int))                                   \
    X(unsigned long, ERR_get_error, (void))                                  \
    X(void, ERR_error_string_n, (unsigned long, char *, size_t))             \
    X(void, ERR_clear_error, (void))                                         \
    X(unsigned long, ERR_peek_error, (void))                                 \
    X(uint64_t, SSL_CTX_get_options, (const SSL_CTX *))                      \
    X(int, SSL_CTX_get_verify_mode, (const SSL_CTX *))

/* What kernel TLS, and its user-space stand-in, need besides (lib/ktls.c):
 * optional, so that an OpenSSL without one of them still does TLS, without
 * either (has_ktls 0). */
#define OSSL_KTLS_FUNCS(X)                                                   \
    X(int, SSL_version, (const SSL *))                                       \
    X(SSL_SESSION *, SSL_get_session, (const SSL *))                         \
    X(size_t, SSL_SESSION_get_master_key,                                    \
      (const SSL_SESSION *, unsigned char *, size_t))                        \
    X(size_t, SSL_get_client_random, (const SSL *, unsigned char *, size_t)) \
    X(size_t, SSL_get_server_random, (const SSL *, unsigned char *, size_t)) \
    X(int, SSL_CIPHER_get_cipher_nid, (const SSL_CIPHER *))                  \
    X(const EVP_MD *, SSL_CIPHER_get_handshake_digest, (const SSL_CIPHER *)) \
    X(unsigned char *, HMAC, (const EVP_MD *, const void *, int,             \
                              const unsigned char *, size_t, unsigned char *, \
                              unsigned int *))                               \
    X(void, SSL_set_msg_callback, (SSL *, ossl_msg_cb))                      \
    X(void, SSL_CTX_set_keylog_callback, (SSL_CTX *, ossl_keylog_cb))        \
    X(ossl_keylog_cb, SSL_CTX_get_keylog_callback, (const SSL_CTX *))        \
    X(int, CRYPTO_get_ex_new_index, (int, long, void *, void *, void *, void *)) \
    X(int, SSL_set_ex_data, (SSL *, int, void *))                            \
    X(void *, SSL_get_ex_data, (const SSL *, int))                           \
    X(EVP_CIPHER_CTX *, EVP_CIPHER_CTX_new, (void))                          \
    X(void, EVP_CIPHER_CTX_free, (EVP_CIPHER_CTX *))                         \
    X(const EVP_CIPHER *, EVP_aes_128_gcm, (void))                           \
    X(const EVP_CIPHER *, EVP_aes_256_gcm, (void))                           \
    X(int, EVP_EncryptInit_ex, (EVP_CIPHER_CTX *, const EVP_CIPHER *,        \
                                ENGINE *, const unsigned char *,             \
                                const unsigned char *))                      \
    X(int, EVP_EncryptUpdate, (EVP_CIPHER_CTX *, unsigned char *, int *,     \
                               const unsigned char *, int))                  \
    X(int, EVP_EncryptFinal_ex, (EVP_CIPHER_CTX *, unsigned char *, int *))  \
    X(int, EVP_CIPHER_CTX_ctrl, (EVP_CIPHER_CTX *, int, int, void *))

struct ossl {
#define OSSL_MEMBER(ret, name, params) ret (*name) params;
    OSSL_FUNCS(OSSL_MEMBER)
    OSSL_KTLS_FUNCS(OSSL_MEMBER)
#undef OSSL_MEMBER
    int has_ktls;                /* every OSSL_KTLS_FUNCS was found */
    /* SSL_get1_peer_certificate (3.x), or SSL_get_peer_certificate under
     * its 1.1.1 name: the same function. */
    X509 *(*get_peer_cert)(const SSL *);
    BIO_METHOD *bio_method;      /* ossl_bio_new's */
    void *handle;                /* dlopen's, for ossl_unload */
};

/* An SSL's ciphertext, through a BIO of ours (ossl_bio_new) instead of a
 * BIO pair's rings: OpenSSL reads the peer's bytes from `in` where they lie
 * (the engine's receive buffer: no copy into a ring first), and appends
 * its records to `out` (grown as needed, never refused: the caller bounds
 * what it seals).  `out` is the caller's to send from, empty and free. */
struct ossl_io {
    const char *in;              /* the peer's bytes not yet read */
    size_t in_len;
    char *out;                   /* records to send: out[0..out_len) */
    size_t out_len, out_cap;
    int nomem;                   /* `out` could not grow: the SSL failed */
};

/* Fill `o` from the loaded shared object at `path` (Python's _ssl
 * module; NULL: the program itself, where _ssl is built in).  Nothing is
 * loaded that was not loaded already.  0, or -1 with a sentence in
 * err[0..errlen). */
int ossl_load(struct ossl *o, const char *path, char *err, size_t errlen);
void ossl_unload(struct ossl *o);
/* A BIO over io (which must outlive it), or NULL.  (Inline: the core
 * reaches OpenSSL through the table alone and links without this file.) */
static inline BIO *
ossl_bio_new(const struct ossl *o, struct ossl_io *io)
{
    BIO *b = o->BIO_new(o->bio_method);
    if (b != NULL) {
        o->BIO_set_data(b, io);
        o->BIO_set_init(b, 1);
    }
    return b;
}

/* Empty this thread's error queue, as SSL_get_error needs it, at the
 * cost of a look when it is empty already (the usual case: clearing it
 * costs several times more). */
static inline void
ossl_clear_errors(const struct ossl *o)
{
    if (o->ERR_peek_error() != 0)
        o->ERR_clear_error();
}

#endif
