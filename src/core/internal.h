/* internal.h - what the core's files share and nothing outside the core
 * sees: the functions one file calls in another, and the small helpers
 * every message passes through, `static inline` so that the split into
 * files costs no call (gcc cannot inline across translation units).
 *
 * The files, one concern each:
 *   conn.c    a connection's life: allocation, references, closing
 *   recv.c    receiving: engine buffers and direct receives, framing
 *   send.c    sending: the send queue, sends by reference, backpressure
 *   echo.c    native echo (whole frames back without Python)
 *   file.c    file requests and send_file
 *   tls.c     TLS records between the engine's bytes and the framer
 *   http.c    HTTP framing: requests parsed for the batch, refusals,
 *             native replies
 *   resp.c    RESP framing: commands for the batch, protocol errors
 *   worker.c  the worker loop: one turn, the mailbox, dispatch, timers
 *   server.c  start, stop, listeners, accepting and connecting */
#ifndef IOCPORT_CORE_INTERNAL_H
#define IOCPORT_CORE_INTERNAL_H

#include "core/core.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

struct slab_pool;
struct http_state;
struct resp_state;

/* ---- the core's structs ---------------------------------------------------- */

enum conn_state { CONN_CONNECTING, CONN_OPEN, CONN_DRAINING, CONN_CLOSING, CONN_DEAD };
enum recv_state { RECV_OFF, RECV_ON, RECV_STOPPING };

/* A send by reference: `len` bytes at `ptr`, kept alive by `owner` (the
 * dispatch layer's object, given back through dispatch_ops.release), sent
 * after the first `at` bytes of the flat buffer it was queued with. */
struct sref {
    size_t at;
    const char *ptr;
    size_t len;
    void *owner;
};

#define SEND_IOV 64   /* iovec entries per gathered send */

/* A connection's sends by reference, allocated at its first.  The `o`
 * side is queued with obuf (under the lock), the `s` side goes out with
 * sbuf: the two swap together. */
struct refq {
    struct sref *o, *s;
    unsigned no, ocap, ns, scap;
    unsigned sdone;              /* s[0..sdone) sent and given back */
    size_t sbefore;              /* their bytes */
    size_t obytes;               /* bytes of o[] */
    size_t sflat;                /* sbuf's own bytes (slen counts s[] too) */
    struct msghdr mh;
    struct iovec iov[SEND_IOV];
};

struct conn {
    struct io_handle h;          /* first: the backend's view, h.fd */
    struct worker *w;
    uint64_t id;
    atomic_int refs;             /* see conn_unref() */
    uint8_t state;               /* enum conn_state */
    uint8_t recv;                /* enum recv_state */
    uint8_t paused;              /* backpressure wants receiving stopped */
    uint8_t peer_eof;            /* the peer half-closed */
    uint8_t send_busy;           /* a backend send is in flight */
    uint8_t dirty;               /* on the worker's flush list */
    uint8_t in_mailbox;          /* on the worker's mailbox (under mbox_lock) */
    uint8_t reason;              /* enum close_reason, first one wins */
    uint8_t close_queued;        /* the CLOSE notice is in the batch */
    uint8_t graceful;            /* close once the send queue is empty */
    uint8_t close_req;           /* from another thread: 1 graceful, 2 abort,
                                    3 end the input (close_why) */
    uint8_t rbuf_pinned;         /* batch entries point into rbuf */
    uint8_t deferred;            /* unframed bytes wait for the next turn */
    uint8_t connect_req;         /* outgoing: connect when the worker drains */
    uint8_t outgoing;            /* we connected (not accepted) */
    uint8_t wr_shut;             /* graceful close: our FIN is sent */
    uint8_t direct;              /* the recv in flight is a recv_into() */
    uint8_t big;                 /* large messages or bulk input: direct */
    uint8_t refs_out;            /* sbuf goes out with references (worker) */
    uint8_t bad_input;           /* a bad frame or a handler that raised
                                    ended the input: nothing more is
                                    framed, what comes is discarded */
    uint8_t handler_failed;      /* ... a handler: nothing more is
                                    delivered, even what was framed */
    uint8_t eof_told;            /* ENTRY_EOF went to the dispatch layer */
    uint8_t keep_open;           /* on_eof asked to stay open after the
                                    peer's FIN, until closed */
    uint8_t adopt_req;           /* accepted by another worker: adopt it */
    uint8_t close_why;           /* enum close_reason of an abort asked
                                    from another thread (under lock) */
    uint8_t drain_owed;          /* unsent went past max_unsent (seen by a
                                    send or by conn_writable): ENTRY_DRAIN
                                    once it is back to half (under lock) */
    uint8_t lingering;           /* on the worker's linger queue */
    int64_t drain_since;         /* when the graceful close began / FIN sent */
    unsigned inflight;           /* operations whose final event is due */
    unsigned queued;             /* messages in the batch, not yet handled */
    /* Operations started for this connection whose callbacks may still
     * reply (conn_hold): a half-closed connection stays open for them. */
    atomic_uint holds;
    int err;                     /* errno behind CLOSE_RESET */
    int64_t last_active;         /* monotonic ms */

