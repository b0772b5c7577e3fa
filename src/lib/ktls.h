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

#endif
