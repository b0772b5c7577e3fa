/* core.h - the native core as the binding sees it: the only core header
 * the Python binding (src/py/) includes.  Servers, workers and
 * connections are opaque here; the binding reaches them through the
 * functions below, and hears of everything through its dispatch hooks,
 * which a worker calls with a batch of entries (whole messages, notices,
 * file results).  No Python in the core: the dispatch layer's objects are
 * `void *` to it.
 *
 * Threads: functions marked "any thread" take the locks they need; those
 * marked "dispatch" are for the dispatch hooks, on the worker calling
 * them. */
#ifndef IOCPORT_CORE_H
#define IOCPORT_CORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "io/backend.h"
#include "lib/framing.h"

struct server;
struct worker;
struct conn;
struct ossl;

#define MAX_LISTENERS 16

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
    X(OVERFLOW,  "overflow",  "warning", "a send past unsent_limit")        \
    X(TLS,       "tls",       "info",    "TLS failed: handshake, certificate, record, or no handshake in time") \
    X(TLS_EOF,   "tls_eof",   "debug",   "the peer closed without a TLS close_notify") \
    X(HTTP,      "http",      NULL,      "an HTTP request refused with an error status (logged once per kind)") \
    X(RESP,      "resp",      NULL,      "a RESP protocol error: Redis's error reply sent (logged once per kind)")

enum close_reason {
#define CLOSE_ENUM(name, str, level, doc) CLOSE_##name,
    CLOSE_REASONS(CLOSE_ENUM)
#undef CLOSE_ENUM
    CLOSE_REASON_COUNT
};
extern const char *const close_reason_name[CLOSE_REASON_COUNT];
/* The logging level of a close line, or NULL for none. */
extern const char *const close_reason_level[CLOSE_REASON_COUNT];

/* ---- files ---------------------------------------------------------------- */

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

/* One file operation, from submission to its completion's dispatch.  The
 * dispatch layer fills f, op, append, buf, len, off, py and hold; the core
 * the rest. */
