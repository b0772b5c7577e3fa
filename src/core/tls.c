/* tls.c - TLS on a connection: OpenSSL's records between the engine's
 * bytes and the framer, on the worker that owns the connection (the only
 * thread that ever touches its SSL).
 *
 * The SSL talks to a BIO pair: two rings, ciphertext in and ciphertext
 * out, which this file reaches in place (BIO_nwrite0, BIO_nread0): a
 * receive's bytes are copied into the in-ring once, and the out-ring's
 * bytes are sent from where they lie (a memory BIO would copy both ways,
 * and clear what it appends before copying it).
 * In: each receive's ciphertext goes into the in-ring, as much as it takes
 * at a time; the handshake advances, or the plaintext goes to rbuf, where
 * recv.c frames it as it frames any connection's bytes.
 * Out: users queue plaintext as on any connection (send.c); the worker
 * seals it (SSL_write, into the out-ring while it has room) and sends the
 * ring's bytes.  The ciphertext not yet with the kernel counts as unsent
 * (c->tls_queued), so backpressure and "every reply is out" see it.
 * Closing: our graceful close sends close_notify before the FIN; the
 * peer's close_notify ends the input as a FIN does; a FIN without it is
 * CLOSE_TLS_EOF; a TLS failure is CLOSE_TLS, and the alert OpenSSL queued
 * for the peer goes out before our FIN. */
#include "core/internal.h"

#include "lib/ossl.h"

#include <arpa/inet.h>
#include <stdio.h>

/* The rings: ciphertext in, and out (sealing waits while it is full). */
#define TLS_IN_RING (16 * 1024)
#define TLS_OUT_RING (64 * 1024)
/* Plaintext sealed per SSL_write. */
#define TLS_SEAL_MAX (64 * 1024)
/* Room made in rbuf for one SSL_read: a record's plaintext at most. */
#define TLS_READ (16 * 1024)

struct tls {
    const struct ossl *o;
    SSL *ssl;
    BIO *net;                    /* the pair's network side (the SSL owns
                                    the other) */
    int64_t deadline;            /* the handshake fails at this time (ms) */
    uint8_t got_bytes;           /* the peer sent something */
    uint8_t done;                /* the handshake is over */
    uint8_t failed;              /* a TLS failure: nothing more is sealed */
    uint8_t notified;            /* our close_notify is queued */
    uint8_t peer_notified;       /* the peer's close_notify came */
    uint8_t stalled;             /* reading waits for room in the out-ring
                                    (a reply OpenSSL owes, a key update) */
    atomic_int ready;            /* info is set: any thread may read it */
    struct tls_info info;
    long verify;                 /* X509_V_ERR code of a failed
                                    verification, or 0 */
    char why[200];               /* a failure, for the log and Python */
};

/* The out-ring's bytes: with the engine or waiting for it. */
static void
update_queued(struct conn *c)
{
    struct tls *t = c->tls;
    size_t q = t->o->BIO_ctrl_pending(t->net);
    atomic_store_explicit(&c->tls_queued, q, memory_order_relaxed);
}

