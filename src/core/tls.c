/* tls.c - TLS on a connection: OpenSSL's records between the engine's
 * bytes and the framer, on the worker that owns the connection (the only
 * thread that ever touches its SSL).
 *
 * The SSL reads and writes its ciphertext through a BIO of ours
 * (lib/ossl.h, struct ossl_io): it reads a receive's bytes from the
 * engine's buffer where they lie, and appends its records to `io.out`,
 * from which, swapped with `snd` as the send queue swaps obuf and sbuf,
 * they are sent where they lie.
 * In: each receive's ciphertext is offered to the SSL whole; the handshake
 * advances, or the plaintext goes to rbuf, where recv.c frames it as it
 * frames any connection's bytes.  OpenSSL takes all of it: reading never
 * waits for writing (the out side is never full).
 * Out: users queue plaintext as on any connection (send.c); the worker
 * seals it (SSL_write) while less than TLS_OUT_MAX of ciphertext waits,
 * and sends that.  The ciphertext not yet with the kernel counts as unsent
 * (c->tls_queued), so backpressure and "every reply is out" see it.
 * Memory: the SSL's own record buffers are kept while the connection is
 * busy (the context's SSL_MODE_RELEASE_BUFFERS, which Python sets, would
 * free and allocate them per record) and, like the ciphertext buffers,
 * given back when it is idle (tls_trim).
 * Kernel TLS (lib/ktls.h): where the kernel offers it, the handshake is
 * watched for the session's keys, and once OpenSSL's own records (the
 * handshake's, session tickets) are sent, sending goes to the kernel
 * (KERNEL_ON): the plaintext queue is sent as a plaintext connection's is,
 * and the kernel makes the records; receiving stays with OpenSSL.  What
 * OpenSSL would still write then (our close_notify, a reply to the peer's
 * KeyUpdate) cannot go through it: close_notify is sent as a record of
 * type 21 through the kernel; a KeyUpdate the peer asks us to answer fails
 * the connection (see ARCHITECTURE.md).  Where the kernel has no tls ULP
 * the first attempt says so (ENOENT), and later connections do not try.
 * Without kernel TLS, a TLS 1.3 AES-GCM server side makes its records
 * itself with the same keys (KERNEL_USER, lib/ktls.h struct ktls_user):
 * one EVP context per connection instead of SSL_write's machinery; our
 * close_notify and our KeyUpdate (when the peer's asks for it, seen by the
 * SSL's message callback) are sealed the same way.
 * Closing: our graceful close sends close_notify before the FIN; the
 * peer's close_notify ends the input as a FIN does; a FIN without it is
 * CLOSE_TLS_EOF; a TLS failure is CLOSE_TLS, and the alert OpenSSL queued
 * for the peer goes out before our FIN. */
#include "core/internal.h"

#include "lib/ktls.h"
#include "lib/ossl.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <sys/socket.h>

/* Ciphertext waiting to be sent past which sealing waits. */
#define TLS_OUT_MAX (64 * 1024)
/* Plaintext sealed per SSL_write. */
#define TLS_SEAL_MAX (64 * 1024)
/* Room made in rbuf for one SSL_read: a record's plaintext at most. */
#define TLS_READ (16 * 1024)

enum tls_kernel {
    KERNEL_NO,                   /* OpenSSL makes every record */
    KERNEL_PENDING,              /* handshake over: to the kernel once
                                    OpenSSL's records are sent */
    KERNEL_ON,                   /* the kernel makes the records we send */
    KERNEL_USER                  /* no kernel TLS: we make them (TLS 1.3,
                                    server side: struct ktls_user) */
};

/* KERNEL_ON: our close_notify, a 2-byte alert record (the kernel makes a
 * record of the type a cmsg names), kept while the engine sends it. */
struct kernel_alert {
    struct msghdr mh;
    struct iovec iov;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(1)];
    } cm;
    unsigned char body[2];
    size_t sent;
    uint8_t owed;                /* to be sent, or being sent */
    uint8_t busy;                /* with the engine */
};

