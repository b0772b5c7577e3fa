/* py_server.c - the dispatch layer and the Server/Connection types.
 *
 * The only code that touches Python from a worker thread.  Each worker gets
 * one persistent thread state for its life; a turn's whole messages are
 * delivered under one GIL hold (PyEval_RestoreThread .. PyEval_SaveThread),
 * in arrival order, so the order within a connection is kept.  Nothing here
 * runs once the interpreter is finalizing: iocport/server.py's atexit hook
 * stops every running server before finalization begins, and every entry
 * point checks Py_IsFinalizing() as well. */
#include "py/module.h"
#include "core/core.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

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
} ConnObject;

/* ---- dispatch ------------------------------------------------------------ */

static int
d_thread_start(struct worker *w)
{
    ServerObject *so = worker_dispatch_arg(w);
    /* Created without the GIL, as PyGILState_Ensure does; bound to this
     * thread at its first PyEval_RestoreThread. */
    PyThreadState *ts = PyThreadState_New(so->interp);
    if (ts == NULL)
        return -ENOMEM;
    *worker_dctx(w) = ts;
    return 0;
}

static void
d_thread_exit(struct worker *w)
{
    PyThreadState *ts = *worker_dctx(w);
    if (ts == NULL || Py_IsFinalizing())
        return;   /* never touch a finalizing interpreter: leak instead */
    PyEval_RestoreThread(ts);
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
    *worker_dctx(w) = NULL;
}

static ConnObject *
conn_object(ServerObject *so, struct conn *c)
{
    ConnObject *py = conn_py(c);
    if (py != NULL)
        return py;
    ConnObject *o = (ConnObject *)so->conn_type->tp_alloc(so->conn_type, 0);
    if (o == NULL)
        return NULL;
    o->c = c;
    o->id = conn_id(c);
    conn_attach(c, o);
    return o;
}

/* A callback raised: log it with its traceback and close that connection. */
static void
callback_failed(ServerObject *so, struct conn *c, const char *what)
{
    iocp_log_exception(so->logger, PyUnicode_FromFormat(
        "%s raised; closing connection %llu", what,
        (unsigned long long)conn_id(c)));
    conn_abort(c, CLOSE_HANDLER);
}

/* Outgoing connections: report the connect's outcome once. */
static void
connect_done(ServerObject *so, ConnObject *o, int err)
{
    PyObject *cb = o->connect_cb;
    if (cb == NULL)
        return;
    o->connect_cb = NULL;
    PyObject *exc = Py_None, *r = NULL;
    if (err) {
        exc = iocp_oserror(err);
        if (exc == NULL) {
            PyErr_WriteUnraisable(cb);
            Py_DECREF(cb);
            return;
        }
    } else {
        Py_INCREF(exc);
    }
    PyObject *args[2] = {(PyObject *)o, exc};
    r = PyObject_Vectorcall(cb, args, 2, NULL);
    if (r == NULL)
        iocp_log_exception(so->logger, PyUnicode_FromFormat(
            "connect callback raised (connection %llu)",
            (unsigned long long)o->id));
    Py_XDECREF(r);
    Py_DECREF(exc);
    Py_DECREF(cb);
}

static int conn_peer_to_py(ConnObject *self);

static void
deliver_close(ServerObject *so, struct conn *c)
{
    ConnObject *o = conn_py(c);
    enum close_reason why = conn_reason(c);
    int err = conn_err(c);
    const char *level = close_reason_level[why];
    if (level != NULL) {
        PyObject *msg = PyUnicode_FromFormat(
            "connection %llu closed: %s%s%s", (unsigned long long)conn_id(c),
            close_reason_name[why], err ? ": " : "", err ? strerror(err) : "");
        if (msg != NULL) {
            iocp_log(so->logger, level, msg, NULL);
            Py_DECREF(msg);
        } else {
            PyErr_Clear();
        }
    }
    if (o == NULL && so->on_close == Py_None)
        return;
    if (o == NULL && (o = conn_object(so, c)) == NULL) {
        PyErr_WriteUnraisable(so->on_close);
        return;
    }
    o->reason = close_reason_name[why];
    o->err = err;
    if (o->peer == NULL && conn_peer_to_py(o) < 0)
        PyErr_Clear();   /* conn.peer outlives the connection, or is None */
    o->c = NULL;
    /* Never connected: the callback hears why, then on_close runs as for
     * every connection (reason 'connect'). */
    if (o->connect_cb != NULL)
        connect_done(so, o, err ? err : ECONNABORTED);
    if (so->on_close != Py_None) {
        PyObject *r = PyObject_CallOneArg(so->on_close, (PyObject *)o);
        if (r == NULL)
            iocp_log_exception(so->logger, PyUnicode_FromFormat(
                "on_close raised (connection %llu)", (unsigned long long)o->id));
        Py_XDECREF(r);
    }
    Py_DECREF(o);
    conn_detach(c);
}

