/* ktls_test.c - the key material src/lib/ktls.c would give the kernel,
 * checked against OpenSSL itself.  Two SSLs shake hands in memory, watched
 * as the core watches its own (ktls_prepare_ctx, ktls_watch); then the
 * next application record one of them writes is decrypted with the key,
 * salt, IV and record sequence number of the crypto_info that
 * ktls_tx_info derives (EVP AES-GCM): if the kernel had been given that
 * crypto_info, it would have made the same record.  TLS 1.2 and 1.3,
 * AES-128-GCM and AES-256-GCM, the server's side and the client's, with
 * 0 to 3 session tickets before.  Also: an SSL not watched is left alone
 * by our keylog callback, a context's own keylog callback is kept (TLS 1.3
 * then says -ENOKEY), ChaCha20 is -ENOTSUP, and attaching the tls ULP to a
 * TCP socket on 127.0.0.1 works or says ENOENT (no tls ULP here).
 *
 * Built by tests/test_tls.py with ASan and UBSan, linked with -lssl
 * -lcrypto (skipped without OpenSSL's headers); lib/ossl.c finds OpenSSL's
 * functions in this program, as it finds them in Python's _ssl.
 * argv[1]: a PEM holding a private key and its certificate chain.  Exit 0
 * when every check holds; a failed check prints it and exits 1. */
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "lib/ktls.h"
#include "lib/ossl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                      \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

static struct ossl o;
static const char *pem;
static int others_lines;   /* lines the context's own keylog callback got */

static void
others_keylog(const SSL *ssl, const char *line)
{
    (void)ssl, (void)line;
    others_lines++;
}

/* Everything one side wrote, to the other. */
static void
pump(BIO *from, BIO *to)
{
    char buf[16384];
    int n;
    while ((n = BIO_read(from, buf, sizeof(buf))) > 0)
        CHECK(BIO_write(to, buf, n) == n);
}

struct pair {
    SSL_CTX *sctx, *cctx;
    SSL *s, *c;
    BIO *s_out, *c_out;          /* what each wrote (the SSL owns them) */
    BIO *s_in, *c_in;
};

static void
pair_new(struct pair *p, int version, const char *suite, int tickets,
         int prepare, ossl_keylog_cb own)
{
    p->sctx = SSL_CTX_new(TLS_server_method());
    p->cctx = SSL_CTX_new(TLS_client_method());
    CHECK(p->sctx != NULL && p->cctx != NULL);
    CHECK(SSL_CTX_use_certificate_chain_file(p->sctx, pem) == 1);
    CHECK(SSL_CTX_use_PrivateKey_file(p->sctx, pem, SSL_FILETYPE_PEM) == 1);
    SSL_CTX *both[2] = {p->sctx, p->cctx};
    for (int i = 0; i < 2; i++) {
        CHECK(SSL_CTX_set_min_proto_version(both[i], version) == 1);
        CHECK(SSL_CTX_set_max_proto_version(both[i], version) == 1);
        if (version == TLS1_3_VERSION)
            CHECK(SSL_CTX_set_ciphersuites(both[i], suite) == 1);
        else
            CHECK(SSL_CTX_set_cipher_list(both[i], suite) == 1);
        if (own != NULL)
            SSL_CTX_set_keylog_callback(both[i], own);
        if (prepare)
            CHECK(ktls_prepare_ctx(&o, both[i]) == 0);
    }
    CHECK(SSL_CTX_set_num_tickets(p->sctx, (size_t)tickets) == 1);
    p->s = SSL_new(p->sctx);
    p->c = SSL_new(p->cctx);
    CHECK(p->s != NULL && p->c != NULL);
    p->s_in = BIO_new(BIO_s_mem());
    p->s_out = BIO_new(BIO_s_mem());
    p->c_in = BIO_new(BIO_s_mem());
    p->c_out = BIO_new(BIO_s_mem());
    SSL_set_bio(p->s, p->s_in, p->s_out);
    SSL_set_bio(p->c, p->c_in, p->c_out);
    SSL_set_accept_state(p->s);
    SSL_set_connect_state(p->c);
}