struct tls {
    const struct ossl *o;
    SSL *ssl;
    struct ossl_io io;           /* the SSL's BIO: in, and records out */
    struct {                     /* records being sent (the engine's while
                                    send_busy): buf[off..len) */
        char *buf;
        size_t off, len, cap;
    } snd;
    int64_t deadline;            /* the handshake fails at this time (ms) */
    uint8_t got_bytes;           /* the peer sent something */
    uint8_t done;                /* the handshake is over */
    uint8_t failed;              /* a TLS failure: nothing more is sealed */
    uint8_t notified;            /* our close_notify is queued */
    uint8_t peer_notified;       /* the peer's close_notify came */
    uint8_t busy;                /* records came or went since tls_trim */
    uint8_t kernel;              /* enum tls_kernel */
    uint8_t want_kernel;         /* kTLS is to be tried for this one */
    struct ktls_keys *kt;        /* the handshake watched for kTLS, or NULL */
    struct kernel_alert *alert;  /* KERNEL_ON's close_notify */
    struct ktls_user *user;      /* KERNEL_USER's keys */
    atomic_int ready;            /* info is set: any thread may read it */
    struct tls_info info;
    long verify;                 /* X509_V_ERR code of a failed
                                    verification, or 0 */
    char why[200];               /* a failure, for the log and Python */
};

/* The records not yet with the kernel: being sent, or waiting. */
static void
update_queued(struct conn *c)
{
    struct tls *t = c->tls;
    size_t q = t->snd.len - t->snd.off + t->io.out_len;
    if (t->alert != NULL && t->alert->owed)
        q += sizeof(t->alert->body) - t->alert->sent;
    atomic_store_explicit(&c->tls_queued, q, memory_order_relaxed);
}

/* No kTLS for this connection after all: the watch ends. */
static void
kernel_forget(struct conn *c)
{
    struct tls *t = c->tls;
    if (t->kt != NULL) {
        ktls_unwatch(t->o, t->ssl);
        ktls_wipe(t->kt, sizeof(*t->kt));
        free(t->kt);
        t->kt = NULL;
    }
    if (t->kernel == KERNEL_PENDING)
        t->kernel = KERNEL_NO;
}

/* No kernel TLS, but the keys: a TLS 1.3 server side's records are made
 * here (KERNEL_USER), not by SSL_write, which costs some 300-500 ns more
 * per record.  (Not for our client side: a server may ask it for a
 * certificate after the handshake, which OpenSSL would answer.) */
static void
to_user(struct conn *c, const struct ktls_crypto *ci)
{
    struct tls *t = c->tls;
    if (c->outgoing || (t->user = malloc(sizeof(*t->user))) == NULL)
        return;
    if (ktls_user_init(t->o, t->ssl, t->kt, ci, t->user) < 0) {
        free(t->user);
        t->user = NULL;
    }
}

/* OpenSSL's records are all sent: sending goes to the kernel, or, if it
 * cannot, to our own records (to_user), or stays with OpenSSL (counted:
 * no tls ULP, or a session the kernel path does not take). */
