/* objects.h - the binding's own objects, shared by its files: the Server
 * and Connection structs, and what one file offers the others.  Nothing
 * outside src/py/ includes it. */
#ifndef IOCPORT_PY_OBJECTS_H
#define IOCPORT_PY_OBJECTS_H

#include "py/module.h"
#include "core/core.h"

#if PY_VERSION_HEX < 0x030D0000
#define Py_IsFinalizing _Py_IsFinalizing
#endif

typedef struct {
    PyObject_HEAD
    struct server *srv;
    PyObject *handler, *on_connect, *on_close, *on_eof, *on_drain;
    PyObject *logger;
    PyTypeObject *conn_type;
    PyTypeObject *file_type;
    PyInterpreterState *interp;
    int started;
    int stopping;                /* a stop() has released the GIL */
    PyObject *tls_contexts;      /* list: the ssl.SSLContexts whose SSL_CTX
                                    the core uses, kept alive */
    iocp_state *st;              /* the module's */
    int http;                    /* HTTP framing: handlers get Requests */
    int resp;                    /* RESP framing: handlers get commands */
    int hold;                    /* handlers finish later (coroutines) */
    int resp_noreply_logged;     /* a command left unanswered was logged */
    uint64_t resp_logged;        /* the protocol errors logged, by kind */
    int resp_client;             /* RESP(client=True): replies come in */
    struct resp_limits resp_lim; /* RESP: the framing's limits */
    uint64_t http_logged;        /* the refusals logged, by http_error */
} ServerObject;

typedef struct {
    PyObject_HEAD
    struct conn *c;              /* NULL once closed (changed under the GIL) */
    uint64_t id;
    PyObject *state;
    PyObject *peer;              /* cached (host, port) */
    PyObject *connect_cb;        /* outgoing: callback(conn, error) */
    const char *reason;          /* close reason once closed */
    int err;
    PyObject *tls;               /* cached (version, cipher, alpn, cert) of
                                    a TLS connection, or NULL */
    PyObject *aio;               /* iocport._awaitable's state for it (the
                                    connect's outcome, drain() awaits), or
                                    NULL; told of drains and the close */
    struct answer_queue *aq;     /* HTTP, RESP: the messages owed an
                                    answer (order.h), or NULL */
    uint8_t resp_proto;          /* RESP: 2 or 3 (conn.resp_protocol) */
    PyObject *waiting;           /* RESP client: a list of the callbacks
                                    (or None) of the commands sent, from
                                    index waiting_head on, or NULL */
    Py_ssize_t waiting_head;
} ConnObject;

/* dispatch.c: the hooks the core's workers call. */
extern const struct dispatch_ops iocp_dispatch_ops;

/* file.c: a File object for a descriptor (taken over) whose requests run
 * on `srv`; `server` is kept alive by it.  ENTRY_FILE completions go to
 * iocp_file_done (under the GIL). */
PyObject *iocp_file_new(PyTypeObject *type, PyObject *server, struct server *srv,
                        PyObject *logger, int fd, unsigned long long append_off);
void iocp_file_done(struct file_req *r);
/* send_file's and respond_file's offset (None/absent: leave *offset) and
 * count (None/absent: leave *count) arguments: 0, or -1 with TypeError or
 * ValueError. */
int iocp_range_args(PyObject *offset_o, PyObject *count_o,
                    unsigned long long *offset, long long *count);
/* The range [offset, offset + *count) of a File (an open one), *count
 * < 0 meaning to its end (set): 0, or -1 with ValueError or OSError. */
int iocp_file_range(PyObject *file, unsigned long long offset, long long *count);
/* Connection.send_file: 0, or -1 with an exception set. */
int iocp_send_file(PyObject *file, struct conn *c, unsigned long long offset,
                   long long count, PyObject *callback);
void iocp_send_file_done(struct xfer *x);

/* framer.c: fill a struct framing from a framing spec object
 * (iocport.framing): any object with a `_spec()` method returning a dict:
 * "kind" (a name of FRAMING_KINDS, lib/framing.h) and the fields of struct
 * framing it uses ("hdr_size", "big_endian", "hdr_included", "delim",
 * "size", "max_size"; absent ones are 0).  0, or -1 with TypeError or
 * ValueError set. */
int iocp_framing_from_py(PyObject *spec, struct framing *out);
/* Append the bytes of `data` (any buffer) to a PyMem buffer buf[0 .. *len)
 * of *cap bytes, growing it: 0, or -1 with an exception set. */
int iocp_buf_append(uint8_t **buf, size_t *len, size_t *cap, PyObject *data);

