/* server.h - the connection and server layers: worker threads, each owning
 * one backend instance; listeners shared by all workers (each worker keeps
 * its own accept armed on them); connections with their receive buffer,
 * framing state, send queue, operations in flight and lifecycle.  No Python
 * here: whole messages leave through the dispatch hooks (py_server.c). */
#ifndef IOCPORT_SERVER_H
#define IOCPORT_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/uio.h>

#include "io/backend.h"
#include "lib/framing.h"

struct server;
struct worker;
struct slab_pool;

enum conn_state { CONN_CONNECTING, CONN_OPEN, CONN_DRAINING, CONN_CLOSING, CONN_DEAD };
enum recv_state { RECV_OFF, RECV_ON, RECV_STOPPING };

/* Why a connection closed: the one list.  The enum, the names Python sees
 * (close_reason, stats()'s keys, iocport.CLOSE_REASONS, whose test checks
 * the README's list) and the log levels all come from it.
 * X(NAME, "python name", log level of the close line, what it means);
 * the level is NULL where no line is logged: our own closes, clean EOFs,
 * handler errors (logged with their traceback already). */
#define CLOSE_REASONS(X)                                                      \
    X(NONE,      "closed",    NULL,      "closed by us: close(), abort(), stop") \
    X(EOF,       "eof",       NULL,      "the peer closed; every reply went out") \
    X(RESET,     "reset",     "debug",   "the peer reset, or a receive/send error") \
    X(TRUNCATED, "truncated", "info",    "the peer closed inside a message")  \
    X(TOO_BIG,   "too_big",   "warning", "a frame over the size limit")       \
    X(BAD_FRAME, "bad_frame", "warning", "a malformed frame header")          \
    X(HANDLER,   "handler",   NULL,      "a handler or callback raised")      \
    X(IDLE,      "idle",      "debug",   "idle, or half-closed and quiet, too long") \
    X(CONNECT,   "connect",   "debug",   "an outgoing connect failed")        \
    X(OVERFLOW,  "overflow",  "warning", "a send past unsent_limit")