static void
to_kernel(struct conn *c)
{
    struct tls *t = c->tls;
    struct server *s = c->w->srv;
    struct ktls_crypto ci;
    int info = ktls_tx_info(t->o, t->ssl, t->kt, &ci);
    int rc = atomic_load_explicit(&s->no_ulp, memory_order_relaxed) ? -ENOENT : info;
    if (rc == 0 && (t->alert = calloc(1, sizeof(*t->alert))) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        rc = ktls_tx_enable(c->h.fd, &ci);
    if (rc != 0 && info == 0)
        to_user(c, &ci);
    if (info == 0)
        ktls_wipe(&ci, sizeof(ci));
    kernel_forget(c);
    if (rc == 0) {
        t->kernel = KERNEL_ON;
        stat_add(&s->stats.ktls_tx, 1);
        return;
    }
    free(t->alert);
    t->alert = NULL;
    if (rc == -ENOENT)   /* the kernel has no tls ULP: no more tries */
        atomic_store_explicit(&s->no_ulp, 1, memory_order_relaxed);
    stat_add(rc == -ENOENT ? &s->stats.ktls_no_ulp : &s->stats.ktls_unsupported, 1);
    if (t->user != NULL) {
        t->kernel = KERNEL_USER;
        ktls_user_watch(t->o, t->ssl, t->user);   /* (after kernel_forget's
                                                     unwatch) */
    }
}

/* KERNEL_ON: our close_notify through the kernel, a record of type 21
 * (alert) holding "warning, close_notify".  0, or -1 if it failed. */
static int
kernel_alert_send(struct conn *c)
{
    struct kernel_alert *a = c->tls->alert;
    memset(&a->mh, 0, sizeof(a->mh));
    a->iov.iov_base = a->body + a->sent;
    a->iov.iov_len = sizeof(a->body) - a->sent;
    a->mh.msg_iov = &a->iov;
    a->mh.msg_iovlen = 1;
    a->mh.msg_control = a->cm.buf;
    a->mh.msg_controllen = sizeof(a->cm.buf);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&a->mh);
    cm->cmsg_level = SOL_TLS;
    cm->cmsg_type = TLS_SET_RECORD_TYPE;
    cm->cmsg_len = CMSG_LEN(1);
    *CMSG_DATA(cm) = 21;
    a->busy = 1;
    return send_took(c, c->w->ops->sendv(c->w->be, &c->h, &a->mh));
}

/* KERNEL_ON: the plaintext queue goes out as a plaintext connection's
 * does, then close_notify if owed.  1: something was handed over (go on),
 * 0: nothing to send, -1: the connection failed. */
static int
kernel_send(struct conn *c)
{
    struct tls *t = c->tls;
    struct worker *w = c->w;
    if (sent_off(c) == c->slen && !send_swap(c)) {
        if (!t->alert->owed || t->failed)
            return 0;
        return kernel_alert_send(c) < 0 ? -1 : 1;
    }
    size_t soff = sent_off(c);
    if (t->failed || t->notified) {
        send_advance(c, c->slen - soff);   /* nothing follows close_notify
                                              or a failure: dropped */
        return 1;
    }
    return send_took(c, w->ops->send(w->be, &c->h, c->sbuf + soff,
                                     c->slen - soff)) < 0 ? -1 : 1;
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
    BIO *bio = NULL;
    t->ssl = o->SSL_new(cfg->ctx);
    if (t->ssl == NULL || (bio = ossl_bio_new(o, &t->io)) == NULL)
        goto fail;
    o->SSL_set_bio(t->ssl, bio, bio);   /* (the SSL's from now on) */
    o->SSL_ctrl(t->ssl, OSSL_CTRL_MODE, OSSL_MODE_ENABLE_PARTIAL_WRITE |
                OSSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, NULL);
    /* Read-ahead: the BIO gives as much as OpenSSL's buffer takes in one
     * read, not a record's header and then its body. */
    o->SSL_ctrl(t->ssl, OSSL_CTRL_SET_READ_AHEAD, 1, NULL);
    /* Its record buffers stay while it is busy: tls_trim frees them. */
    o->SSL_ctrl(t->ssl, OSSL_CTRL_CLEAR_MODE, OSSL_MODE_RELEASE_BUFFERS, NULL);
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
    t->want_kernel = cfg->ktls != 0;
    if (t->want_kernel && (!c->outgoing ||   /* (KERNEL_USER otherwise) */
                           !atomic_load_explicit(&c->w->srv->no_ulp, memory_order_relaxed)) &&
        (t->kt = malloc(sizeof(*t->kt))) != NULL &&
        ktls_watch(o, t->ssl, t->kt, !c->outgoing) < 0) {
        free(t->kt);   /* (no index from OpenSSL: no kTLS) */
        t->kt = NULL;
    }
    c->tls = t;
    return 0;
fail:
    if (t->ssl != NULL)
        o->SSL_free(t->ssl);   /* (and the BIO, if made) */
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
    t->o->SSL_free(t->ssl);   /* (and its BIO) */
    if (t->kt != NULL) {
        ktls_wipe(t->kt, sizeof(*t->kt));
        free(t->kt);
    }
    free(t->alert);
    if (t->user != NULL) {
        ktls_user_free(t->o, t->user);
        free(t->user);
    }
    free(t->io.out);
    free(t->snd.buf);
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
    if (t->io.nomem)
        err = ENOMEM;   /* the BIO could not take a record */
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
    if (c->tls->kernel >= KERNEL_ON)
        c->tls->io.out_len = 0;   /* (OpenSSL's alert, under a write state
                                     it no longer has: not sent) */
    else
        kernel_forget(c);
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
    if (t->kt != NULL)
        t->kernel = KERNEL_PENDING;   /* (still watched: OpenSSL's records
                                         until then count) */
    else if (t->want_kernel)
        stat_add(atomic_load_explicit(&s->no_ulp, memory_order_relaxed)
                     ? &s->stats.ktls_no_ulp : &s->stats.ktls_unsupported, 1);
    if (s->dops != NULL && !s->cfg.native_echo && (c->outgoing || s->cfg.want_open))
        push_entry(c->w, c, ENTRY_OPEN, NULL, 0, 0);
}

