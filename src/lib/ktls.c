/* ktls.c - kernel TLS: watching a handshake for its keys, deriving the
 * kernel's crypto_info from them, and attaching the tls ULP (see ktls.h). */
#include "lib/ktls.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

#define NID_AES_128_GCM 895
#define NID_AES_256_GCM 901
#define TLS12 0x0303
#define TLS13 0x0304
#define RT_CHANGE_CIPHER_SPEC 20
#define RT_HANDSHAKE 22
#define RT_HEADER 0x100          /* the message callback's "a record header" */
#define MT_FINISHED 20

_Static_assert(offsetof(struct tls12_crypto_info_aes_gcm_128, rec_seq) ==
               sizeof(struct tls_crypto_info) + 8 + 16 + 4, "the kernel's layout");
_Static_assert(offsetof(struct tls12_crypto_info_aes_gcm_256, rec_seq) ==
               sizeof(struct tls_crypto_info) + 8 + 32 + 4, "the kernel's layout");

/* The keylog callback gets only the SSL, and finds its watch through an
 * ex_data index and OpenSSL's SSL_get_ex_data: process-wide, like the
 * index itself (OpenSSL's), written once in effect (every module's table
 * holds the same function; the first index made wins, the others' are
 * never used). */
static atomic_int ex_index = -1;
static void *(*_Atomic get_ex_data)(const SSL *, int);

static int
hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* "LABEL <client random> <secret>": our side's TLS 1.3 traffic secret 0
 * is kept; every other line, and every SSL not watched, is ignored. */
static void
keylog(const SSL *ssl, const char *line)
{
    int idx = atomic_load_explicit(&ex_index, memory_order_relaxed);
    void *(*get)(const SSL *, int) = atomic_load_explicit(&get_ex_data, memory_order_relaxed);
    struct ktls_keys *k = idx >= 0 && get != NULL ? get(ssl, idx) : NULL;
    if (k == NULL)
        return;
    const char *want = k->server ? "SERVER_TRAFFIC_SECRET_0 " : "CLIENT_TRAFFIC_SECRET_0 ";
    size_t wl = strlen(want);
    if (strncmp(line, want, wl) != 0)
        return;
    const char *hex = strchr(line + wl, ' ');
    if (hex == NULL)
        return;
    hex++;
    size_t n = strlen(hex) / 2;
    if (n > sizeof(k->wsecret) || strlen(hex) % 2 != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            ktls_wipe(k->wsecret, sizeof(k->wsecret));
            return;
        }
        k->wsecret[i] = (unsigned char)(hi << 4 | lo);
    }
    k->wsecret_len = (uint8_t)n;
}

/* Every record we write is counted from our last key change on: the
 * header's callback comes as the record is written, the message's after
 * it, so the count after a change is the next record's number. */
static void
on_message(int write_p, int version, int type, const void *buf, size_t len,
           SSL *ssl, void *arg)
{
    (void)ssl;
    struct ktls_keys *k = arg;
    if (!write_p)
        return;
    if (type == RT_HEADER)
        k->wrec++;
    else if (type == RT_CHANGE_CIPHER_SPEC && version != TLS13)
        k->wrec = 0;   /* 1.2: our Finished is the new key's record 0 */
    else if (type == RT_HANDSHAKE && version == TLS13 && len > 0 &&
             *(const unsigned char *)buf == MT_FINISHED)
        k->wrec = 0;   /* 1.3: after our Finished, the traffic key */
}

int
ktls_prepare_ctx(const struct ossl *o, SSL_CTX *ctx)
{
    if (!o->has_ktls)
        return -1;
    if (atomic_load_explicit(&ex_index, memory_order_relaxed) < 0) {
        int idx = o->CRYPTO_get_ex_new_index(OSSL_CRYPTO_EX_INDEX_SSL, 0, NULL,
                                             NULL, NULL, NULL);
        if (idx < 0)
            return -1;
        int none = -1;
        atomic_compare_exchange_strong(&ex_index, &none, idx);
        atomic_store_explicit(&get_ex_data, o->SSL_get_ex_data, memory_order_relaxed);
    }
    if (o->SSL_CTX_get_keylog_callback(ctx) == NULL)
        o->SSL_CTX_set_keylog_callback(ctx, keylog);
    return 0;
}

int
ktls_watch(const struct ossl *o, SSL *ssl, struct ktls_keys *k, int server)
{
    int idx = atomic_load_explicit(&ex_index, memory_order_relaxed);
    memset(k, 0, sizeof(*k));
    k->server = (uint8_t)(server != 0);
    if (idx < 0 || o->SSL_set_ex_data(ssl, idx, k) != 1)
        return -1;
    o->SSL_set_msg_callback(ssl, on_message);
    o->SSL_ctrl(ssl, OSSL_CTRL_SET_MSG_CALLBACK_ARG, 0, k);
    return 0;
}