/* Call cb(conn) for a notice; False on an exception (logged, and the
 * connection closed).  *result, if given, gets whether it returned true. */
static int
notify(ServerObject *so, struct conn *c, ConnObject *o, PyObject *cb,
       const char *what, int *result)
{
    PyObject *r = PyObject_CallOneArg(cb, (PyObject *)o);
    if (r == NULL) {
        callback_failed(so, c, what);
        return 0;
    }
    if (result != NULL) {
        *result = PyObject_IsTrue(r);
        if (*result < 0) {
            Py_DECREF(r);
            callback_failed(so, c, what);
            return 0;
        }
    }
    Py_DECREF(r);
    return 1;
}

/* A file or send_file completion: its callback runs as part of the
 * connection it was started for, if any (so what it starts is held for
 * that connection too), whose hold it then gives back. */
static void
deliver_file(struct worker *w, struct entry *e)
{
    struct conn *hold = e->fr->hold;
    worker_set_current(w, hold);
    if (e->kind == ENTRY_FILE)
        iocp_file_done(e->fr);   /* frees e->fr */
    else
        iocp_send_file_done((struct xfer *)e->fr);
    worker_set_current(w, NULL);
    if (hold != NULL)
        conn_unhold(hold);
}

static void
d_dispatch(struct worker *w, unsigned from, unsigned to)
{
    ServerObject *so = worker_dispatch_arg(w);
    void **dctx = worker_dctx(w);
    if (Py_IsFinalizing())
        return;
    PyEval_RestoreThread(*dctx);
    for (unsigned i = from; i < to; i++) {
        struct entry *e = worker_entry(w, i);   /* afresh: handlers may
                                                    move the batch */
        struct conn *c = e->c;
        ConnObject *o;

        if (e->kind == ENTRY_FILE || e->kind == ENTRY_XFER) {
            deliver_file(w, e);
            continue;
        }
        if (e->kind == ENTRY_CLOSE) {
            deliver_close(so, c);
            continue;
        }
        if (!conn_deliverable(c, e->kind))
            continue;
        if ((o = conn_object(so, c)) == NULL) {
            callback_failed(so, c, "creating the connection object");
            continue;
        }
        worker_set_current(w, c);
        if (e->kind == ENTRY_OPEN) {
            /* on_connect for every connection, accepted or connected;
             * then an outgoing one's connect callback. */
            if ((so->on_connect == Py_None ||
                 notify(so, c, o, so->on_connect, "on_connect", NULL)) &&
                conn_outgoing(c))
                connect_done(so, o, 0);
        } else if (e->kind == ENTRY_EOF) {
            int keep = 0;
            if (notify(so, c, o, so->on_eof, "on_eof", &keep) && keep)
                conn_keep_open(c);
        } else if (e->kind == ENTRY_DRAIN) {
            notify(so, c, o, so->on_drain, "on_drain", NULL);
        } else {
            /* One sent reference given back per message, before the
             * message and its reply are allocated: the heap reuses the
             * block instead of growing, then trimming, around a batch of
             * frees. */
            Py_XDECREF((PyObject *)worker_pop_release(w));
            PyObject *msg = PyBytes_FromStringAndSize((const char *)e->ptr,
                                                      (Py_ssize_t)e->len);
            if (msg == NULL) {
                callback_failed(so, c, "creating the message");
            } else {
                PyObject *args[2] = {(PyObject *)o, msg};
                PyObject *r = PyObject_Vectorcall(so->handler, args, 2, NULL);
                Py_DECREF(msg);
                if (r == NULL)
                    callback_failed(so, c, "handler");
                Py_XDECREF(r);
            }
        }
        worker_set_current(w, NULL);
    }
    *dctx = PyEval_SaveThread();
}

static void
d_release(struct worker *w, void **owners, unsigned n)
{
    if (Py_IsFinalizing())
        return;   /* leaked: no Python once finalization has begun */
    void **dctx = worker_dctx(w);
    PyEval_RestoreThread(*dctx);
    for (unsigned i = 0; i < n; i++)
        Py_DECREF((PyObject *)owners[i]);
    *dctx = PyEval_SaveThread();
}