int
tls_attach(struct conn *c, const struct tls_config *cfg)
{
    const struct ossl *o = cfg->o;
    const char *host = cfg->host;
    struct tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    t->o = o;
    o->ERR_clear_error();
    BIO *inner;
    t->ssl = o->SSL_new(cfg->ctx);
    if (t->ssl == NULL ||
        o->BIO_new_bio_pair(&inner, TLS_OUT_RING, &t->net, TLS_IN_RING) != 1)
        goto fail;
    /* (The rings are allocated at their first bytes.) */
    o->SSL_set_bio(t->ssl, inner, inner);
    o->SSL_ctrl(t->ssl, OSSL_CTRL_MODE, OSSL_MODE_ENABLE_PARTIAL_WRITE |
                OSSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, NULL);
    o->SSL_set_options(t->ssl, OSSL_OP_NO_RENEGOTIATION);
    if (!c->outgoing) {
        o->SSL_set_accept_state(t->ssl);
    } else {
        o->SSL_set_connect_state(t->ssl);
        if (host != NULL) {
            /* As Python's ssl does: SNI for a name (never an address),
             * and the name or address checked if the context says so. */
            unsigned char a[16];
            int ip = inet_pton(AF_INET, host, a) == 1 ||
                     inet_pton(AF_INET6, host, a) == 1;
            if (!ip && o->SSL_ctrl(t->ssl, OSSL_CTRL_SET_TLSEXT_HOSTNAME,
                                   OSSL_TLSEXT_NAMETYPE_host_name,
                                   (void *)(uintptr_t)host) != 1)
                goto fail;
            if (cfg->check_host &&
                (ip ? o->X509_VERIFY_PARAM_set1_ip_asc(o->SSL_get0_param(t->ssl), host)
                    : o->SSL_set1_host(t->ssl, host)) != 1)
                goto fail;
        }
    }
    c->tls = t;
    return 0;
fail:
    if (t->ssl != NULL)
        o->SSL_free(t->ssl);   /* (and the pair's inner side) */
    if (t->net != NULL)
        o->BIO_free(t->net);
    o->ERR_clear_error();
    free(t);
    return -ENOMEM;
}

void
tls_free(struct conn *c)
{
    struct tls *t = c->tls;
    if (t == NULL)
        return;
    t->o->SSL_free(t->ssl);
    t->o->BIO_free(t->net);
    free(t->info.peer_der);
    free(t);
    c->tls = NULL;
}

/* Why the TLS layer failed, from OpenSSL's error queue (and the
 * certificate check's verdict), for the log line and Python's error. */
static void
note_failure(struct conn *c, int sslerr, int err)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    unsigned long e = o->ERR_get_error();
    long v = o->SSL_get_verify_result(t->ssl);
    t->failed = 1;
    if (v != 0 && !t->done) {
        t->verify = v;
        snprintf(t->why, sizeof(t->why), "certificate verify failed: %s",
                 o->X509_verify_cert_error_string(v));
    } else if (e != 0) {
        o->ERR_error_string_n(e, t->why, sizeof(t->why));
    } else if (err != 0) {
        snprintf(t->why, sizeof(t->why), "%s", strerror(err));
    } else {
        snprintf(t->why, sizeof(t->why), "TLS error %d", sslerr);
    }
    o->ERR_clear_error();
    conn_note_reason(c, CLOSE_TLS, err);
}

/* A TLS failure: the alert OpenSSL queued goes out, then our FIN (a
 * graceful close skips close_notify once failed). */
static void
fail(struct conn *c, int sslerr, int err)
{
    note_failure(c, sslerr, err);
    update_queued(c);
    if (c->state == CONN_OPEN)
        conn_start_drain(c);
}

/* The handshake is over: what Python may read of it, and the connection
 * is open for the dispatch layer. */
static void
established(struct conn *c)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    struct tls_info *i = &t->info;
    const SSL_CIPHER *ci = o->SSL_get_current_cipher(t->ssl);
    t->done = 1;
    i->version = o->SSL_get_version(t->ssl);
    if (ci != NULL) {
        i->cipher = o->SSL_CIPHER_get_name(ci);
        i->cipher_version = o->SSL_CIPHER_get_version(ci);
        i->bits = o->SSL_CIPHER_get_bits(ci, NULL);
    }
    const unsigned char *alpn;
    unsigned alen = 0;
    o->SSL_get0_alpn_selected(t->ssl, &alpn, &alen);
    if (alen > 0 && alen <= sizeof(i->alpn)) {
        memcpy(i->alpn, alpn, alen);
        i->alpn_len = (uint8_t)alen;
    }
    X509 *x = o->get_peer_cert(t->ssl);
    if (x != NULL) {
        int n = o->i2d_X509(x, NULL);
        unsigned char *p;
        if (n > 0 && (i->peer_der = p = malloc((size_t)n)) != NULL &&
            o->i2d_X509(x, &p) == n)
            i->peer_len = (size_t)n;
        o->X509_free(x);
    }
    atomic_store_explicit(&t->ready, 1, memory_order_release);
    struct server *s = c->w->srv;
    if (s->dops != NULL && !s->cfg.native_echo && (c->outgoing || s->cfg.want_open))
        push_entry(c->w, c, ENTRY_OPEN, NULL, 0, 0);
}