struct file_req {
    struct io_handle h;          /* first: the engine's view (h.fd) */
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

/* send_file(): a range of a file streamed to a connection in chunks.  The
 * dispatch layer fills r.f, r.hold, off, end and py; it reads queued and
 * err once ENTRY_XFER reports the end. */
struct xfer {
    struct file_req r;           /* first: the chunk read (r.is_xfer) */
    struct conn *c;              /* holds a reference until finished */
    uint64_t off, end;           /* next byte to read; end of the range */
    uint64_t queued;             /* bytes handed to the send queue */
    char *chunk;                 /* the core's */
    int err;                     /* why it stopped, or 0 */
    uint8_t reading;
    void *py;                    /* dispatch layer's data */
};

/* ---- what the dispatch layer is given ------------------------------------- */

enum entry_kind {
    ENTRY_MSG,                   /* a whole message: ptr, len */
    ENTRY_OPEN,                  /* a connection is established */
    ENTRY_CLOSE,                 /* it closed (conn_reason says why) */
    ENTRY_FILE,                  /* a file operation is done: fr */
    ENTRY_XFER,                  /* a send_file is over: (struct xfer *)fr */
    ENTRY_EOF,                   /* the peer half-closed; every message
                                    before its FIN has been handled */
    ENTRY_DRAIN,                 /* unsent fell back below max_unsent/2 */
};

/* One item of a batch.  A message's bytes are at ptr for the length of the
 * dispatch call (in an engine buffer or the connection's own). */
struct entry {
    struct conn *c;              /* NULL for ENTRY_FILE and ENTRY_XFER */
    struct file_req *fr;         /* ENTRY_FILE, ENTRY_XFER */
    const uint8_t *ptr;
    size_t off, len;             /* (off: the core's, until dispatch) */
    uint8_t kind;
    uint32_t aux;                /* HTTP, RESP framing: the message's
                                    http_msg or resp_msg */
};

/* A message under HTTP framing: one request, ptr[0 .. len) its bytes (the
 * spans of r are offsets into them; a chunked body is de-chunked there),
 * or a request the parser refused (status != 0, len 0): the dispatch
 * layer answers it with that status in its turn, after the replies owed
 * before it, and the connection's input has ended. */
struct http_msg {
    struct http_request r;
    uint32_t field0;             /* its fields: worker_http_fields() */
    uint16_t status;             /* refused: 400, 413, ...; else 0 */
    int16_t error;               /* refused: http_parse()'s return */
};
/* Dispatch: the request of an ENTRY_MSG under HTTP framing, and its header
 * then trailer fields (r.nheaders + r.ntrailers of them). */
const struct http_msg *worker_http_msg(struct worker *w, const struct entry *e);
const struct http_field *worker_http_fields(struct worker *w,
                                            const struct http_msg *m);

/* A message under RESP framing: one command, ptr[0 .. len) its bytes (the
 * arguments' spans are offsets into them), or a protocol error (error <
 * 0, len 0): the dispatch layer answers Redis's error text in its turn,
 * and the connection's input has ended.  With framing.resp_client, one
 * whole reply (no arguments; `top` its type). */
struct resp_msg {
    uint32_t arg0, nargs;        /* its arguments: worker_resp_args() */
    int16_t error;               /* a framer status < 0, or 0 */
    uint8_t bad;                 /* the error's offending byte */
    uint8_t top;                 /* a reply (resp_client): its type byte
                                    ('>' for a push) */
};
const struct resp_msg *worker_resp_msg(struct worker *w, const struct entry *e);
const struct resp_arg *worker_resp_args(struct worker *w, const struct resp_msg *m);

/* The dispatch layer's hooks; each runs on the worker thread. */
struct dispatch_ops {
    /* Before its loop / after it ends. */
    int (*thread_start)(struct worker *w);
    void (*thread_exit)(struct worker *w);
    /* Deliver entries [from, to) (worker_entry).  Handlers may call
     * conn_send/conn_close, which can append entries and move the batch:
     * index it afresh. */
    void (*dispatch)(struct worker *w, unsigned from, unsigned to);
    /* Give back the owners of references that were sent (conn_send's
     * `owner`); once a turn. */
    void (*release)(struct worker *w, void **owners, unsigned n);
};

/* Dispatch: the batch's entry i (valid until the next dispatch). */
struct entry *worker_entry(struct worker *w, unsigned i);
/* Dispatch: server_create()'s dispatch_arg. */
void *worker_dispatch_arg(struct worker *w);
/* Dispatch: the dispatch layer's per-thread slot (its thread state). */
void **worker_dctx(struct worker *w);
/* Dispatch: the connection whose callback runs now (server_current_conn
 * tells it to operations started from there), or NULL. */
void worker_set_current(struct worker *w, struct conn *c);
/* Dispatch: one sent reference's owner to give back now, or NULL (one
 * before each message, so the heap reuses its block). */
void *worker_pop_release(struct worker *w);

/* ---- the server ------------------------------------------------------------ */

struct server_config {
    struct framing framing;
    unsigned workers;
    const struct backend_ops *ops; /* preferred engine */
    int fallback;                /* use epoll if ops cannot start */
    int native_echo;             /* echo in C, no dispatch */
    size_t max_unsent;           /* pause receiving above this */
    size_t unsent_limit;         /* a send past this closes (overflow) */
    unsigned max_connections;
    int64_t idle_timeout_ms;     /* 0: none */
    int64_t half_close_ms;       /* a half-closed connection that sends
                                    nothing this long is closed; 0: never */
    unsigned nbufs, bufsize;     /* receive buffers per worker */
    uint8_t want_open;           /* the dispatch layer wants ENTRY_OPEN for
                                    accepted connections (outgoing ones
                                    always have it) */
    uint8_t want_eof;            /* ... ENTRY_EOF */
    uint8_t want_drain;          /* ... ENTRY_DRAIN */
    uint8_t hold_msgs;           /* handlers finish messages later, on
                                    another thread (conn_held_done) */
    int64_t tls_handshake_ms;    /* a TLS handshake not over by then
                                    fails; 0: no limit */
};

/* TLS for a listener's connections or an outgoing one. */
struct tls_config {
    const struct ossl *o;        /* OpenSSL (lib/ossl.h) */
    void *ctx;                   /* an SSL_CTX, kept alive by the caller
                                    until the server is destroyed */
    const char *host;            /* outgoing: SNI, and the name checked
                                    if check_host (copied) */
    int check_host;
    int ktls;                    /* try kernel TLS after the handshake
                                    (ctx prepared: ktls_prepare_ctx) */
};

/* Counters, read together (each is exact; the set is a moment's). */
struct server_stats {
    unsigned connections;
    uint64_t accepted, closed, msgs_in, msgs_out, bytes_in, bytes_out;
    uint64_t accept_errors, refused;
    uint64_t pauses;             /* times a connection stopped receiving
                                    for backpressure */
    uint64_t errors[CLOSE_REASON_COUNT];
    /* TLS connections whose records go out through the kernel (kTLS);
     * that could not because the kernel offers no tls ULP; or because
     * their session is one the kernel path does not take (version, cipher,
     * keys not seen) or it refused it. */
    uint64_t ktls_tx, ktls_no_ulp, ktls_unsupported;
};

/* A server (not started), or NULL with errno set. */
struct server *server_create(const struct server_config *cfg,
                             const struct dispatch_ops *dops,
                             void *dispatch_arg);
/* Stops it if it runs, then frees it. */
void server_destroy(struct server *s);
/* Takes ownership of a listening socket fd, whose connections speak TLS
 * (tls) or not (NULL).  Before server_start only; -ENOSPC past
 * MAX_LISTENERS. */
int server_add_listener(struct server *s, int fd, const struct tls_config *tls);
/* Start the workers; 0 or -errno (workers that started are stopped). */
int server_start(struct server *s);
/* Stop and join every worker; every connection is closed.  Any thread
 * but a worker of this server; two at once are serialised. */
void server_stop(struct server *s);
/* The engine in use ("uring", "epoll"), or the preferred one before
 * start; the errno that made io_uring fall back to epoll, or 0. */
const char *server_backend(struct server *s);
int server_fell_back(struct server *s);
/* Whether the calling thread is one of the server's workers. */
int server_on_worker(struct server *s);
void server_get_stats(struct server *s, struct server_stats *out);
/* Worker i's live connections and those it was ever given: 0, or -1 if
 * there is no worker i (or the server is not running).  Any thread. */
int server_worker_load(struct server *s, unsigned i, unsigned *live,
                       uint64_t *opened);

/* Open an outgoing connection to addrs[0..n) (numeric addresses, tried in
 * turn): a worker creates the socket, connects it and reports ENTRY_OPEN,
 * or ENTRY_CLOSE with reason CLOSE_CONNECT (err: why the last attempt
 * failed, ETIMEDOUT once timeout_ms has passed).  `py` is attached to the
 * connection (see conn_py).  Any thread; -EPIPE if the server is not
 * running, -EINVAL for an address that is not IPv4 or IPv6.  With `tls`
 * it speaks TLS: ENTRY_OPEN comes once the handshake is over, and a
 * handshake that fails closes it with CLOSE_TLS (conn_tls_error says
 * why). */
int server_connect(struct server *s, const struct sockaddr_storage *addrs,
                   const socklen_t *lens, unsigned n, int64_t timeout_ms,
                   const struct tls_config *tls, void *py, struct conn **out);

/* Submit a file operation; its ENTRY_FILE reaches the dispatch layer on
 * worker f->windex.  Any thread; -EPIPE if the server is not running. */
int server_file_submit(struct server *s, struct file_req *r);
/* The worker a new file should use (the caller's own worker when called
 * from a handler). */
unsigned server_pick_worker(struct server *s);
/* The connection whose callback the calling worker thread is running, or
 * NULL on any other thread. */
struct conn *server_current_conn(struct server *s);

/* ---- connections ---------------------------------------------------------- */

/* Queue a message (framed with the server's framing when `frame`).  Any
 * thread (the dispatch layer holds the GIL, which keeps `c` alive while
 * its object links to it).  With an `owner` that keeps data[0..len) alive
 * and unchanged, a large message may be sent from data itself, not a
 * copy: then it returns 1 and the caller must add a reference to owner,
 * which dispatch_ops.release gives back once sent (before release can
 * run, so under the lock that orders them: the GIL).  0 when copied, or
 * -EPIPE (closing or closed), -ENOBUFS (past unsent_limit: closed),
 * -EMSGSIZE (the framing cannot frame it), -EILSEQ (it contains the
 * delimiter), -ENOMEM. */
int conn_send(struct conn *c, const void *data, size_t len, int frame,
              void *owner);
/* Stream x->r.f's bytes [x->off, x->end) to c; an ENTRY_XFER reports the
 * end.  Messages sent meanwhile go out after the file.  Any thread; -EPIPE
 * if c is closing, -EBUSY if a send_file is already under way, -ENOMEM. */
int conn_send_file(struct conn *c, struct xfer *x);
/* Graceful: stop handling input, send what is queued, FIN, wait for the
 * peer's; else at once.  Any thread. */
void conn_close(struct conn *c, int graceful);
/* End c's input, counting `why` (a handler raised): nothing more of it is
 * delivered; the replies already queued go out, then a graceful close
 * (our FIN; what the peer sends meanwhile is discarded).  Any thread. */
void conn_end_input(struct conn *c, enum close_reason why);
size_t conn_unsent(struct conn *c);
/* Whether the unsent bytes are at most max_unsent; when not, the
 * connection owes an ENTRY_DRAIN once they are back to half. */
int conn_writable(struct conn *c);
/* An operation started for c may still reply (its callback has not run):
 * a half-closed c stays open until conn_unhold().  Any thread; each keeps
 * c alive. */
void conn_hold(struct conn *c);
void conn_unhold(struct conn *c);

/* With cfg.hold_msgs, a message of `len` bytes delivered to the dispatch
 * layer counts toward c's backpressure (as unsent bytes do: receiving
 * pauses above max_unsent, resumes at half) until this is called for it,
 * once it is handled.  Any thread; the count is its bytes plus what
 * carrying it costs (HELD_MSG_COST). */
void conn_held_done(struct conn *c, size_t len);

/* The dispatch layer's object for c, or NULL; attaching keeps c alive
 * until conn_detach (which the dispatch layer calls after ENTRY_CLOSE). */
void *conn_py(const struct conn *c);
void conn_attach(struct conn *c, void *py);
void conn_detach(struct conn *c);
/* Dispatch: whether entry kind `kind` of c is still to be delivered (not
 * after a handler of c raised, nor a message after our close(), nor a
 * notice once c is closing). */
int conn_deliverable(const struct conn *c, enum entry_kind kind);
uint64_t conn_id(const struct conn *c);
enum close_reason conn_reason(const struct conn *c);
int conn_err(const struct conn *c);   /* the errno behind the reason */
int conn_outgoing(const struct conn *c);
/* The peer's address (*len 0 when unknown). */
const struct sockaddr *conn_peer(const struct conn *c, socklen_t *len);
/* Dispatch (on_eof asked): stay open after the peer's FIN until closed. */
void conn_keep_open(struct conn *c);

/* A TLS connection's session, fixed once its handshake is over. */
struct tls_info {
    const char *version;         /* "TLSv1.3" (OpenSSL's, static) */
    const char *cipher;          /* "TLS_AES_128_GCM_SHA256", or NULL */
    const char *cipher_version;  /* the cipher's protocol, or NULL */
    int bits;                    /* its secret bits */
    uint8_t alpn_len;            /* the ALPN protocol chosen, or 0 */
    unsigned char alpn[255];
    unsigned char *peer_der;     /* the peer's certificate (DER), or NULL */
    size_t peer_len;
};
/* Whether c speaks TLS. */
int conn_is_tls(const struct conn *c);
/* c's TLS session once its handshake is over, else NULL.  Any thread. */
const struct tls_info *conn_tls_info(const struct conn *c);
/* Why c's TLS failed (a sentence), with the certificate check's X509_V_ERR
 * code in *verify (0: not a verification failure); NULL if it did not
 * fail.  Dispatch, or once c is closed. */
const char *conn_tls_error(const struct conn *c, long *verify);

#endif