static const struct dispatch_ops py_dispatch = {
    .thread_start = d_thread_start,
    .thread_exit = d_thread_exit,
    .dispatch = d_dispatch,
    .release = d_release,
};

/* ---- Connection ------------------------------------------------------------ */

static int
conn_traverse(ConnObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->state);
    Py_VISIT(self->peer);
    Py_VISIT(self->connect_cb);
    return 0;
}

static int
conn_clear(ConnObject *self)
{
    Py_CLEAR(self->state);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->connect_cb);
    return 0;
}

static void
conn_dealloc(ConnObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    conn_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* `owner` (or NULL): an immutable object holding buf, which a large
 * message is then sent from instead of a copy. */
static PyObject *
send_data(ConnObject *self, const void *buf, Py_ssize_t len, int frame,
          PyObject *owner)
{
    struct conn *c = self->c;
    if (c == NULL)
        Py_RETURN_FALSE;
    int rc = conn_send(c, buf, (size_t)len, frame, owner);
    if (rc == 1)
        Py_INCREF(owner);   /* given back by d_release once sent */
    if (rc >= 0)
        Py_RETURN_TRUE;
    switch (rc) {
    case -EPIPE:     /* closing or closed */
    case -ENOBUFS:   /* closed by this send (overflow) */
        Py_RETURN_FALSE;
    case -EMSGSIZE:
        return PyErr_Format(PyExc_ValueError,
                            "a message of %zd bytes cannot be framed by this "
                            "server's framing", len);
    case -EILSEQ:
        PyErr_SetString(PyExc_ValueError,
                        "message contains the delimiter; use send_raw() for "
                        "bytes that are already framed");
        return NULL;
    default:
        return PyErr_NoMemory();
    }
}

static PyObject *
send_common(ConnObject *self, PyObject *arg, int frame)
{
    if (PyBytes_CheckExact(arg))   /* the usual case: no buffer export */
        return send_data(self, PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg),
                         frame, arg);
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError,
                     "send() expects bytes, bytearray or memoryview, got %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    PyObject *r = send_data(self, view.buf, view.len, frame, NULL);
    PyBuffer_Release(&view);
    return r;
}

static PyObject *
conn_send_m(ConnObject *self, PyObject *arg)
{
    return send_common(self, arg, 1);
}

static PyObject *
conn_send_raw(ConnObject *self, PyObject *arg)
{
    return send_common(self, arg, 0);
}

static PyObject *
conn_send_file_m(ConnObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"file", "offset", "count", "callback", NULL};
    PyObject *file, *cb = Py_None, *offset_o = NULL, *count_o = Py_None;
    unsigned long long offset = 0;
    long long count = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOO:send_file", kwlist,
                                     &file, &offset_o, &count_o, &cb))
        return NULL;
    if (offset_o != NULL) {
        if (!PyLong_Check(offset_o) || PyBool_Check(offset_o))
            return PyErr_Format(PyExc_TypeError, "offset must be an int");
        offset = PyLong_AsUnsignedLongLong(offset_o);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return PyErr_Format(PyExc_ValueError, "offset must be >= 0");
        }
    }
    if (count_o != Py_None) {
        if (!PyLong_Check(count_o) || PyBool_Check(count_o))
            return PyErr_Format(PyExc_TypeError, "count must be an int or None");
        count = PyLong_AsLongLong(count_o);
        if (count == -1 && PyErr_Occurred())
            return NULL;
        if (count < 0)
            return PyErr_Format(PyExc_ValueError, "count must be >= 0 or None");
    }
    PyObject *module = PyType_GetModule(Py_TYPE(self));
    if (module == NULL)
        return NULL;
    if (!PyObject_TypeCheck(file, iocp_get_state(module)->FileType))
        return PyErr_Format(PyExc_TypeError, "send_file() expects an "
                            "iocport.File (Server.open_file), got %.100s",
                            Py_TYPE(file)->tp_name);
    if (cb != Py_None && !PyCallable_Check(cb))
        return PyErr_Format(PyExc_TypeError, "callback must be callable or "
                            "None, got %.100s", Py_TYPE(cb)->tp_name);
    if (self->c == NULL) {
        PyErr_SetString(PyExc_ConnectionError, "the connection is closed");
        return NULL;
    }
    if (iocp_send_file(file, self->c, offset, count, cb) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
conn_close_m(ConnObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->c != NULL)
        conn_close(self->c, 1);
    Py_RETURN_NONE;
}