/* The handshake, and whatever follows it (session tickets) read. */
static void
pair_shake(struct pair *p)
{
    for (int i = 0; i < 10 && !(SSL_is_init_finished(p->s) &&
                                SSL_is_init_finished(p->c)); i++) {
        SSL_do_handshake(p->c);
        pump(p->c_out, p->s_in);
        SSL_do_handshake(p->s);
        pump(p->s_out, p->c_in);
    }
    CHECK(SSL_is_init_finished(p->s) && SSL_is_init_finished(p->c));
    char buf[64];
    CHECK(SSL_read(p->c, buf, sizeof(buf)) <= 0);   /* the tickets */
    CHECK(SSL_get_error(p->c, -1) == SSL_ERROR_WANT_READ);
    CHECK(SSL_read(p->s, buf, sizeof(buf)) <= 0);
    pump(p->c_out, p->s_in);
    pump(p->s_out, p->c_in);
}

static void
pair_free(struct pair *p)
{
    SSL_free(p->s);
    SSL_free(p->c);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
}

static uint64_t
be64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

/* rec[0..n): one application record; decrypt it with ci and find msg. */
static void
check_record(const struct ktls_crypto *ci, const unsigned char *rec, size_t n,
             const char *msg, size_t mlen)
{
    const unsigned char *key, *salt, *iv, *seq;
    const EVP_CIPHER *cipher;
    if (ci->u.info.cipher_type == TLS_CIPHER_AES_GCM_128) {
        CHECK(ci->len == sizeof(ci->u.g128));
        key = ci->u.g128.key, salt = ci->u.g128.salt;
        iv = ci->u.g128.iv, seq = ci->u.g128.rec_seq;
        cipher = EVP_aes_128_gcm();
    } else {
        CHECK(ci->u.info.cipher_type == TLS_CIPHER_AES_GCM_256);
        CHECK(ci->len == sizeof(ci->u.g256));
        key = ci->u.g256.key, salt = ci->u.g256.salt;
        iv = ci->u.g256.iv, seq = ci->u.g256.rec_seq;
        cipher = EVP_aes_256_gcm();
    }
    CHECK(n > 5 + 16 && rec[0] == 23 && rec[1] == 3 && rec[2] == 3);
    size_t rlen = (size_t)rec[3] << 8 | rec[4];
    CHECK(rlen + 5 == n);
    unsigned char nonce[12], aad[13];
    size_t aadlen;
    const unsigned char *ct;
    size_t ctlen;
    if (ci->u.info.version == TLS_1_3_VERSION) {
        /* nonce: the IV (salt, iv) xor the sequence number; AAD: the
         * record's header */
        memcpy(nonce, salt, 4);
        memcpy(nonce + 4, iv, 8);
        for (int i = 0; i < 8; i++)
            nonce[4 + i] ^= seq[i];
        memcpy(aad, rec, 5);
        aadlen = 5;
        ct = rec + 5;
        ctlen = rlen - 16;
    } else {
        /* nonce: the salt and the record's explicit part; AAD: sequence
         * number, type, version, plaintext length.  What the kernel would
         * put as the explicit part (iv) is the sequence number. */
        CHECK(ci->u.info.version == TLS_1_2_VERSION);
        CHECK(memcmp(iv, seq, 8) == 0);
        memcpy(nonce, salt, 4);
        memcpy(nonce + 4, rec + 5, 8);
        ct = rec + 13;
        ctlen = rlen - 8 - 16;
        memcpy(aad, seq, 8);
        aad[8] = 23;
        aad[9] = 3;
        aad[10] = 3;
        aad[11] = (unsigned char)(ctlen >> 8);
        aad[12] = (unsigned char)ctlen;
        aadlen = 13;
    }
    unsigned char pt[1024];
    int len = 0, fin = 0;
    CHECK(ctlen <= sizeof(pt));
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    CHECK(x != NULL);
    CHECK(EVP_DecryptInit_ex(x, cipher, NULL, NULL, NULL) == 1);
    CHECK(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1);
    CHECK(EVP_DecryptInit_ex(x, NULL, NULL, key, nonce) == 1);
    CHECK(EVP_DecryptUpdate(x, NULL, &len, aad, (int)aadlen) == 1);
    CHECK(EVP_DecryptUpdate(x, pt, &len, ct, (int)ctlen) == 1);
    CHECK(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, 16,
                              (void *)(uintptr_t)(ct + ctlen)) == 1);
    CHECK(EVP_DecryptFinal_ex(x, pt + len, &fin) == 1);   /* the tag holds */
    EVP_CIPHER_CTX_free(x);
    len += fin;
    if (ci->u.info.version == TLS_1_3_VERSION) {
        CHECK((size_t)len >= mlen + 1 && pt[mlen] == 23);   /* inner type */
        for (int i = (int)mlen + 1; i < len; i++)
            CHECK(pt[i] == 0);   /* padding */
    } else {
        CHECK((size_t)len == mlen);
    }
    CHECK(memcmp(pt, msg, mlen) == 0);
}