/* One step of the handshake.  1: over; 0: it goes on; -1: failed. */
static int
handshake(struct conn *c)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    o->ERR_clear_error();
    int r = o->SSL_do_handshake(t->ssl);
    if (r == 1) {
        established(c);
    } else {
        int e = o->SSL_get_error(t->ssl, r);
        if (e != OSSL_ERROR_WANT_READ && e != OSSL_ERROR_WANT_WRITE) {
            fail(c, e, 0);
            return -1;
        }
    }
    update_queued(c);
    if (c->tls_queued > 0 || t->done)
        mark_dirty(c->w, c);   /* the next flight, and what was queued
                                  meanwhile */
    return t->done;
}

void
tls_start(struct conn *c)
{
    struct tls *t = c->tls;
    int64_t ms = c->w->srv->cfg.tls_handshake_ms;
    t->deadline = ms > 0 ? c->w->now + ms : INT64_MAX;
    if (c->outgoing)
        handshake(c);   /* the ClientHello */
}

/* Plaintext into rbuf until OpenSSL wants more ciphertext.  0, or -1 when
 * the input is over (the peer's close_notify: peer_eof; or failed). */
static int
read_records(struct conn *c)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    for (;;) {
        if (recv_room(c, TLS_READ) < 0) {
            fail(c, OSSL_ERROR_SYSCALL, ENOMEM);
            return -1;
        }
        o->ERR_clear_error();
        int n = o->SSL_read(t->ssl, c->rbuf + c->rlen, TLS_READ);
        if (n > 0) {
            c->rlen += (size_t)n;
            continue;
        }
        int e = o->SSL_get_error(t->ssl, n);
        /* Post-handshake messages (session tickets, key updates) may have
         * queued records to send. */
        update_queued(c);
        if (c->tls_queued > 0)
            mark_dirty(c->w, c);
        if (e == OSSL_ERROR_WANT_READ)
            return 0;
        if (e == OSSL_ERROR_WANT_WRITE) {
            t->stalled = 1;   /* on once the ring drains (tls_sent) */
            return 0;
        }
        if (e == OSSL_ERROR_ZERO_RETURN) {
            /* close_notify: the input ends as with a FIN; replies owed
             * still go out, then ours. */
            t->peer_notified = 1;
            c->peer_eof = 1;
            mark_dirty(c->w, c);
            return -1;
        }
        fail(c, e, 0);
        return -1;
    }
}

int
tls_on_input(struct conn *c, const uint8_t *p, size_t len)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    if (t->failed || t->peer_notified)
        return -1;   /* discarded */
    t->got_bytes = 1;
    while (len > 0) {
        /* As much as the in-ring takes; OpenSSL then takes all of it. */
        char *room;
        int n = o->BIO_nwrite0(t->net, &room);
        if (n <= 0) {
            fail(c, OSSL_ERROR_SYSCALL, ENOBUFS);
            return -1;
        }
        size_t k = (size_t)n < len ? (size_t)n : len;
        memcpy(room, p, k);
        o->BIO_nwrite(t->net, &room, (int)k);
        p += k;
        len -= k;
        if (!t->done && handshake(c) <= 0) {
            if (t->failed)
                return -1;
            continue;   /* more of the peer's flight */
        }
        if (read_records(c) < 0)
            return -1;
    }
    return t->done ? 0 : 1;
}

void
tls_on_fin(struct conn *c)
{
    struct tls *t = c->tls;
    if (t->peer_notified || t->failed || c->graceful)
        return;   /* (a failure says why already; after our close() the
                     FIN ends it whatever came before) */
    if (!t->done) {
        if (t->got_bytes) {   /* (no bytes at all: a probe, plain eof) */
            snprintf(t->why, sizeof(t->why), "the peer closed during the handshake");
            t->failed = 1;
            conn_note_reason(c, CLOSE_TLS, 0);
        }
    } else {
        conn_note_reason(c, CLOSE_TLS_EOF, 0);   /* no close_notify */
    }
}