void
ktls_unwatch(const struct ossl *o, SSL *ssl)
{
    int idx = atomic_load_explicit(&ex_index, memory_order_relaxed);
    o->SSL_set_msg_callback(ssl, NULL);
    o->SSL_ctrl(ssl, OSSL_CTRL_SET_MSG_CALLBACK_ARG, 0, NULL);
    if (idx >= 0)
        o->SSL_set_ex_data(ssl, idx, NULL);
}

void
ktls_wipe(void *p, size_t n)
{
    explicit_bzero(p, n);
}

/* HMAC(md, key, a || b) into out (hlen bytes).  0 or -1. */
static int
hmac2(const struct ossl *o, const EVP_MD *md, const unsigned char *key,
      size_t klen, const unsigned char *a, size_t alen,
      const unsigned char *b, size_t blen, unsigned char *out)
{
    unsigned char data[256];
    unsigned int olen = 0;
    if (alen + blen > sizeof(data))
        return -1;
    memcpy(data, a, alen);
    if (blen != 0)
        memcpy(data + alen, b, blen);
    int ok = o->HMAC(md, key, (int)klen, data, alen + blen, out, &olen) != NULL;
    ktls_wipe(data, sizeof(data));
    return ok ? 0 : -1;
}

/* TLS 1.3's HKDF-Expand-Label(secret, label, "", n), n at most the hash's
 * length (one HMAC block: T(1)). */
static int
expand_label(const struct ossl *o, const EVP_MD *md, const unsigned char *secret,
             size_t slen, const char *label, unsigned char *out, size_t n)
{
    unsigned char info[64], t[64];
    size_t ll = 6 + strlen(label), k = 0;
    info[k++] = (unsigned char)(n >> 8);
    info[k++] = (unsigned char)n;
    info[k++] = (unsigned char)ll;
    memcpy(info + k, "tls13 ", 6);
    memcpy(info + k + 6, label, ll - 6);
    k += ll;
    info[k++] = 0;        /* no context */
    info[k++] = 1;        /* T(1) = HMAC(secret, info || 0x01) */
    if (n > slen || hmac2(o, md, secret, slen, info, k, NULL, 0, t) < 0)
        return -1;
    memcpy(out, t, n);
    ktls_wipe(t, sizeof(t));
    return 0;
}

/* TLS 1.2's PRF (P_hash, RFC 5246 5): n bytes of
 * PRF(secret, label, seed) into out. */
static int
prf12(const struct ossl *o, const EVP_MD *md, size_t hlen,
      const unsigned char *secret, size_t slen, const unsigned char *seed,
      size_t seedlen, unsigned char *out, size_t n)
{
    unsigned char a[64], t[64];
    if (hmac2(o, md, secret, slen, seed, seedlen, NULL, 0, a) < 0)   /* A(1) */
        return -1;
    for (size_t done = 0; done < n; done += hlen) {
        if (hmac2(o, md, secret, slen, a, hlen, seed, seedlen, t) < 0 ||
            hmac2(o, md, secret, slen, a, hlen, NULL, 0, a) < 0)
            return -1;
        memcpy(out + done, t, n - done < hlen ? n - done : hlen);
    }
    ktls_wipe(a, sizeof(a));
    ktls_wipe(t, sizeof(t));
    return 0;
}