/* One case: `writer` (1: the server) writes after the handshake, having
 * written `tickets` session tickets (TLS 1.3 server) before; the record
 * must decrypt with what ktls_tx_info says, and its number be `want_seq`. */
static void
key_case(int version, const char *suite, int writer_server, int tickets,
         uint64_t want_seq)
{
    struct pair p;
    struct ktls_keys ks, kc;
    pair_new(&p, version, suite, tickets, 1, NULL);
    CHECK(ktls_watch(&o, p.s, &ks, 1) == 0);
    CHECK(ktls_watch(&o, p.c, &kc, 0) == 0);
    pair_shake(&p);
    ktls_unwatch(&o, p.s);
    ktls_unwatch(&o, p.c);
    SSL *w = writer_server ? p.s : p.c;
    BIO *out = writer_server ? p.s_out : p.c_out;
    struct ktls_crypto ci;
    CHECK(ktls_tx_info(&o, w, writer_server ? &ks : &kc, &ci) == 0);
    const unsigned char *seq = ci.u.info.cipher_type == TLS_CIPHER_AES_GCM_128
                                   ? ci.u.g128.rec_seq : ci.u.g256.rec_seq;
    if (be64(seq) != want_seq)
        fprintf(stderr, "sequence %llu, want %llu\n",
                (unsigned long long)be64(seq), (unsigned long long)want_seq);
    CHECK(be64(seq) == want_seq);
    CHECK(BIO_pending(out) == 0);
    static const char msg[] = "the next record, as the kernel would make it";
    CHECK(SSL_write(w, msg, sizeof(msg)) == (int)sizeof(msg));
    unsigned char rec[1024];
    int n = BIO_read(out, rec, sizeof(rec));
    CHECK(n > 0 && BIO_pending(out) == 0);
    check_record(&ci, rec, (size_t)n, msg, sizeof(msg));
    /* and a second one, the sequence number one further */
    CHECK(SSL_write(w, msg, 5) == 5);
    n = BIO_read(out, rec, sizeof(rec));
    CHECK(n > 0);
    unsigned char *s2 = ci.u.info.cipher_type == TLS_CIPHER_AES_GCM_128
                            ? ci.u.g128.rec_seq : ci.u.g256.rec_seq;
    uint64_t next = want_seq + 1;
    for (int i = 7; i >= 0; i--, next >>= 8)
        s2[i] = (unsigned char)next;
    if (ci.u.info.version == TLS_1_2_VERSION)
        memcpy(ci.u.info.cipher_type == TLS_CIPHER_AES_GCM_128 ? ci.u.g128.iv
                                                                : ci.u.g256.iv, s2, 8);
    check_record(&ci, rec, (size_t)n, msg, 5);
    ktls_wipe(&ci, sizeof(ci));
    pair_free(&p);
}