static PyObject *
conn_abort_m(ConnObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->c != NULL)
        conn_close(self->c, 0);
    Py_RETURN_NONE;
}

static PyObject *
sockaddr_to_py(const struct sockaddr *sa, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];
    if (len >= sizeof(struct sockaddr_in) && sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (len >= sizeof(struct sockaddr_in6) && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(siIi)", host, ntohs(a->sin6_port),
                             ntohl(a->sin6_flowinfo), (int)a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* Fill self->peer from the open connection's address; 0 or -1. */
static int
conn_peer_to_py(ConnObject *self)
{
    socklen_t len;
    const struct sockaddr *sa = conn_peer(self->c, &len);
    self->peer = sockaddr_to_py(sa, len);
    return self->peer != NULL ? 0 : -1;
}

static PyObject *
conn_get_peer(ConnObject *self, void *Py_UNUSED(closure))
{
    if (self->peer == NULL) {
        if (self->c == NULL)
            Py_RETURN_NONE;
        if (conn_peer_to_py(self) < 0)
            return NULL;
    }
    return Py_NewRef(self->peer);
}

static PyObject *
conn_get_id(ConnObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->id);
}

static PyObject *
conn_get_closed(ConnObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->c == NULL);
}

static PyObject *
conn_get_reason(ConnObject *self, void *Py_UNUSED(closure))
{
    if (self->reason == NULL)
        Py_RETURN_NONE;
    return PyUnicode_FromString(self->reason);
}

static PyObject *
conn_get_unsent(ConnObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->c ? conn_unsent(self->c) : 0);
}

static PyObject *
conn_get_writable(ConnObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->c != NULL && conn_writable(self->c));
}

static PyObject *
conn_get_state(ConnObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->state ? self->state : Py_None);
}

static int
conn_set_state(ConnObject *self, PyObject *v, void *Py_UNUSED(closure))
{
    Py_XSETREF(self->state, Py_XNewRef(v));
    return 0;
}

static PyObject *
conn_repr(ConnObject *self)
{
    return PyUnicode_FromFormat("<iocport.Connection id=%llu %s>",
                                (unsigned long long)self->id,
                                self->c ? "open" : "closed");
}