int
tls_cut_handshake(struct conn *c, int err)
{
    struct tls *t = c->tls;
    if (t->done || t->failed || !t->got_bytes || c->reason != CLOSE_NONE)
        return 0;
    snprintf(t->why, sizeof(t->why), "the handshake was cut: %s", strerror(err));
    t->failed = 1;
    return 1;
}

int
tls_expired(struct conn *c, int64_t now)
{
    struct tls *t = c->tls;
    if (t->done || t->failed || now < t->deadline || c->state > CONN_DRAINING)
        return 0;
    snprintf(t->why, sizeof(t->why), "the handshake did not finish in time");
    t->failed = 1;
    conn_fail(c, CLOSE_TLS, ETIMEDOUT);
    return 1;
}

int
tls_notify(struct conn *c)
{
    struct tls *t = c->tls;
    if (t->notified || t->failed || !t->done)
        return 0;
    t->notified = 1;
    t->o->ERR_clear_error();
    t->o->SSL_shutdown(t->ssl);   /* queues close_notify (we do not wait
                                     for the peer's here) */
    t->o->ERR_clear_error();
    update_queued(c);
    if (c->tls_queued == 0)
        return 0;
    mark_dirty(c->w, c);
    return 1;
}

/* Seal queued plaintext while the out-ring has room.  0, or -1 if the
 * connection failed. */
static int
seal(struct conn *c)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    for (;;) {
        if (sent_off(c) == c->slen && !send_swap(c))
            return 0;
        size_t soff = sent_off(c), n = c->slen - soff;
        if (t->notified || t->failed) {
            send_advance(c, n);   /* nothing follows close_notify or a
                                     fatal alert: dropped */
            continue;
        }
        o->ERR_clear_error();
        int r = o->SSL_write(t->ssl, c->sbuf + soff,
                             n > TLS_SEAL_MAX ? TLS_SEAL_MAX : (int)n);
        if (r > 0) {
            send_advance(c, (size_t)r);
            continue;
        }
        int e = o->SSL_get_error(t->ssl, r);
        if (e == OSSL_ERROR_WANT_WRITE)
            return 0;   /* the ring is full: on when it has drained */
        fail(c, e, 0);
        return -1;
    }
}

int
tls_send_out(struct conn *c)
{
    struct tls *t = c->tls;
    struct worker *w = c->w;
    const struct ossl *o = t->o;
    while (c->state <= CONN_DRAINING && !c->send_busy) {
        if ((t->done || t->failed) && seal(c) < 0 && c->state > CONN_DRAINING)
            return -1;
        /* The ring's bytes from where they lie; they stay put until
         * consumed (tls_sent), whatever OpenSSL appends meanwhile. */
        char *p;
        int n = o->BIO_nread0(t->net, &p);
        if (n <= 0)
            break;
        if (send_took(c, w->ops->send(w->be, &c->h, p, (size_t)n)) < 0)
            return -1;   /* (its bytes: tls_sent, through sent()) */
    }
    update_queued(c);
    return 0;
}

void
tls_sent(struct conn *c, size_t n)
{
    struct tls *t = c->tls;
    char *p;
    t->o->BIO_nread(t->net, &p, (int)n);
    send_counted(c, n);
    update_queued(c);
    if (!t->done && !t->failed) {
        handshake(c);   /* a flight the full ring held back */
    } else if (t->stalled) {
        t->stalled = 0;
        if (read_records(c) == 0)
            recv_resume(c);   /* frame what it read */
    }
}

const struct tls_info *
conn_tls_info(const struct conn *c)
{
    if (c->tls == NULL || !atomic_load_explicit(&c->tls->ready, memory_order_acquire))
        return NULL;
    return &c->tls->info;
}

const char *
conn_tls_error(const struct conn *c, long *verify)
{
    if (c->tls == NULL || !c->tls->failed)
        return NULL;
    *verify = c->tls->verify;
    return c->tls->why;
}

int
conn_is_tls(const struct conn *c)
{
    return c->tls != NULL;
}