    /* Receive assembly: bytes of an unfinished message, rbuf[rstart..rlen). */
    uint8_t *rbuf;
    size_t rstart, rlen, rcap, rscan;
    size_t rneed;                /* bytes the framer needs from rstart, or 0 */

    /* Send queue: the user appends to obuf under `lock`; the worker swaps it
     * with sbuf, which the backend owns while send_busy. */
    pthread_mutex_t lock;
    char *obuf, *sbuf;
    size_t olen, ocap, slen, scap;
    /* sbuf[0..soff) is sent.  Written by the worker alone, without the
     * lock, and read under the lock by senders on other threads (for the
     * unsent count): atomic, relaxed (see sent_off()). */
    _Atomic size_t soff;

    struct refq *rq;             /* sends by reference, or NULL; set from
                                    NULL under the lock, freed by trim() */
    union {                      /* TCP (IPv4, IPv6) or a Unix socket */
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
        struct sockaddr_un un;
    } peer;
    socklen_t peerlen;
    struct conn *next, *prev;    /* worker's connection list */
    struct conn *next_dirty;     /* worker's flush list */
    struct conn *next_mail;      /* worker's mailbox (under mbox_lock) */
    struct conn *next_drain;     /* the mailbox being drained (worker) */
    struct conn *next_deferred;  /* worker's deferred list */
    struct conn *next_linger, *prev_linger;   /* worker's linger queue */
    void *py;                    /* dispatch layer's object, or NULL */
    struct xfer *xfer;           /* send_file in progress (worker only) */
    struct xfer *xfer_new;       /* send_file asked, not started (lock) */
    uint8_t xfer_busy;           /* xfer != NULL, readable under lock */
    char *hbuf;                  /* sends held back behind the file (lock) */
    size_t hlen, hcap;
    struct dial *dial;           /* outgoing, until connected: the addresses */
    struct tls *tls;             /* TLS (tls.c), or NULL: set before the
                                    connection is seen by other threads */
    struct http_state *http;     /* HTTP framing: the request being parsed
                                    (http.c; worker only) */
    struct resp_state *resp;     /* RESP framing: the command being framed
                                    (resp.c; worker only) */
    /* Ciphertext sealed and not yet with the kernel: written by the
     * worker, read by senders for the unsent count (relaxed). */
    _Atomic size_t tls_queued;
    /* Messages delivered and not yet finished by a handler that finishes
     * them later (cfg.hold_msgs): their held_cost(), added by the worker
     * before delivery, taken off by conn_held_done() from any thread. */
    _Atomic size_t held;
};

/* An outgoing connection's addresses, tried in turn until one connects or
 * the deadline passes; each attempt gets an equal share of what is left. */
struct dial {
    struct sockaddr_storage *addrs;
    socklen_t *lens;
    unsigned n, next;            /* next: the address to try after this one */
    int64_t deadline;            /* monotonic ms: the whole connect */
    int64_t attempt_due;         /* this attempt is cancelled then */
    uint8_t timed_out;           /* the cancel was ours: the attempt expired */
    int last_err;                /* why the last attempt failed */
};

struct stats {
    _Atomic uint64_t accepted, closed, msgs_in, msgs_out, bytes_in, bytes_out;
    _Atomic uint64_t accept_errors, refused;
    _Atomic uint64_t pauses;     /* receiving stopped for backpressure */
    _Atomic uint64_t errors[CLOSE_REASON_COUNT];
    _Atomic uint64_t ktls_tx, ktls_no_ulp, ktls_unsupported;
};

/* io_handle.tag: what embeds the handle (file requests are told by their
 * events' op, IO_FILE). */
enum handle_tag { HANDLE_CONN = 0, HANDLE_LISTENER };