static PyMethodDef conn_methods[] = {
    {"send", (PyCFunction)conn_send_m, METH_O,
     "send(data) -> bool\n--\n\n"
     "Queue one message, framed with the server's framing, and return at once.\n"
     "Safe from any thread.  Returns False (and sends nothing) once the\n"
     "connection is closing or closed, or when the message would take its\n"
     "unsent bytes past unsent_limit: the connection is then closed\n"
     "(reason 'overflow')."},
    {"send_raw", (PyCFunction)conn_send_raw, METH_O,
     "send_raw(data) -> bool\n--\n\nQueue bytes that are already framed."},
    {"send_file", (PyCFunction)(void (*)(void))conn_send_file_m,
     METH_VARARGS | METH_KEYWORDS,
     "send_file(file, offset=0, count=None, callback=None) -> None\n--\n\n"
     "Stream count bytes of an iocport.File from offset (None: to the end)\n"
     "natively, with bounded memory.  Messages sent meanwhile follow the\n"
     "file.  callback(nbytes, error) runs when all of it is with the kernel\n"
     "or when it stopped (error: an OSError)."},
    {"close", (PyCFunction)conn_close_m, METH_NOARGS,
     "close() -> None\n--\n\n"
     "Stop receiving, send what is queued, then close.  Idempotent."},
    {"abort", (PyCFunction)conn_abort_m, METH_NOARGS,
     "abort() -> None\n--\n\nClose at once, dropping unsent data."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef conn_getset[] = {
    {"id", (getter)conn_get_id, NULL, "Unique id of this connection.", NULL},
    {"peer", (getter)conn_get_peer, NULL, "The peer's address, e.g. (host, port).", NULL},
    {"closed", (getter)conn_get_closed, NULL, "True once the connection is closed.", NULL},
    {"close_reason", (getter)conn_get_reason, NULL,
     "Why it closed (one of iocport.CLOSE_REASONS), or None while open.",
     NULL},
    {"unsent", (getter)conn_get_unsent, NULL, "Bytes queued but not yet sent.", NULL},
    {"writable", (getter)conn_get_writable, NULL,
     "True while the bytes queued are at most max_unsent (a server that\n"
     "pushes should wait for on_drain otherwise); False once closed.", NULL},
    {"state", (getter)conn_get_state, (setter)conn_set_state,
     "A slot for the user's own state (None at first).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot conn_slots[] = {
    {Py_tp_doc, "A connection: passed to handlers; cannot be created directly."},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_repr, conn_repr},
    {Py_tp_methods, conn_methods},
    {Py_tp_getset, conn_getset},
    {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "iocport.Connection",
    .basicsize = sizeof(ConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = conn_slots,
};

/* ---- Server ---------------------------------------------------------------- */

static int
server_traverse(ServerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->handler);
    Py_VISIT(self->on_connect);
    Py_VISIT(self->on_close);
    Py_VISIT(self->on_eof);
    Py_VISIT(self->on_drain);
    Py_VISIT(self->logger);
    Py_VISIT(self->conn_type);
    Py_VISIT(self->file_type);
    return 0;
}

static int
server_clear(ServerObject *self)
{
    Py_CLEAR(self->handler);
    Py_CLEAR(self->on_connect);
    Py_CLEAR(self->on_close);
    Py_CLEAR(self->on_eof);
    Py_CLEAR(self->on_drain);
    Py_CLEAR(self->logger);
    Py_CLEAR(self->conn_type);
    Py_CLEAR(self->file_type);
    return 0;
}

static void
server_dealloc(ServerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->srv != NULL) {
        /* A running server holds a reference to itself: not running here. */
        Py_BEGIN_ALLOW_THREADS
        server_destroy(self->srv);
        Py_END_ALLOW_THREADS
    }
    server_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
check_callable(PyObject *v, const char *name, int allow_none)
{
    if ((allow_none && v == Py_None) || PyCallable_Check(v))
        return 0;
    PyErr_Format(PyExc_TypeError, "%s must be callable%s, got %.100s", name,
                 allow_none ? " or None" : "", Py_TYPE(v)->tp_name);
    return -1;
}

/* Seconds (>= 0, checked) as milliseconds; a positive time is never 0. */
static int64_t
seconds_to_ms(double seconds)
{
    int64_t ms = (int64_t)(seconds * 1000.0 + 0.5);
    return seconds > 0.0 && ms == 0 ? 1 : ms;
}

static PyObject *
server_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"handler", "framing", "workers", "backend",
                             "on_connect", "on_close", "max_unsent",
                             "max_connections", "idle_timeout", "native_echo",
                             "fallback", "bufsize", "on_eof", "on_drain",
                             "half_close_timeout", "unsent_limit", NULL};
    PyObject *handler, *framing, *on_connect = Py_None, *on_close = Py_None;
    PyObject *on_eof = Py_None, *on_drain = Py_None;
    const char *backend = "uring";
    unsigned workers = 1, max_conns = 100000, bufsize = 16384;
    Py_ssize_t max_unsent = 4 << 20, unsent_limit = (Py_ssize_t)64 << 20;
    double idle = 0.0, half_close = 30.0;
    int native_echo = 0, fallback = 1;
    struct server_config cfg;

    memset(&cfg, 0, sizeof(cfg));
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$IsOOnIdppIOOdn", kwlist,
                                     &handler, &framing, &workers, &backend,
                                     &on_connect, &on_close, &max_unsent,
                                     &max_conns, &idle, &native_echo,
                                     &fallback, &bufsize, &on_eof, &on_drain,
                                     &half_close, &unsent_limit))
        return NULL;
    if (check_callable(handler, "handler", native_echo) < 0 ||
        check_callable(on_connect, "on_connect", 1) < 0 ||
        check_callable(on_close, "on_close", 1) < 0 ||
        check_callable(on_eof, "on_eof", 1) < 0 ||
        check_callable(on_drain, "on_drain", 1) < 0)
        return NULL;
    if (iocp_framing_from_py(framing, &cfg.framing) < 0)
        return NULL;
    if (workers < 1 || workers > 256)
        return PyErr_Format(PyExc_ValueError,
                            "workers must be between 1 and 256, got %u", workers);
    if (max_unsent < 1)
        return PyErr_Format(PyExc_ValueError,
                            "max_unsent must be positive, got %zd", max_unsent);
    if (max_conns < 1)
        return PyErr_Format(PyExc_ValueError, "max_connections must be positive");
    if (!(idle >= 0.0) || idle > 1e9)
        return PyErr_Format(PyExc_ValueError,
                            "idle_timeout must be >= 0 seconds, got %g", idle);
    if (!(half_close >= 0.0) || half_close > 1e9)
        return PyErr_Format(PyExc_ValueError,
                            "half_close_timeout must be >= 0 seconds, got %g",
                            half_close);
    if (unsent_limit < max_unsent)
        return PyErr_Format(PyExc_ValueError,
                            "unsent_limit (%zd) must be at least max_unsent "
                            "(%zd)", unsent_limit, max_unsent);
    if (bufsize < 512 || bufsize > (1u << 20))
        return PyErr_Format(PyExc_ValueError,
                            "bufsize must be between 512 and 1 MiB, got %u", bufsize);
    if (strcmp(backend, "uring") == 0)
        cfg.ops = &iocp_uring_ops;
    else if (strcmp(backend, "epoll") == 0)
        cfg.ops = &iocp_epoll_ops;
    else
        return PyErr_Format(PyExc_ValueError,
                            "backend must be 'uring' or 'epoll', got '%s'", backend);
    cfg.workers = workers;
    cfg.fallback = fallback;
    cfg.native_echo = native_echo;
    cfg.max_unsent = (size_t)max_unsent;
    cfg.max_connections = max_conns;
    cfg.idle_timeout_ms = seconds_to_ms(idle);
    cfg.half_close_ms = seconds_to_ms(half_close);
    cfg.unsent_limit = (size_t)unsent_limit;
    cfg.bufsize = bufsize;

    PyObject *module = PyType_GetModule(type);
    if (module == NULL)
        return NULL;
    iocp_state *st = iocp_get_state(module);
    ServerObject *self = (ServerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->handler = Py_NewRef(handler);
    self->on_connect = Py_NewRef(on_connect);
    self->on_close = Py_NewRef(on_close);
    self->on_eof = Py_NewRef(on_eof);
    self->on_drain = Py_NewRef(on_drain);
    self->logger = Py_NewRef(st->logger);
    self->conn_type = (PyTypeObject *)Py_NewRef(st->ConnectionType);
    self->file_type = (PyTypeObject *)Py_NewRef(st->FileType);
    self->interp = PyInterpreterState_Get();
    cfg.want_open = on_connect != Py_None;
    cfg.want_eof = on_eof != Py_None;
    cfg.want_drain = on_drain != Py_None;
    self->srv = server_create(&cfg, &py_dispatch, self);
    if (self->srv == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
server_add_listener_m(ServerObject *self, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError,
                        "listeners must be added before start()");
        return NULL;
    }
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int fl = fcntl(dup, F_GETFL);
    if (fl < 0 || fcntl(dup, F_SETFL, fl | O_NONBLOCK) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(dup);
        return NULL;
    }
    int rc = server_add_listener(self->srv, dup);
    if (rc < 0) {
        close(dup);
        if (rc == -ENOSPC)
            return PyErr_Format(PyExc_ValueError, "at most %d listeners",
                                MAX_LISTENERS);
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* (family, address tuple) -> struct sockaddr, as the socket module spells
 * addresses: (host, port) for AF_INET, (host, port[, flow, scope]) for
 * AF_INET6.  Hosts must be numeric (resolved already). */
static int
py_to_sockaddr(int family, PyObject *addr, struct sockaddr_storage *ss,
               socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "connect() takes AF_INET or AF_INET6 sockets");
        return -1;
    }
    const char *host;
    int port;
    unsigned int flow = 0, scope = 0;
    if (!PyTuple_Check(addr) ||
        !PyArg_ParseTuple(addr, "si|II", &host, &port, &flow, &scope)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError,
                        "address must be a (host, port) tuple with a numeric host");
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port must be 0-65535, got %d", port);
        return -1;
    }
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            goto bad_host;
        *len = sizeof(*a);
        return 0;
    }
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;   /* AF_INET6 */
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    a6->sin6_flowinfo = htonl(flow);
    a6->sin6_scope_id = scope;
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
        goto bad_host;
    *len = sizeof(*a6);
    return 0;