int
ktls_tx_info(const struct ossl *o, SSL *ssl, const struct ktls_keys *k,
             struct ktls_crypto *out)
{
    const SSL_CIPHER *ci = o->SSL_get_current_cipher(ssl);
    int version = o->SSL_version(ssl);
    if (ci == NULL || (version != TLS12 && version != TLS13))
        return -ENOTSUP;
    int nid = o->SSL_CIPHER_get_cipher_nid(ci);
    size_t klen = nid == NID_AES_128_GCM ? 16 : nid == NID_AES_256_GCM ? 32 : 0;
    const EVP_MD *md = o->SSL_CIPHER_get_handshake_digest(ci);
    size_t hlen = klen == 16 ? 32 : 48;   /* GCM suites: SHA-256, SHA-384 */
    if (klen == 0 || md == NULL)
        return -ENOTSUP;
    unsigned char key[32], iv[12];   /* iv: salt (4) and the rest (8) */
    if (version == TLS13) {
        if (k->wsecret_len != hlen)
            return -ENOKEY;
        if (expand_label(o, md, k->wsecret, hlen, "key", key, klen) < 0 ||
            expand_label(o, md, k->wsecret, hlen, "iv", iv, 12) < 0)
            return -EIO;
    } else {
        /* key_block = PRF(master, "key expansion", server_random +
         * client_random): client key, server key, client IV, server IV
         * (GCM: 4 bytes each, the implicit part of the nonce). */
        unsigned char master[48], seed[13 + 64], block[2 * 32 + 2 * 4];
        size_t mlen = o->SSL_SESSION_get_master_key(o->SSL_get_session(ssl),
                                                     master, sizeof(master));
        memcpy(seed, "key expansion", 13);
        if (mlen == 0 ||
            o->SSL_get_server_random(ssl, seed + 13, 32) != 32 ||
            o->SSL_get_client_random(ssl, seed + 45, 32) != 32 ||
            prf12(o, md, hlen, master, mlen, seed, sizeof(seed), block,
                  2 * klen + 8) < 0) {
            ktls_wipe(master, sizeof(master));
            return -EIO;
        }
        memcpy(key, block + (k->server ? klen : 0), klen);
        memcpy(iv, block + 2 * klen + (k->server ? 4 : 0), 4);
        /* The explicit nonce is ours to choose, different for every
         * record under the key: the sequence number, as the kernel then
         * advances both together.  (OpenSSL's own records under this key,
         * our Finished and any before the switch, used nonces from a random
         * start: a collision with the few of them is a 2^-64 chance.) */
        for (int i = 0; i < 8; i++)
            iv[4 + i] = (unsigned char)(k->wrec >> (56 - 8 * i));
        ktls_wipe(master, sizeof(master));
        ktls_wipe(block, sizeof(block));
    }
    memset(out, 0, sizeof(*out));
    unsigned char seq[8];
    for (int i = 0; i < 8; i++)
        seq[i] = (unsigned char)(k->wrec >> (56 - 8 * i));
    /* Both layouts: the header, iv (8), key, salt (4), rec_seq (8). */
    unsigned char *p = (unsigned char *)&out->u + sizeof(struct tls_crypto_info);
    out->u.info.version = version == TLS13 ? TLS_1_3_VERSION : TLS_1_2_VERSION;
    out->u.info.cipher_type = klen == 16 ? TLS_CIPHER_AES_GCM_128 : TLS_CIPHER_AES_GCM_256;
    out->len = klen == 16 ? sizeof(out->u.g128) : sizeof(out->u.g256);
    memcpy(p, iv + 4, 8);
    memcpy(p + 8, key, klen);
    memcpy(p + 8 + klen, iv, 4);
    memcpy(p + 12 + klen, seq, 8);
    ktls_wipe(key, sizeof(key));
    ktls_wipe(iv, sizeof(iv));
    return 0;
}

int
ktls_tx_enable(int fd, const struct ktls_crypto *ci)
{
    if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) < 0)
        return -errno;
    if (setsockopt(fd, SOL_TLS, TLS_TX, &ci->u, ci->len) < 0)
        return -errno;   /* (the ULP stays, inert: the socket sends as
                            before) */
    return 0;
}

int
ktls_user_init(const struct ossl *o, SSL *ssl, const struct ktls_keys *k,
               const struct ktls_crypto *ci, struct ktls_user *u)
{
    memset(u, 0, sizeof(*u));
    const SSL_CIPHER *c = o->SSL_get_current_cipher(ssl);
    if (ci->u.info.version != TLS_1_3_VERSION || c == NULL)
        return -ENOTSUP;
    u->klen = ci->u.info.cipher_type == TLS_CIPHER_AES_GCM_128 ? 16 : 32;
    u->md = o->SSL_CIPHER_get_handshake_digest(c);
    u->hlen = k->wsecret_len;
    if (u->md == NULL || u->hlen > sizeof(u->secret))
        return -ENOTSUP;
    memcpy(u->secret, k->wsecret, u->hlen);
    /* ci's layout (see ktls_tx_info): iv (8), key, salt (4), rec_seq (8) */
    const unsigned char *p = (const unsigned char *)&ci->u + sizeof(struct tls_crypto_info);
    memcpy(u->iv, p + 8 + u->klen, 4);
    memcpy(u->iv + 4, p, 8);
    for (int i = 0; i < 8; i++)
        u->seq = u->seq << 8 | p[12 + u->klen + i];
    u->ctx = o->EVP_CIPHER_CTX_new();
    if (u->ctx == NULL ||
        o->EVP_EncryptInit_ex(u->ctx, u->klen == 16 ? o->EVP_aes_128_gcm()
                                                    : o->EVP_aes_256_gcm(),
                              NULL, p + 8, NULL) != 1) {
        ktls_user_free(o, u);
        return -EIO;
    }
    return 0;
}

#define MT_KEY_UPDATE 24