/* One step of the handshake.  1: over; 0: it goes on; -1: failed. */
static int
handshake(struct conn *c)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    ossl_clear_errors(o);
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

/* Room for n more bytes of records in io.out.  0 or -1. */
static int
out_room(struct tls *t, size_t n)
{
    if (t->io.out_len + n <= t->io.out_cap)
        return 0;
    size_t cap = t->io.out_cap ? t->io.out_cap : 8 * 1024;
    while (cap < t->io.out_len + n)
        cap *= 2;
    char *p = realloc(t->io.out, cap);
    if (p == NULL)
        return -1;
    t->io.out = p;
    t->io.out_cap = cap;
    return 0;
}

/* KERNEL_USER: one record of `type` holding p[0..n) appended to io.out.
 * 0, or -1 if the connection failed. */
static int
user_seal(struct conn *c, int type, const void *p, size_t n)
{
    struct tls *t = c->tls;
    if (out_room(t, n + KTLS_USER_OVERHEAD) < 0) {
        fail(c, OSSL_ERROR_SYSCALL, ENOMEM);
        return -1;
    }
    if (ktls_user_seal(t->o, t->user, type, p,  n,
                       (unsigned char *)t->io.out + t->io.out_len) < 0) {
        fail(c, OSSL_ERROR_SSL, EIO);
        return -1;
    }
    t->io.out_len += n + KTLS_USER_OVERHEAD;
    return 0;
}

/* KERNEL_USER, after an SSL_read: whatever OpenSSL wrote (io.out past
 * `before`) was made with a write state that is not ours any more, and is
 * dropped; for each KeyUpdate of the peer's that asked for ours (which
 * OpenSSL would send only with a write of its own), ours goes out
 * (update_not_requested, under our current key), the next key after it.
 * 0, or -1 if the connection failed. */
static int
user_after_read(struct conn *c, size_t before)
{
    struct tls *t = c->tls;
    static const unsigned char key_update[5] = {24, 0, 0, 1, 0};
    t->io.out_len = before;
    for (; t->user->asked != 0; t->user->asked--) {
        if (user_seal(c, KTLS_RT_HANDSHAKE, key_update, sizeof(key_update)) < 0)
            return -1;
        if (ktls_user_rekey(t->o, t->user) < 0) {
            fail(c, OSSL_ERROR_SSL, EIO);
            return -1;
        }
    }
    return 0;
}

/* Plaintext into rbuf until OpenSSL wants more ciphertext.  0, or -1 when
 * the input is over (the peer's close_notify: peer_eof; or failed). */