/* connection.c: the Connection type; conn.peer from the connection's
 * address (0, or -1 with an exception). */
int iocp_connection_add_type(PyObject *module, iocp_state *st);
int iocp_conn_peer_to_py(ConnObject *self);
/* self->tls from its connection, once the handshake is over (0, or -1
 * with an exception). */
int iocp_conn_tls_to_py(ConnObject *self);

/* tls.c: TLS from an ssl.SSLContext (`server_side`: for accepting).  0,
 * or -1 with TypeError (not a context), ValueError (a context the core
 * cannot run, or for the other side) or RuntimeError (no usable
 * OpenSSL).  The caller keeps ctx alive while the core may use it. */
int iocp_tls_config(iocp_state *st, PyObject *ctx, int server_side,
                    struct tls_config *out);
/* A new ssl.SSLCertVerificationError (verify != 0, with verify_code and
 * verify_message) or ssl.SSLError for a failed handshake, or NULL. */
PyObject *iocp_tls_error(iocp_state *st, const char *why, long verify);
/* (version, (cipher, protocol, bits) or None, alpn or None, DER or None) */
PyObject *iocp_tls_info(const struct tls_info *i);

/* resp.c: a command's arguments at buf (lib/resp.h's spans) as a list of
 * bytes; a value written as RESP (proto 2 or 3) at *out, advancing it, or
 * with *out == NULL only counted: its size, or -1 with an exception; the
 * same as a new bytes object. */
PyObject *iocp_resp_command(const uint8_t *buf, const struct resp_arg *args,
                            size_t nargs);
Py_ssize_t iocp_resp_encode_into(iocp_state *st, PyObject *v, int proto,
                                 uint8_t **out);
PyObject *iocp_resp_encode(iocp_state *st, PyObject *value, int proto);
/* A whole reply at buf[0 .. len) as a Python value (RESPError for an
 * error reply), or NULL with an exception. */
PyObject *iocp_resp_decode(iocp_state *st, const struct resp_limits *lim,
                           const uint8_t *buf, size_t len);

/* reply.c: RESP commands and their answers (in order: order.h).  The
 * arguments of command e (now owed an answer, *seq), or NULL with an
 * exception; after its handler ran (failed: it raised), a command left
 * with no answer nor a defer() gets an error reply. */
PyObject *iocp_resp_message(ConnObject *o, struct conn *c, const struct entry *e,
                            const struct resp_msg *m, const struct resp_arg *args,
                            uint64_t *seq);
/* (logged with `logger` unless it is NULL; 1 if it was a missing reply) */
int iocp_resp_after(ConnObject *o, uint64_t seq, int failed, PyObject *logger);
/* A protocol error: Redis's reply in its turn, then the close. */
void iocp_resp_refused(ConnObject *o, struct conn *c, const struct resp_msg *m);
/* conn.reply(value) and conn.defer(). */
PyObject *iocp_conn_reply(ConnObject *o, PyObject *value);
PyObject *iocp_conn_defer(ConnObject *o);
/* The client side (RESP(client=True)): conn.command(*args, callback);
 * a reply delivered (its command's callback, or the handler for a push
 * or a reply no command waits for); the close (the callbacks still
 * waiting get ConnectionError). */
PyObject *iocp_conn_command(ConnObject *o, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames);
void iocp_resp_reply_in(ServerObject *so, ConnObject *o, const struct entry *e,
                        const struct resp_msg *m);
void iocp_resp_closed(ServerObject *so, ConnObject *o);

/* request.c: HTTP requests and their answers (in order: order.h). */
struct answer_queue;
/* The Request for an HTTP ENTRY_MSG of o (c), now owed an answer (c is
 * held until it is sent).  New reference, or NULL with an exception. */
PyObject *iocp_http_request(iocp_state *st, ConnObject *o, struct conn *c,
                            const struct entry *e, const struct http_msg *m,
                            const struct http_field *fields);
/* The handler of req raised: 500 unless it was answered. */
void iocp_http_failed(iocp_state *st, PyObject *req);
/* A request the core refused: its answer, in its turn. */
void iocp_http_refused(iocp_state *st, ConnObject *o, struct conn *c,
                       const struct http_msg *m);
/* The bytes a Request was framed from (what the core counted for it), or
 * -1 if o is not a Request. */
Py_ssize_t iocp_request_size(PyObject *o);
/* conn.respond(status, headers=(), body=b''): the oldest request owed. */
PyObject *iocp_conn_respond(ConnObject *o, PyObject *args, PyObject *kwds);

#endif