static void
on_peer_message(int write_p, int version, int type, const void *buf,
                size_t len, SSL *ssl, void *arg)
{
    (void)version, (void)ssl;
    const unsigned char *m = buf;
    struct ktls_user *u = arg;
    /* KeyUpdate: type, 3-byte length (1), request_update (1: asked) */
    if (!write_p && type == RT_HANDSHAKE && len >= 5 && m[0] == MT_KEY_UPDATE &&
        m[4] == 1)
        u->asked++;
}

void
ktls_user_watch(const struct ossl *o, SSL *ssl, struct ktls_user *u)
{
    o->SSL_set_msg_callback(ssl, on_peer_message);
    o->SSL_ctrl(ssl, OSSL_CTRL_SET_MSG_CALLBACK_ARG, 0, u);
}

/* u's EVP context keyed from its secret (ktls_user_trim freed it). */
static int
user_key(const struct ossl *o, struct ktls_user *u)
{
    unsigned char key[32];
    int ok = expand_label(o, u->md, u->secret, u->hlen, "key", key, u->klen) == 0 &&
             (u->ctx = o->EVP_CIPHER_CTX_new()) != NULL &&
             o->EVP_EncryptInit_ex(u->ctx, u->klen == 16 ? o->EVP_aes_128_gcm()
                                                         : o->EVP_aes_256_gcm(),
                                   NULL, key, NULL) == 1;
    ktls_wipe(key, sizeof(key));
    if (!ok && u->ctx != NULL) {
        o->EVP_CIPHER_CTX_free(u->ctx);
        u->ctx = NULL;
    }
    return ok ? 0 : -1;
}

void
ktls_user_trim(const struct ossl *o, struct ktls_user *u)
{
    if (u->ctx != NULL)
        o->EVP_CIPHER_CTX_free(u->ctx);
    u->ctx = NULL;
}

int
ktls_user_seal(const struct ossl *o, struct ktls_user *u, int type,
               const unsigned char *p, size_t n, unsigned char *out)
{
    unsigned char nonce[12], ct = (unsigned char)type;
    size_t len = n + 1 + 16;   /* TLSInnerPlaintext (no padding), tag */
    int l;
    if (u->ctx == NULL && user_key(o, u) < 0)
        return -1;
    memcpy(nonce, u->iv, 12);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] ^= (unsigned char)(u->seq >> (56 - 8 * i));
    out[0] = KTLS_RT_APPLICATION_DATA;   /* (every 1.3 record's outer type) */
    out[1] = 3;
    out[2] = 3;
    out[3] = (unsigned char)(len >> 8);
    out[4] = (unsigned char)len;
    if (n > KTLS_USER_MAX ||
        o->EVP_EncryptInit_ex(u->ctx, NULL, NULL, NULL, nonce) != 1 ||
        o->EVP_EncryptUpdate(u->ctx, NULL, &l, out, 5) != 1 ||   /* AAD */
        (n != 0 && (o->EVP_EncryptUpdate(u->ctx, out + 5, &l, p, (int)n) != 1 ||
                    (size_t)l != n)) ||
        o->EVP_EncryptUpdate(u->ctx, out + 5 + n, &l, &ct, 1) != 1 || l != 1 ||
        o->EVP_EncryptFinal_ex(u->ctx, out + 6 + n, &l) != 1 ||
        o->EVP_CIPHER_CTX_ctrl(u->ctx, OSSL_EVP_CTRL_AEAD_GET_TAG, 16,
                               out + 6 + n) != 1)
        return -1;
    u->seq++;
    return 0;
}

int
ktls_user_rekey(const struct ossl *o, struct ktls_user *u)
{
    unsigned char next[48], key[32];
    int rc = -1;
    if (expand_label(o, u->md, u->secret, u->hlen, "traffic upd", next, u->hlen) == 0 &&
        expand_label(o, u->md, next, u->hlen, "key", key, u->klen) == 0 &&
        expand_label(o, u->md, next, u->hlen, "iv", u->iv, 12) == 0 &&
        (u->ctx == NULL || o->EVP_EncryptInit_ex(u->ctx, NULL, NULL, key, NULL) == 1)) {
        memcpy(u->secret, next, u->hlen);
        u->seq = 0;
        rc = 0;
    }
    ktls_wipe(next, sizeof(next));
    ktls_wipe(key, sizeof(key));
    return rc;
}

void
ktls_user_free(const struct ossl *o, struct ktls_user *u)
{
    if (u->ctx != NULL)
        o->EVP_CIPHER_CTX_free(u->ctx);
    u->ctx = NULL;
    ktls_wipe(u->secret, sizeof(u->secret));
    ktls_wipe(u->iv, sizeof(u->iv));
}