bad_host:
    PyErr_Format(PyExc_ValueError, "host must be a numeric address, got '%s'", host);
    return -1;
}

#define CONNECT_MAX_ADDRS 16   /* addresses tried per connect() */

static PyObject *
server_connect_m(ServerObject *self, PyObject *args)
{
    PyObject *addrs, *cb;
    double timeout;
    struct sockaddr_storage ss[CONNECT_MAX_ADDRS];
    socklen_t lens[CONNECT_MAX_ADDRS];
    if (!PyArg_ParseTuple(args, "OOd:connect", &addrs, &cb, &timeout))
        return NULL;
    if (check_callable(cb, "callback", 1) < 0)
        return NULL;
    if (!(timeout > 0.0) || timeout > 1e9)
        return PyErr_Format(PyExc_ValueError,
                            "timeout must be > 0 seconds, got %g", timeout);
    if (!PyList_Check(addrs) || PyList_GET_SIZE(addrs) == 0)
        return PyErr_Format(PyExc_TypeError, "addresses must be a non-empty "
                            "list of (family, address) pairs");
    Py_ssize_t n = PyList_GET_SIZE(addrs);
    if (n > CONNECT_MAX_ADDRS)
        n = CONNECT_MAX_ADDRS;   /* the first ones: the resolver's order */
    for (Py_ssize_t i = 0; i < n; i++) {
        int family;
        PyObject *addr, *item = PyList_GET_ITEM(addrs, i);
        if (!PyArg_ParseTuple(item, "iO;addresses must be (family, address) "
                              "pairs", &family, &addr) ||
            py_to_sockaddr(family, addr, &ss[i], &lens[i]) < 0)
            return NULL;
    }
    ConnObject *o = (ConnObject *)self->conn_type->tp_alloc(self->conn_type, 0);
    if (o == NULL)
        return NULL;
    if (cb != Py_None)
        o->connect_cb = Py_NewRef(cb);
    struct conn *c;
    int rc = server_connect(self->srv, ss, lens, (unsigned)n,
                            seconds_to_ms(timeout), o, &c);
    if (rc < 0) {
        Py_DECREF(o);
        if (rc == -EPIPE) {
            PyErr_SetString(PyExc_RuntimeError,
                            "the server is not running; call start() first");
            return NULL;
        }
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    o->c = c;
    o->id = conn_id(c);
    /* The core's link (conn_py) holds this reference until it closes. */
    Py_INCREF(o);
    return (PyObject *)o;
}

static PyObject *
server_adopt_file_m(ServerObject *self, PyObject *args)
{
    int fd;
    unsigned long long append_off;
    if (!PyArg_ParseTuple(args, "iK:adopt_file", &fd, &append_off))
        return NULL;
    if (fd < 0)
        return PyErr_Format(PyExc_ValueError, "fd must be >= 0, got %d", fd);
    return iocp_file_new(self->file_type, (PyObject *)self, self->srv,
                         self->logger, fd, append_off);
}

static PyObject *
server_start_m(ServerObject *self, PyObject *Py_UNUSED(ignored))
{
    int rc;
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError, self->stopping
                        ? "server is stopping" : "server already started");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = server_start(self->srv);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->started = 1;
    Py_INCREF(self);   /* workers use the object until stop() */
    Py_RETURN_NONE;
}