static void
test_keys(void)
{
    static const struct {
        int version;
        const char *suite;
    } suites[] = {
        {TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256"},
        {TLS1_3_VERSION, "TLS_AES_256_GCM_SHA384"},
        {TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"},
        {TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"},
    };
    for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++) {
        int v13 = suites[i].version == TLS1_3_VERSION;
        for (int tickets = 0; tickets <= 3; tickets += 2) {
            /* TLS 1.3: the server's tickets are records under its traffic
             * key; the client has written nothing under its own.  TLS 1.2:
             * each side's Finished was record 0 under the new key. */
            key_case(suites[i].version, suites[i].suite, 1, tickets,
                     v13 ? (uint64_t)tickets : 1);
            key_case(suites[i].version, suites[i].suite, 0, tickets, v13 ? 0 : 1);
        }
    }
}

/* SSLs nobody watches (Python's own, from the same context) are left
 * alone by our keylog callback; a context's own callback is kept, and a
 * TLS 1.3 session then has no keys for the kernel. */
static void
test_not_ours(void)
{
    struct pair p;
    pair_new(&p, TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", 2, 1, NULL);
    pair_shake(&p);   /* not watched: the callback ran and did nothing */
    pair_free(&p);

    struct ktls_keys ks;
    others_lines = 0;
    pair_new(&p, TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", 2, 1, others_keylog);
    CHECK(SSL_CTX_get_keylog_callback(p.sctx) == others_keylog);
    CHECK(ktls_watch(&o, p.s, &ks, 1) == 0);
    pair_shake(&p);
    ktls_unwatch(&o, p.s);
    CHECK(others_lines > 0);
    struct ktls_crypto ci;
    CHECK(ktls_tx_info(&o, p.s, &ks, &ci) == -ENOKEY);
    pair_free(&p);

    pair_new(&p, TLS1_3_VERSION, "TLS_CHACHA20_POLY1305_SHA256", 0, 1, NULL);
    CHECK(ktls_watch(&o, p.s, &ks, 1) == 0);
    pair_shake(&p);
    ktls_unwatch(&o, p.s);
    CHECK(ktls_tx_info(&o, p.s, &ks, &ci) == -ENOTSUP);
    pair_free(&p);
}

/* The ULP on a real TCP connection on 127.0.0.1: taken, or ENOENT. */
static void
test_enable(void)
{
    int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(l >= 0 && c >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    CHECK(bind(l, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(l, 1) == 0);
    CHECK(getsockname(l, (struct sockaddr *)&a, &alen) == 0);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof(a)) == 0);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0);
    struct ktls_crypto ci;
    memset(&ci, 0, sizeof(ci));
    ci.u.info.version = TLS_1_3_VERSION;
    ci.u.info.cipher_type = TLS_CIPHER_AES_GCM_128;
    ci.len = sizeof(ci.u.g128);
    int rc = ktls_tx_enable(s, &ci);
    printf("ktls_tx_enable on 127.0.0.1: %s\n", rc == 0 ? "taken" : strerror(-rc));
    CHECK(rc == 0 || rc == -ENOENT);
    if (rc == -ENOENT) {   /* the socket is as it was */
        CHECK(write(s, "x", 1) == 1);
        char b;
        CHECK(read(c, &b, 1) == 1 && b == 'x');
    }
    close(s);
    close(c);
    close(l);
}

int
main(int argc, char **argv)
{
    CHECK(argc == 2);
    pem = argv[1];
    char err[256];
    if (ossl_load(&o, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "ossl_load: %s\n", err);
        return 1;
    }
    test_keys();
    test_not_ours();
    test_enable();
    ossl_unload(&o);
    printf("ok\n");
    return 0;
}