struct listener_slot {
    struct io_handle h;          /* this worker's registration of the fd */
    uint8_t armed;               /* accept in flight */
    uint8_t pausing;             /* cancelled after an error, to re-arm */
    int64_t retry_at;            /* accept paused until (ms), after EMFILE */
};

#define EVENT_BATCH 256

struct worker {
    struct server *srv;
    unsigned index;
    pthread_t thread;
    struct backend *be;
    const struct backend_ops *ops;
    int start_err;               /* errno if the backend could not start */
    int fell_back;               /* io_uring refused; running on epoll */
    atomic_int stopping;
    atomic_uint load;            /* connections given to it, not yet closed */
    _Atomic uint64_t opened;     /* connections given to it, ever */
    struct conn *current;        /* the connection whose callback the
                                    dispatch layer is running, or NULL */
    int64_t connect_due;         /* earliest outgoing attempt deadline */
    /* Connections that sent their FIN on a graceful close and wait for the
     * peer's, oldest first (worker only; see conn_linger()).  Every one
     * waits the same LINGER_MS from the same clock, so the head is always
     * the next to expire: its deadline is a timer of its own, not the
     * sweep's (whose cadence would add up to a second to the wait). */
    struct conn *linger_head, *linger_tail;

    struct listener_slot ls[MAX_LISTENERS];
    unsigned nls;

    struct conn conns;           /* list head of live connections */
    unsigned nconns;
    struct conn *dirty;          /* flush list (worker thread only) */
    struct conn *deferred;       /* to frame next turn (worker only) */

    pthread_mutex_t mbox_lock;
    struct conn *mailbox;        /* sends from other threads */
    struct file_req *file_mail;  /* file requests from other threads */
    unsigned file_inflight;      /* file requests started, not yet final */
    struct file_req *file_retry; /* finals that found no room in the batch */
    atomic_int mbox_flag;

    struct entry *batch;
    unsigned nbatch, batch_cap;
    uint16_t *held_bufs;         /* receive buffers to release after dispatch */
    unsigned nheld, held_cap;
    struct conn **compact;       /* connections whose rbuf to compact */
    unsigned ncompact, compact_cap;
    /* HTTP framing: the batch's requests (entry.aux) and their fields,
     * reset with the batch. */
    struct http_msg *hmsgs;
    unsigned nhmsgs, hmsgs_cap;
    struct http_field *hfields;
    unsigned nhfields, hfields_cap;
    /* RESP framing: the batch's commands and their arguments. */
    struct resp_msg *rmsgs;
    unsigned nrmsgs, rmsgs_cap;
    struct resp_arg *rargs;
    unsigned nrargs, rargs_cap;
    int64_t date_sec;            /* native replies: the Date header's */
    char date[40];               /* "date: ...\r\n" for date_sec */
    void **release;              /* sent references to give back */
    unsigned nrelease, release_cap;
    size_t release_bytes;        /* their bytes (at most) */
    int delivered;               /* this turn delivered a message */

    int64_t now;                 /* monotonic ms, refreshed every turn */
    int loop_err;                /* last errno from wait(), or 0 */
    unsigned loop_errors;        /* how many wait() calls failed */
    int64_t next_sweep;
    int64_t last_trim;           /* when the sweep last called malloc_trim */
    size_t trim_owed;            /* bytes sweeps gave back since then */
    void *dctx;                  /* dispatch layer's per-thread context */
    struct io_event events[EVENT_BATCH];
};

struct server {
    struct server_config cfg;
    const struct dispatch_ops *dops;
    void *dispatch_arg;
    int lfds[MAX_LISTENERS];
    struct tls_config ltls[MAX_LISTENERS];   /* each listener's TLS (o NULL:
                                                none) */
    unsigned nlfds;
    struct worker *workers;
    unsigned nworkers;
    atomic_uint nconns;
    atomic_uint_fast64_t next_id;
    atomic_uint next_worker;     /* round robin among equally loaded ones */
    int accepting_work;          /* under start_lock: connect() may post */
    struct stats stats;
    int running;
    const char *backend_name;    /* set by server_start */
    int fell_back;               /* errno that refused io_uring, or 0 */
    pthread_mutex_t start_lock;
    pthread_mutex_t stop_lock;   /* serialises server_stop */
    pthread_cond_t start_cond;
    unsigned nready;             /* workers that finished starting */
    struct slab_pool *conn_pool; /* every struct conn (slab.h) */
    atomic_int no_ulp;           /* the kernel said it has no tls ULP: kTLS
                                    is not tried again */
};