enum close_reason {
#define CLOSE_ENUM(name, str, level, doc) CLOSE_##name,
    CLOSE_REASONS(CLOSE_ENUM)
#undef CLOSE_ENUM
    CLOSE_REASON_COUNT
};
extern const char *const close_reason_name[CLOSE_REASON_COUNT];
/* The logging level of a close line, or NULL for none. */
extern const char *const close_reason_level[CLOSE_REASON_COUNT];

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
    uint8_t close_req;           /* from another thread: 1 graceful, 2 abort */
    uint8_t rbuf_pinned;         /* batch entries point into rbuf */
    uint8_t deferred;            /* unframed bytes wait for the next turn */
    uint8_t connect_req;         /* outgoing: connect when the worker drains */
    uint8_t outgoing;            /* we connected (not accepted) */
    uint8_t wr_shut;             /* graceful close: our FIN is sent */
    uint8_t direct;              /* the recv in flight is a recv_into() */
    uint8_t big;                 /* large messages or bulk input: direct */
    uint8_t refs_out;            /* sbuf goes out with references (worker) */
    uint8_t bad_input;           /* a bad frame ended the input: nothing
                                    more is framed, what comes is discarded */
    uint8_t eof_told;            /* ENTRY_EOF went to the dispatch layer */
    uint8_t keep_open;           /* on_eof asked to stay open after the
                                    peer's FIN, until closed */
    uint8_t adopt_req;           /* accepted by another worker: adopt it */
    uint8_t close_why;           /* enum close_reason of an abort asked
                                    from another thread (under lock) */
    uint8_t drain_owed;          /* unsent went past max_unsent (seen by a
                                    send or by conn_writable): ENTRY_DRAIN
                                    once it is back to half (under lock) */
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
    union {                      /* TCP: IPv4 or IPv6 */
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer;
    socklen_t peerlen;
    struct conn *next, *prev;    /* worker's connection list */
    struct conn *next_dirty;     /* worker's flush list */
    struct conn *next_mail;      /* worker's mailbox (under mbox_lock) */
    struct conn *next_drain;     /* the mailbox being drained (worker) */
    struct conn *next_deferred;  /* worker's deferred list */
    void *py;                    /* dispatch layer's object, or NULL */
    struct xfer *xfer;           /* send_file in progress (worker only) */
    struct xfer *xfer_new;       /* send_file asked, not started (lock) */
    uint8_t xfer_busy;           /* xfer != NULL, readable under lock */
    char *hbuf;                  /* sends held back behind the file (lock) */
    size_t hlen, hcap;
    struct dial *dial;           /* outgoing, until connected: the addresses */
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

/* An open regular file.  Its memory belongs to the dispatch layer's
 * object, which every request keeps alive; completions run on worker
 * `windex`.  Appends get their offsets at submission, so appends issued in
 * order land in that order even when they run in parallel. */
struct file {
    int fd;
    unsigned windex;
    pthread_mutex_t lock;        /* append_off */
    uint64_t append_off;
};

/* One file operation, from submission to its completion's dispatch. */
struct file_req {
    struct io_handle h;          /* first: the backend's view (h.fd) */
    struct file *f;
    struct file_req *next;       /* worker's file mailbox */
    uint8_t op;                  /* enum file_opcode */
    uint8_t append;              /* the offset is the file's append offset */
    uint8_t is_xfer;             /* a chunk read of a struct xfer */
    char *buf;
    size_t len, done;
    uint64_t off;
    long res;                    /* final: bytes (done) or -errno */
    void *py;                    /* dispatch layer's data */
    struct conn *hold;           /* the connection it was started for
                                    (conn_hold), or NULL: the dispatch
                                    layer's to set and give back */
};

/* send_file(): a range of a file streamed to a connection in chunks, one
 * read in flight, the next read issued only while the connection's unsent
 * bytes are below XFER_MARK, so memory stays bounded whatever the size. */
struct xfer {
    struct file_req r;           /* first: the chunk read (r.is_xfer) */
    struct conn *c;              /* holds a reference until finished */
    uint64_t off, end;           /* next byte to read; end of the range */
    uint64_t queued;             /* bytes handed to the send queue */
    char *chunk;
    int err;                     /* why it stopped, or 0 */
    uint8_t reading;
    void *py;                    /* dispatch layer's data */
};

enum entry_kind {
    ENTRY_MSG, ENTRY_OPEN, ENTRY_CLOSE, ENTRY_FILE, ENTRY_XFER,
    ENTRY_EOF,                   /* the peer half-closed; every message
                                    before its FIN has been handled */
    ENTRY_DRAIN,                 /* unsent fell back below max_unsent/2 */
};

/* One item for the dispatch layer (enum entry_kind): a whole message, a
 * connection opened, half-closed, drained or closed, a file operation or a
 * send_file done.  A message lies in `ptr` or, when ptr is NULL, in the
 * connection's rbuf at `off` (rbuf may move until dispatch). */
struct entry {
    struct conn *c;              /* NULL for ENTRY_FILE */
    struct file_req *fr;         /* ENTRY_FILE */
    const uint8_t *ptr;
    size_t off, len;
    uint8_t kind;
};

struct stats {
    _Atomic uint64_t accepted, closed, msgs_in, msgs_out, bytes_in, bytes_out;
    _Atomic uint64_t accept_errors, refused;
    _Atomic uint64_t errors[CLOSE_REASON_COUNT];
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

#define MAX_LISTENERS 16
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
    void **release;              /* sent references to give back */
    unsigned nrelease, release_cap;
    size_t release_bytes;        /* their bytes (at most) */
    int delivered;               /* this turn delivered a message */

    int64_t now;                 /* monotonic ms, refreshed every turn */
    int loop_err;                /* last errno from wait(), or 0 */
    unsigned loop_errors;        /* how many wait() calls failed */
    int64_t next_sweep;
    int64_t last_trim;           /* when the sweep last called malloc_trim */
    void *dctx;                  /* dispatch layer's per-thread context */
    struct io_event events[EVENT_BATCH];
};

struct server_config {
    struct framing framing;
    unsigned workers;
    const struct backend_ops *ops; /* preferred engine */
    int fallback;                /* use epoll if ops cannot start */
    int native_echo;             /* echo in C, no dispatch */
    size_t max_unsent;           /* pause receiving above this */
    unsigned max_connections;
    int64_t idle_timeout_ms;     /* 0: none */
    int64_t half_close_ms;       /* a half-closed connection that sends
                                    nothing this long is closed; 0: never */
    size_t unsent_limit;         /* a send past this closes (overflow) */
    unsigned nbufs, bufsize;     /* receive buffers per worker */
};

/* The dispatch layer (py_server.c). */
struct dispatch_ops {
    /* Runs on the worker thread before its loop / after it ends. */
    int (*thread_start)(struct worker *w);
    void (*thread_exit)(struct worker *w);
    /* Deliver w->batch[from..to).  Handlers may call conn_send/conn_close,
     * which can append entries and move w->batch: index it afresh. */
    void (*dispatch)(struct worker *w, unsigned from, unsigned to);
    /* Give back the owners of references that were sent (conn_send's
     * `owner`); on the worker thread, once a turn. */
    void (*release)(struct worker *w, void **owners, unsigned n);
};

struct server {
    struct server_config cfg;
    const struct dispatch_ops *dops;
    void *dispatch_arg;
    int lfds[MAX_LISTENERS];
    unsigned nlfds;
    struct worker *workers;
    unsigned nworkers;
    atomic_uint nconns;
    atomic_uint_fast64_t next_id;
    atomic_uint next_worker;     /* round robin among equally loaded ones */
    int accepting_work;          /* under start_lock: connect() may post */
    struct stats stats;
    int want_open;               /* dispatch wants ENTRY_OPEN notices */
    int want_eof;                /* ... ENTRY_EOF notices */
    int want_drain;              /* ... ENTRY_DRAIN notices */
    int running;
    const char *backend_name;    /* set by server_start */
    int fell_back;               /* errno that refused io_uring, or 0 */
    pthread_mutex_t start_lock;
    pthread_mutex_t stop_lock;   /* serialises server_stop */
    pthread_cond_t start_cond;
    unsigned nready;             /* workers that finished starting */
    struct slab_pool *conn_pool; /* every struct conn (slab.h) */
};

int server_init(struct server *s, const struct server_config *cfg,
                const struct dispatch_ops *dops, void *dispatch_arg);
/* Takes ownership of a listening socket fd.  Before server_start only. */
int server_add_listener(struct server *s, int fd);
/* Start the workers; 0 or -errno (workers that started are stopped). */
int server_start(struct server *s);
/* Stop and join every worker; every connection is closed. */
void server_stop(struct server *s);
void server_destroy(struct server *s);

/* Open an outgoing connection to addrs[0..n) (numeric addresses, tried in
 * turn): a worker creates the socket, connects it and reports ENTRY_OPEN,
 * or ENTRY_CLOSE with reason CLOSE_CONNECT (err: why the last attempt
 * failed, ETIMEDOUT once timeout_ms has passed).  `py` becomes c->py (a
 * reference for the dispatch layer).  Any thread; -EPIPE if the server is
 * not running, -EINVAL for an address that is not IPv4 or IPv6. */
int server_connect(struct server *s, const struct sockaddr_storage *addrs,
                   const socklen_t *lens, unsigned n, int64_t timeout_ms,
                   void *py, struct conn **out);

/* Submit a file operation; its ENTRY_FILE reaches the dispatch layer on
 * worker f->windex.  Any thread; -EPIPE if the server is not running. */
int server_file_submit(struct server *s, struct file_req *r);
/* The worker a new file or connection made now should use (the caller's
 * own worker when called from a handler). */
unsigned server_pick_worker(struct server *s);

/* Stream x->r.f's bytes [x->off, x->end) to c; an ENTRY_XFER reports the
 * end.  Messages sent meanwhile go out after the file.  Any thread; -EPIPE
 * if c is closing, -EBUSY if a send_file is already under way, -ENOMEM.
 * The core allocates (and frees) x->chunk. */
int conn_send_file(struct conn *c, struct xfer *x);

/* Called from any thread (the dispatch layer holds the GIL, which keeps `c`
 * alive while c->py links to it).  With an `owner` that keeps data[0..len)
 * alive and unchanged, a large message may be sent from data itself, not a
 * copy: then it returns 1 and the caller must add a reference to owner,
 * which dispatch_ops.release gives back once sent (before release can run,
 * so under the lock that orders them: the GIL).  0 when copied, or -errno. */
int conn_send(struct conn *c, const void *data, size_t len, int frame,
              void *owner);
void conn_close(struct conn *c, int graceful);
/* Worker thread only: close at once, counting `why` (a handler raised). */
void conn_abort(struct conn *c, enum close_reason why);
size_t conn_unsent(struct conn *c);
/* Whether the unsent bytes are at most max_unsent (a pushing application
 * should wait for ENTRY_DRAIN otherwise). */
int conn_writable(struct conn *c);
/* An operation started for c may still reply (its callback has not run):
 * a half-closed c stays open until conn_unhold().  Any thread; each keeps
 * a reference to c. */
void conn_hold(struct conn *c);
void conn_unhold(struct conn *c);
/* The connection whose callback the calling worker thread is running (the
 * dispatch layer sets w->current), or NULL on any other thread. */
struct conn *server_current_conn(struct server *s);
/* The worker the calling thread is, or NULL. */
struct worker *server_this_worker(struct server *s);
/* Drop a reference taken for the dispatch layer's object. */
void conn_unref(struct conn *c);

#endif