static int
read_records(struct conn *c)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    ossl_clear_errors(o);   /* (a record read adds nothing to the queue) */
    for (;;) {
        if (recv_room(c, TLS_READ) < 0) {
            fail(c, OSSL_ERROR_SYSCALL, ENOMEM);
            return -1;
        }
        size_t out_before = t->io.out_len;
        int n = o->SSL_read(t->ssl, c->rbuf + c->rlen, TLS_READ);
        int e = OSSL_ERROR_WANT_READ;
        if (n > 0) {
            c->rlen += (size_t)n;
            if (t->io.in_len != 0 || o->SSL_has_pending(t->ssl))
                continue;
            /* All of the input is read and decrypted: no call that would
             * only say so (WANT_READ). */
        } else {
            e = o->SSL_get_error(t->ssl, n);
        }
        if (t->kernel == KERNEL_USER &&
            (t->io.out_len != out_before || t->user->asked != 0) &&
            user_after_read(c, out_before) < 0)
            return -1;
        if (t->kernel == KERNEL_ON && t->io.out_len != 0 && e != OSSL_ERROR_SSL) {
            /* OpenSSL answered something (the peer's KeyUpdate asking for
             * ours) with its own write key, which the kernel has: a record
             * from it now would break the stream. */
            snprintf(t->why, sizeof(t->why), "the peer asked for a TLS key "
                     "update, which kernel TLS sending does not make here");
            t->failed = 1;
            t->io.out_len = 0;
            conn_note_reason(c, CLOSE_TLS, EPROTO);
            if (c->state == CONN_OPEN)
                conn_start_drain(c);
            return -1;
        }
        /* Post-handshake messages (session tickets, key updates) may have
         * queued records to send. */
        update_queued(c);
        if (c->tls_queued > 0)
            mark_dirty(c->w, c);
        if (e == OSSL_ERROR_WANT_READ)
            return 0;   /* (all of the input is read: the BIO said so) */
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
    if (t->failed || t->peer_notified)
        return -1;   /* discarded */
    t->got_bytes = 1;
    t->busy = 1;
    /* OpenSSL reads it all from where it lies (what follows close_notify
     * or a failure is left: discarded). */
    t->io.in = (const char *)p;
    t->io.in_len = len;
    int r = 0;
    if (!t->done) {
        int h = handshake(c);
        r = h < 0 ? -1 : h == 0 ? 1 : 0;   /* failed, goes on (all read),
                                              or over: records follow */
    }
    if (r == 0 && read_records(c) < 0)
        r = -1;
    t->io.in = NULL;
    t->io.in_len = 0;
    return r;
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
    if (t->kernel == KERNEL_ON) {
        t->alert->body[0] = 1;   /* warning */
        t->alert->body[1] = 0;   /* close_notify */
        t->alert->owed = 1;
    } else if (t->kernel == KERNEL_USER) {
        static const unsigned char close_notify[2] = {1, 0};
        if (user_seal(c, KTLS_RT_ALERT, close_notify, sizeof(close_notify)) < 0)
            return 0;   /* (failed: closing goes on) */
    } else {
        kernel_forget(c);   /* (OpenSSL writes it: the kernel never) */
        t->o->ERR_clear_error();
        t->o->SSL_shutdown(t->ssl);   /* queues close_notify (we do not
                                         wait for the peer's here) */
        t->o->ERR_clear_error();
    }
    update_queued(c);
    if (c->tls_queued == 0)
        return 0;
    mark_dirty(c->w, c);
    return 1;
}

/* Seal queued plaintext while less than TLS_OUT_MAX of ciphertext waits.
 * 0, or -1 if the connection failed. */