static PyObject *
server_stop_m(ServerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->started) {
        server_stop(self->srv);   /* closes listeners not yet served */
        Py_RETURN_NONE;
    }
    if (self->stopping)
        Py_RETURN_NONE;   /* another thread is stopping it right now */
    if (server_on_worker(self->srv)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "stop() cannot be called from a handler (it joins "
                        "the worker running it); call it from another "
                        "thread");
        return NULL;
    }
    self->stopping = 1;
    Py_BEGIN_ALLOW_THREADS
    server_stop(self->srv);
    Py_END_ALLOW_THREADS
    self->stopping = 0;
    self->started = 0;
    Py_DECREF(self);
    Py_RETURN_NONE;
}

static PyObject *
server_stats_m(ServerObject *self, PyObject *Py_UNUSED(ignored))
{
    struct server_stats st;
    server_get_stats(self->srv, &st);
    PyObject *errors = PyDict_New();
    if (errors == NULL)
        return NULL;
    for (int i = CLOSE_RESET; i < CLOSE_REASON_COUNT; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st.errors[i]);
        if (v == NULL || PyDict_SetItemString(errors, close_reason_name[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(errors);
            return NULL;
        }
        Py_DECREF(v);
    }
    /* Per worker: its live connections and those it was ever given (the
     * spread of the load). */
    PyObject *per = PyList_New(0);
    if (per == NULL) {
        Py_DECREF(errors);
        return NULL;
    }
    unsigned live;
    uint64_t opened;
    for (unsigned i = 0; server_worker_load(self->srv, i, &live, &opened) == 0;
         i++) {
        PyObject *d = Py_BuildValue("{sIsK}", "connections", live, "opened",
                                    (unsigned long long)opened);
        if (d == NULL || PyList_Append(per, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(per);
            Py_DECREF(errors);
            return NULL;
        }
        Py_DECREF(d);
    }
#define U(x) ((unsigned long long)(x))
    return Py_BuildValue(
        "{sIsKsKsKsKsKsKsKsKsKsNsN}",
        "connections", st.connections,
        "accepted", U(st.accepted), "closed", U(st.closed),
        "messages_in", U(st.msgs_in), "messages_out", U(st.msgs_out),
        "bytes_in", U(st.bytes_in), "bytes_out", U(st.bytes_out),
        "eof", U(st.errors[CLOSE_EOF]),
        "accept_errors", U(st.accept_errors), "refused", U(st.refused),
        "errors", errors, "workers", per);
#undef U
}

static PyObject *
server_get_backend(ServerObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(server_backend(self->srv));
}

static PyObject *
server_get_fallback_errno(ServerObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(server_fell_back(self->srv));
}

static PyObject *
server_get_running(ServerObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->started);
}

static PyMethodDef server_methods[] = {
    {"add_listener", (PyCFunction)server_add_listener_m, METH_O,
     "add_listener(sock) -> None\n--\n\n"
     "Serve a listening socket (its fd is duplicated).  Before start()."},
    {"connect", (PyCFunction)server_connect_m, METH_VARARGS,
     "connect(addresses, callback, timeout) -> Connection\n--\n\n"
     "Connect to the first of addresses ((family, numeric address) pairs,\n"
     "tried in turn) that answers within timeout seconds, on a worker;\n"
     "callback(conn, error) runs when it completes (error is None or an\n"
     "OSError: the last attempt's, TimeoutError once the time is up)."},
    {"adopt_file", (PyCFunction)server_adopt_file_m, METH_VARARGS,
     "adopt_file(fd, append_offset) -> File\n--\n\n"
     "A File for a descriptor, taken over (closed by File.close())."},
    {"start", (PyCFunction)server_start_m, METH_NOARGS,
     "start() -> None\n--\n\nStart the worker threads."},
    {"stop", (PyCFunction)server_stop_m, METH_NOARGS,
     "stop() -> None\n--\n\n"
     "Close every connection and join every worker.  Idempotent."},
    {"stats", (PyCFunction)server_stats_m, METH_NOARGS,
     "stats() -> dict\n--\n\nCounters: connections, messages, bytes, errors."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef server_getset[] = {
    {"backend", (getter)server_get_backend, NULL, "The backend in use.", NULL},
    {"fallback_errno", (getter)server_get_fallback_errno, NULL,
     "The errno that made io_uring fall back to epoll, or 0.", NULL},
    {"running", (getter)server_get_running, NULL, "True between start and stop.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot server_slots[] = {
    {Py_tp_doc, "Native server engine; use iocport.Server."},
    {Py_tp_new, server_new},
    {Py_tp_dealloc, server_dealloc},
    {Py_tp_traverse, server_traverse},
    {Py_tp_clear, server_clear},
    {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset},
    {0, NULL},
};

static PyType_Spec server_spec = {
    .name = "iocport._iocport.Server",
    .basicsize = sizeof(ServerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = server_slots,
};

int
iocp_server_add_types(PyObject *module, iocp_state *st)
{
    PyObject *reasons = PyTuple_New(CLOSE_REASON_COUNT);
    if (reasons == NULL)
        return -1;
    for (int i = 0; i < CLOSE_REASON_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(close_reason_name[i]);
        if (name == NULL) {
            Py_DECREF(reasons);
            return -1;
        }
        PyTuple_SET_ITEM(reasons, i, name);
    }
    int rc = PyModule_AddObjectRef(module, "CLOSE_REASONS", reasons);
    Py_DECREF(reasons);
    if (rc < 0)
        return -1;
    st->ConnectionType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &conn_spec, NULL);
    if (st->ConnectionType == NULL ||
        PyModule_AddType(module, st->ConnectionType) < 0)
        return -1;
    st->ServerType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &server_spec, NULL);
    if (st->ServerType == NULL || PyModule_AddType(module, st->ServerType) < 0)
        return -1;
    return 0;
}
