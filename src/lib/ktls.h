/* ktls.h - kernel TLS: the keys of an SSL's session, as the kernel's TLS
 * upper-layer protocol takes them (linux/tls.h), and handing them over.
 *
 * OpenSSL has no call that returns a session's traffic keys or record
 * sequence numbers, so they are watched for during the handshake:
 *   - TLS 1.3: the traffic secrets come through the context's keylog
 *     callback (ours, installed by ktls_prepare_ctx; it finds the SSL's
 *     struct ktls_keys in the SSL's ex_data and ignores every SSL that has
 *     none, such as Python's own); key and IV are HKDF-Expand-Label of the
 *     secret.  TLS 1.2: the key block from the session's master secret.
 *   - The write sequence number: the SSL's message callback (per SSL)
 *     counts the records it writes after the last key change (our
 *     ChangeCipherSpec in 1.2, our Finished in 1.3).
 * Only AES-GCM (128 and 256), TLS 1.2 and 1.3, transmit side. */
#ifndef IOCPORT_LIB_KTLS_H
#define IOCPORT_LIB_KTLS_H

#include "lib/ossl.h"

#include <linux/tls.h>
#include <stdint.h>
#include <sys/socket.h>

/* What the watch sees of one SSL's handshake. */
struct ktls_keys {
    unsigned char wsecret[48];   /* TLS 1.3: our traffic secret 0 */
    uint8_t wsecret_len;
    uint8_t server;              /* we are the server side */
    uint64_t wrec;               /* records written since the write key
                                    last changed: the next one's number */
};

/* The kernel's crypto_info for one direction. */
struct ktls_crypto {
    union {
        struct tls_crypto_info info;
        struct tls12_crypto_info_aes_gcm_128 g128;
        struct tls12_crypto_info_aes_gcm_256 g256;
    } u;
    socklen_t len;
};

/* Our keylog callback on ctx, unless it has one (then TLS 1.3 sessions
 * are not handed over: ktls_tx_info says -ENOKEY).  0, or -1 if this
 * OpenSSL lacks a function kTLS needs or could not give an ex_data index
 * (no kTLS then). */
int ktls_prepare_ctx(const struct ossl *o, SSL_CTX *ctx);
/* Watch ssl's handshake into *k (which must outlive the watch).  0 or -1. */
int ktls_watch(const struct ossl *o, SSL *ssl, struct ktls_keys *k, int server);
/* Stop watching (the handshake is over: no callback per record after). */
void ktls_unwatch(const struct ossl *o, SSL *ssl);
/* The crypto_info for our side's records from the next one on.  0;
 * -ENOTSUP: a version or cipher the kernel path here does not take;
 * -ENOKEY: the secret never came (another keylog callback); -EIO: OpenSSL
 * failed. */
int ktls_tx_info(const struct ossl *o, SSL *ssl, const struct ktls_keys *k,
                 struct ktls_crypto *out);
/* Attach the tls ULP to fd and give it ci for sending.  0 or -errno
 * (-ENOENT: the kernel offers no tls ULP; the socket is unchanged). */
int ktls_tx_enable(int fd, const struct ktls_crypto *ci);
/* Wipe key material. */
void ktls_wipe(void *p, size_t n);

/* Kernel TLS's stand-in where the kernel has none (TLS 1.3 only): our
 * side's records made here with the keys and sequence number ktls_tx_info
 * derived for the kernel, through one EVP context keyed once, instead of
 * through SSL_write; the traffic secret is kept for a KeyUpdate. */
struct ktls_user {
    EVP_CIPHER_CTX *ctx;
    const EVP_MD *md;
    unsigned char iv[12];        /* the nonce before the sequence number */
    unsigned char secret[48];    /* our current traffic secret */
    uint8_t hlen, klen;
    uint64_t seq;                /* the next record's number */
    unsigned asked;              /* the peer's KeyUpdates asking for ours,
                                    not answered yet */
};
#define KTLS_USER_OVERHEAD (5 + 1 + 16)   /* header, content type, tag */
#define KTLS_USER_MAX 16384               /* plaintext per record */
#define KTLS_RT_ALERT 21
#define KTLS_RT_HANDSHAKE 22
#define KTLS_RT_APPLICATION_DATA 23

/* Set u up from ci (ktls_tx_info's) and k's secret.  0; -ENOTSUP: not TLS
 * 1.3; -EIO: OpenSSL failed. */
int ktls_user_init(const struct ossl *o, SSL *ssl, const struct ktls_keys *k,
                   const struct ktls_crypto *ci, struct ktls_user *u);
/* Count in u->asked the peer's KeyUpdates that ask for ours (the SSL's
 * message callback: OpenSSL would answer only in a write of its own). */
void ktls_user_watch(const struct ossl *o, SSL *ssl, struct ktls_user *u);
/* One record of content `type` holding p[0..n), n <= KTLS_USER_MAX, into
 * out[0..n + KTLS_USER_OVERHEAD) (not overlapping p).  0 or -1. */
int ktls_user_seal(const struct ossl *o, struct ktls_user *u, int type,
                   const unsigned char *p, size_t n, unsigned char *out);
/* Our KeyUpdate went out (sealed under the current key): the next traffic
 * secret's key from the next record on.  0 or -1. */
int ktls_user_rekey(const struct ossl *o, struct ktls_user *u);
/* Idle: the EVP context is freed (some 3 KiB); the next seal makes it
 * again from the secret. */
void ktls_user_trim(const struct ossl *o, struct ktls_user *u);
/* Free and wipe (u itself is the caller's). */
void ktls_user_free(const struct ossl *o, struct ktls_user *u);

#endif