/* ---- helpers ------------------------------------------------------------ */

static inline int64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);   /* cannot fail for MONOTONIC */
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void
stat_add(_Atomic uint64_t *v, uint64_t n)
{
    atomic_fetch_add_explicit(v, n, memory_order_relaxed);
}

static inline int
on_worker_thread(const struct worker *w)
{
    return pthread_equal(pthread_self(), w->thread);
}

/* The sent offset: the worker's own reads and writes need no ordering
 * (it is the only writer); other threads read it under c->lock, where a
 * value a moment old only makes the unsent count a moment old. */
static inline size_t
sent_off(const struct conn *c)
{
    return atomic_load_explicit(&c->soff, memory_order_relaxed);
}

static inline void
set_sent_off(struct conn *c, size_t v)
{
    atomic_store_explicit(&c->soff, v, memory_order_relaxed);
}

/* Grow *buf to hold at least `need` bytes; doubling, so appends amortise. */
static inline int
reserve(void *bufp, size_t *cap, size_t need)
{
    char **buf = bufp;
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 256;
    if (ncap < need)
        ncap = need;
    char *nb = realloc(*buf, ncap);
    if (nb == NULL)
        return -ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

static inline int
grow_array(void *arrp, unsigned *cap, unsigned need, size_t elem)
{
    void **arr = arrp;
    if (need <= *cap)
        return 0;
    unsigned ncap = *cap ? *cap * 2 : 64;
    while (ncap < need)
        ncap *= 2;
    void *na = realloc(*arr, (size_t)ncap * elem);
    if (na == NULL)
        return -ENOMEM;
    *arr = na;
    *cap = ncap;
    return 0;
}

static inline void
conn_ref(struct conn *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

/* A notice for the dispatch layer's batch (a message: ENTRY_MSG). */
static inline int
push_entry(struct worker *w, struct conn *c, uint8_t kind,
           const uint8_t *ptr, size_t off, size_t len)
{
    if (grow_array(&w->batch, &w->batch_cap, w->nbatch + 1,
                   sizeof(struct entry)) < 0)
        return -ENOMEM;
    conn_ref(c);
    if (kind == ENTRY_MSG)
        c->queued++;
    w->batch[w->nbatch++] = (struct entry){c, NULL, ptr, off, len, kind, 0};
    return 0;
}

/* Worker thread: c has output to flush (or a close to decide) this turn. */
static inline void
mark_dirty(struct worker *w, struct conn *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        conn_ref(c);
        c->next_dirty = w->dirty;
        w->dirty = c;
    }
}

/* Under c->lock: the bytes queued and not yet with the kernel. */
static inline size_t
conn_unsent_locked(const struct conn *c)
{
    return c->olen + (c->rq ? c->rq->obytes : 0) + (c->slen - sent_off(c)) +
           atomic_load_explicit(&c->tls_queued, memory_order_relaxed);
}

/* What a held message (cfg.hold_msgs) counts toward backpressure: its
 * bytes, and about what the objects carrying it to its handler cost (a
 * Python bytes object and a queue entry), so empty messages count too. */
#define HELD_MSG_COST 128

static inline size_t
held_cost(size_t len)
{
    return len + HELD_MSG_COST;
}

/* An operation ended by our cancel: -ECANCELED, or, once we are closing,
 * whatever the interrupted call returned (a blocking send that io_uring
 * handed to a kernel thread ends with -EINTR). */
static inline int
conn_cancelled(const struct conn *c, int res)
{
    return res == -ECANCELED || c->state >= CONN_CLOSING;
}

/* ---- conn.c ------------------------------------------------------------- */

struct conn *conn_alloc(struct server *s, struct worker *w, int fd);
/* Drop a reference; the last frees the connection. */
void conn_unref(struct conn *c);
/* Worker thread: the connection joins this worker's list. */
void conn_link(struct worker *w, struct conn *c);
/* Record why a connection goes away; the first reason wins and is the
 * one counted. */
void conn_note_reason(struct conn *c, enum close_reason why, int err);
/* Record why and close at once, dropping unsent output. */
void conn_fail(struct conn *c, enum close_reason why, int err);
/* Closing: cancel what is in flight; the last final event finishes it. */
void conn_begin_close(struct conn *c);
/* Closed: the fd is closed, the dispatch layer hears of it. */
void conn_finish_close(struct conn *c);
/* An operation's final event was handled. */
void conn_op_done(struct conn *c);
/* Every message received has been handled, and no operation started for
 * the connection can still add a reply. */
int conn_settled(const struct conn *c);
/* Worker thread: our graceful close begins. */
void conn_start_drain(struct conn *c);
/* Everything queued is with the kernel: close now if the connection is
 * done (our graceful close, the peer's FIN, a bad frame). */
void conn_output_done(struct conn *c);
/* Under c->lock: queue work for the worker from another thread. */
void conn_post(struct conn *c);
/* Worker thread: our FIN is sent (drain_since is now); the connection
 * waits at most LINGER_MS for the peer's, on the linger queue. */
void conn_linger(struct conn *c);
/* Off the linger queue (closing, or expired).  Idempotent. */
void conn_unlinger(struct conn *c);

/* ---- recv.c ------------------------------------------------------------- */

void recv_start(struct conn *c);
void recv_stop(struct conn *c);
/* Start or stop receiving as the connection's state asks. */
void recv_update(struct conn *c);
/* The input ends here, counting `why`: nothing more is framed, what comes
 * is discarded; the replies owed go out, then a graceful close. */
void recv_end_input(struct conn *c, enum close_reason why);
/* Frame what rbuf holds.  0, or -1 if the connection failed. */
int recv_frame(struct worker *w, struct conn *c);
/* Room for n more bytes at rbuf + rlen.  0 or -ENOMEM. */
int recv_room(struct conn *c, size_t n);
/* Input held back while paused (backpressure) now goes on: frame it. */
void recv_resume(struct conn *c);
/* An IO_RECV event. */
void recv_on_event(struct worker *w, struct conn *c, const struct io_event *ev);

/* ---- send.c ------------------------------------------------------------- */

/* n bytes went to the kernel (counted, and the connection is active). */
void send_counted(struct conn *c, size_t n);
/* On the worker thread, after bytes joined obuf: flush them this turn,
 * and pause receiving at once if they pass max_unsent. */
void send_queued_here(struct conn *c, size_t unsent);
/* Push queued output to the engine; once it is all out, the connection
 * may close (conn_output_done). */
void send_flush(struct conn *c);
/* Closed: give every sent-by-reference owner back. */
void send_refs_drop(struct conn *c);
/* sbuf is all sent: obuf's bytes (and references) take its place.  1 if
 * there were any. */
int send_swap(struct conn *c);
/* n more bytes of sbuf are dealt with (TLS: sealed), not counted as sent. */
void send_advance(struct conn *c, size_t n);
/* What an engine send returned: r bytes went to the kernel, or -EINPROGRESS
 * (a send is in flight), or an error (the connection fails).  0, or -1 if
 * it failed. */
int send_took(struct conn *c, long r);
/* An IO_SEND event. */
void send_on_event(struct worker *w, struct conn *c, const struct io_event *ev);

/* ---- echo.c ------------------------------------------------------------- */

/* n whole frames at p[0..len) (in an engine buffer) go back as they came,
 * queued after what waits.  0 or -errno. */
int echo_queue(struct conn *c, const void *p, size_t len, size_t n);
/* The same for rbuf[from..rstart), sent at once from rbuf when large.
 * 0 or -errno. */
int echo_rbuf(struct conn *c, size_t from, size_t n);

/* ---- file.c ------------------------------------------------------------- */

void file_on_event(struct worker *w, struct file_req *r,
                   const struct io_event *ev);
/* Start file requests taken from the mailbox; report finals held back. */
void file_start_mail(struct worker *w, struct file_req *r);
/* Worker thread: start a send_file that conn_send_file() queued. */
void xfer_attach(struct conn *c);
/* Read the next chunk while fewer than XFER_MARK bytes wait to be sent. */
void xfer_pump(struct conn *c, size_t unsent);
/* The transfer is over (err 0: all of it is with the kernel). */
void xfer_finish(struct conn *c, int err);

/* ---- tls.c -------------------------------------------------------------- */

/* TLS for c (the server side unless c->outgoing).  Before c is seen by
 * another thread.  0 or -ENOMEM. */
int tls_attach(struct conn *c, const struct tls_config *cfg);
void tls_free(struct conn *c);
/* The connection is open: the handshake's deadline starts (a client
 * sends its hello). */
void tls_start(struct conn *c);
/* Ciphertext from the peer: the handshake advances, or the plaintext is
 * appended to rbuf.  0: the handshake is over; 1: it goes on; -1: the
 * input is over (failed, or the peer's close_notify came). */
int tls_on_input(struct conn *c, const uint8_t *p, size_t len);
/* The peer's FIN: without close_notify it is noted (CLOSE_TLS_EOF). */
void tls_on_fin(struct conn *c);
/* A reset or error (err) cut the handshake: noted as a TLS failure, 1;
 * 0 if the handshake was over (or had not begun). */
int tls_cut_handshake(struct conn *c, int err);
/* Past the handshake's deadline: failed (CLOSE_TLS).  1 if so. */
int tls_expired(struct conn *c, int64_t now);
/* Queue close_notify (once, not after a failure).  1 if it now waits to
 * be sent (the caller decides again once it is out). */
int tls_notify(struct conn *c);
/* send.c's sending for a TLS connection: seal, send ciphertext.  0, or
 * -1 if the connection failed. */
int tls_send_out(struct conn *c);
/* n bytes of ciphertext went to the kernel. */
void tls_sent(struct conn *c, size_t n);
/* The connection is idle: its ciphertext buffers and OpenSSL's record
 * buffers are given back if empty (allocated again at the next record).
 * Returns about the bytes given back. */
size_t tls_trim(struct conn *c);

/* ---- http.c ------------------------------------------------------------- */

/* HTTP framing: the connection's parser (at its start).  0 or -ENOMEM. */
int http_conn_init(struct conn *c);
void http_conn_free(struct conn *c);
/* Frame the request at p[0 .. len), from its first byte, as framing_next()
 * does for the stream kinds (the parser keeps its own place).  On FRAME_OK
 * it waits for http_emit() or http_native_reply(); FRAME_REFUSED, for
 * http_refuse(). */
int http_frame(struct conn *c, uint8_t *p, size_t len, struct frame *fr);
/* The request framed last into the batch (ptr, or rbuf + off).  0 or
 * -ENOMEM. */
int http_emit(struct conn *c, const uint8_t *ptr, size_t off, size_t len);
/* The request framed last was refused: its answer goes into the batch (in
 * its turn) and the input ends (CLOSE_HTTP). */
void http_refuse(struct conn *c);
/* Native replies (cfg.native_echo): the fixed answer to the request framed
 * last, whose bytes start at req.  0 or -errno. */
int http_native_reply(struct conn *c, const uint8_t *req);
/* The sweep: a request whose header section is not whole header_ms after
 * its first byte is refused (408).  1 if so. */
int http_header_expired(struct conn *c, int64_t now);
/* After the request framed last: whether the connection reads on (keep-
 * alive), else the input ends once it is in the batch. */
int http_keep_alive(const struct conn *c);

/* ---- resp.c ------------------------------------------------------------- */

/* RESP framing: the connection's framer state (at its start).  0 or
 * -ENOMEM. */
int resp_conn_init(struct conn *c);
void resp_conn_free(struct conn *c);
/* As http_frame(), for a command; FRAME_REFUSED for a protocol error (for
 * resp_refuse()).  -ENOMEM when the arguments cannot be held. */
int resp_frame(struct conn *c, const uint8_t *p, size_t len, struct frame *fr);
/* The command framed last into the batch (ptr, or rbuf + off): 1, or 0
 * for an empty command (skipped, as Redis does), or -ENOMEM. */
int resp_emit(struct conn *c, const uint8_t *ptr, size_t off, size_t len);
/* The input framed last was a protocol error: Redis's reply goes into the
 * batch (in its turn) and the input ends (CLOSE_RESP). */
void resp_refuse(struct conn *c);

/* ---- worker.c ----------------------------------------------------------- */

void *worker_main(void *arg);

/* ---- server.c ----------------------------------------------------------- */

/* The worker the calling thread is, or NULL. */
struct worker *server_this_worker(struct server *s);
void accept_on_event(struct worker *w, struct listener_slot *ls,
                     const struct io_event *ev);
void accept_arm(struct worker *w, struct listener_slot *ls);
/* Worker thread: an accepted connection given to this worker starts. */
void accept_adopt(struct worker *w, struct conn *c);
/* Worker thread: a connect() request from the mailbox. */
void dial_start(struct worker *w, struct conn *c);
void dial_on_event(struct worker *w, struct conn *c, int res);
/* Cancel the connect attempts past their share of time. */
void dial_expire(struct worker *w);
/* A connection counts against max_connections and its worker's load. */
void server_assign(struct worker *w);
void server_unassign(struct worker *w);

#endif