static int
seal(struct conn *c)
{
    struct tls *t = c->tls;
    const struct ossl *o = t->o;
    int clean = 0;   /* the error queue was looked at */
    for (;;) {
        if (sent_off(c) == c->slen && !send_swap(c))
            return 0;
        size_t soff = sent_off(c), n = c->slen - soff;
        if (t->notified || t->failed) {
            send_advance(c, n);   /* nothing follows close_notify or a
                                     fatal alert: dropped */
            continue;
        }
        if (t->snd.len - t->snd.off + t->io.out_len >= TLS_OUT_MAX)
            return 0;   /* on once they are sent */
        t->busy = 1;
        if (t->kernel == KERNEL_USER) {
            size_t m = n > KTLS_USER_MAX ? KTLS_USER_MAX : n;
            if (user_seal(c, KTLS_RT_APPLICATION_DATA, c->sbuf + soff, m) < 0)
                return -1;
            send_advance(c, m);
            continue;
        }
        if (!clean) {   /* (before the first write: a record written adds
                           nothing; a flush with nothing to seal, none) */
            ossl_clear_errors(o);
            clean = 1;
        }
        int r = o->SSL_write(t->ssl, c->sbuf + soff,
                             n > TLS_SEAL_MAX ? TLS_SEAL_MAX : (int)n);
        if (r > 0) {
            send_advance(c, (size_t)r);
            continue;
        }
        fail(c, o->SSL_get_error(t->ssl, r), 0);
        return -1;
    }
}

int
tls_send_out(struct conn *c)
{
    struct tls *t = c->tls;
    struct worker *w = c->w;
    while (c->state <= CONN_DRAINING && !c->send_busy) {
        if (t->kernel == KERNEL_ON) {
            int r = kernel_send(c);
            if (r <= 0) {
                if (r < 0)
                    return -1;
                break;
            }
            continue;
        }
        if ((t->done || t->failed) && t->kernel != KERNEL_PENDING &&
            seal(c) < 0 && c->state > CONN_DRAINING)
            return -1;
        if (t->snd.off == t->snd.len) {
            if (t->io.out_len == 0) {
                if (t->kernel == KERNEL_PENDING) {
                    to_kernel(c);   /* OpenSSL's records are all out */
                    continue;
                }
                break;
            }
            /* The records written meanwhile go out from where they lie;
             * OpenSSL appends to the other buffer. */
            char *b = t->snd.buf;
            size_t cap = t->snd.cap;
            t->snd.buf = t->io.out;
            t->snd.cap = t->io.out_cap;
            t->snd.off = 0;
            t->snd.len = t->io.out_len;
            t->io.out = b;
            t->io.out_cap = cap;
            t->io.out_len = 0;
        }
        if (send_took(c, w->ops->send(w->be, &c->h, t->snd.buf + t->snd.off,
                                      t->snd.len - t->snd.off)) < 0)
            return -1;   /* (its bytes: tls_sent, through sent()) */
    }
    update_queued(c);
    return 0;
}

void
tls_sent(struct conn *c, size_t n)
{
    struct tls *t = c->tls;
    if (t->kernel != KERNEL_ON) {
        t->snd.off += n;
        if (t->snd.off == t->snd.len)
            t->snd.off = t->snd.len = 0;
    } else if (t->alert->busy) {
        t->alert->busy = 0;
        t->alert->sent += n;
        if (t->alert->sent == sizeof(t->alert->body))
            t->alert->owed = 0;
    } else {
        send_advance(c, n);   /* plaintext: the kernel sealed it */
    }
    send_counted(c, n);
    update_queued(c);
}

size_t
tls_trim(struct conn *c)
{
    struct tls *t = c->tls;
    if (!t->busy || !t->done || c->send_busy || t->snd.len != 0 ||
        t->io.out_len != 0)
        return 0;
    size_t freed = t->snd.cap + t->io.out_cap;
    if (t->user != NULL && t->user->ctx != NULL) {
        ktls_user_trim(t->o, t->user);
        freed += 3 * 1024;   /* (about) */
    }
    free(t->snd.buf);
    free(t->io.out);
    t->snd.buf = t->io.out = NULL;
    t->snd.cap = t->io.out_cap = 0;
    /* OpenSSL's record buffers, allocated again at the next record; only
     * when it holds no bytes (before 3.0.14 it would free a buffer still
     * holding a record's unread plaintext: CVE-2024-4741). */
    if (!t->o->SSL_has_pending(t->ssl) && t->o->SSL_free_buffers(t->ssl) == 1) {
        freed += 2 * TLS_READ;   /* (about: each is a record and more) */
        t->busy = 0;
    }
    t->o->ERR_clear_error();
    return freed;
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
