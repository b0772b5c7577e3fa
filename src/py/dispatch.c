/* dispatch.c - the dispatch layer: the hooks the core's workers call, and
 * the only code that runs Python on a worker thread.
 *
 * Each worker gets one persistent thread state for its life; a turn's
 * whole messages are delivered under one GIL hold (PyEval_RestoreThread ..
 * PyEval_SaveThread), in arrival order, so the order within a connection
 * is kept.  Nothing here runs once the interpreter is finalizing:
 * iocport/server.py's atexit hook stops every running server before
 * finalization begins, and every hook checks Py_IsFinalizing() as well. */
#include "py/order.h"

#include <errno.h>
#include <string.h>

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

/* A callback raised: log it with its traceback and end that connection's
 * input (the replies it has queued still go out, then it closes). */
static void
callback_failed(ServerObject *so, struct conn *c, const char *what)
{
    iocp_log_exception(so->logger, PyUnicode_FromFormat(
        "%s raised; closing connection %llu", what,
        (unsigned long long)conn_id(c)));
    conn_end_input(c, CLOSE_HANDLER);
}

/* Outgoing connections: report the connect's outcome once (c: the
 * failed connection, or NULL for success). */
static void
connect_done(ServerObject *so, ConnObject *o, struct conn *c)
{
    PyObject *cb = o->connect_cb;
    if (cb == NULL)
        return;
    o->connect_cb = NULL;
    PyObject *exc = Py_None, *r = NULL;
    if (c != NULL) {
        long verify = 0;
        const char *why = conn_tls_error(c, &verify);
        int err = conn_err(c);
        exc = why != NULL
            ? iocp_tls_error(PyType_GetModuleState(so->conn_type), why, verify)
            : iocp_oserror(err ? err : ECONNABORTED);
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

/* Tell the asyncio layer's state of a connection (o->aio) of a drain or
 * the close: it wakes what awaits them, on their loops. */
static void
aio_notice(ServerObject *so, ConnObject *o, const char *what)
{
    PyObject *r = PyObject_CallMethod(o->aio, what, NULL);
    if (r == NULL)
        iocp_log_exception(so->logger, PyUnicode_FromFormat(
            "waking the awaits of connection %llu failed",
            (unsigned long long)o->id));
    Py_XDECREF(r);
}

static void
deliver_close(ServerObject *so, struct conn *c)
{
    ConnObject *o = conn_py(c);
    enum close_reason why = conn_reason(c);
    int err = conn_err(c);
    const char *level = close_reason_level[why];
    long verify;
    const char *detail = conn_tls_error(c, &verify);
    if (detail == NULL && err != 0)
        detail = strerror(err);
    if (level != NULL) {
        PyObject *msg = PyUnicode_FromFormat(
            "connection %llu closed: %s%s%s", (unsigned long long)conn_id(c),
            close_reason_name[why], detail ? ": " : "", detail ? detail : "");
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
    if (o->peer == NULL && iocp_conn_peer_to_py(o) < 0)
        PyErr_Clear();   /* conn.peer outlives the connection, or is None */
    if (o->tls == NULL && iocp_conn_tls_to_py(o) < 0)
        PyErr_Clear();   /* so does its TLS session */
    /* Never connected: the callback hears why, then on_close runs as for
     * every connection (reason 'connect', or 'tls'). */
    o->c = NULL;
    if (o->connect_cb != NULL)
        connect_done(so, o, c);
    if (o->aio != NULL)
        aio_notice(so, o, "closed");
    if (so->resp_client)
        iocp_resp_closed(so, o);
    if (so->on_close != Py_None) {
        PyObject *r = PyObject_CallOneArg(so->on_close, (PyObject *)o);
        if (r == NULL)
            iocp_log_exception(so->logger, PyUnicode_FromFormat(
                "on_close raised (connection %llu)", (unsigned long long)o->id));
        Py_XDECREF(r);
    }
    order_drop(o, c);
    Py_DECREF(o);
    conn_detach(c);
}

/* A RESP protocol error: Redis's reply in its turn, then the close;
 * logged once per kind for the server's life (each is counted:
 * stats()["errors"]["resp"]). */
static void
resp_refused(ServerObject *so, ConnObject *o, struct conn *c,
             const struct resp_msg *m)
{
    uint64_t bit = (uint64_t)1 << (-m->error & 63);
    if (!(so->resp_logged & bit)) {
        so->resp_logged |= bit;
        char text[RESP_ERROR_MAX];
        resp_error_text(m->error, m->bad, text, sizeof text);
        PyObject *msg = PyUnicode_FromFormat(
            "RESP protocol error on connection %llu: %s (logged once per "
            "kind; counted in stats()['errors']['resp'])",
            (unsigned long long)conn_id(c), text);
        if (msg != NULL) {
            iocp_log(so->logger, "warning", msg, NULL);
            Py_DECREF(msg);
        } else {
            PyErr_Clear();
        }
    }
    iocp_resp_refused(o, c, m);
}

/* A request the core refused: answered in its turn; logged once per kind
 * for the server's life (each is counted: stats()["errors"]["http"]). */
static void
http_refused(ServerObject *so, ConnObject *o, struct conn *c,
             const struct http_msg *m)
{
    uint64_t bit = (uint64_t)1 << (-m->error & 63);
    if (!(so->http_logged & bit)) {
        so->http_logged |= bit;
        PyObject *msg = PyUnicode_FromFormat(
            "HTTP request refused on connection %llu: %d %s (logged once "
            "per kind; counted in stats()['errors']['http'])",
            (unsigned long long)conn_id(c), m->status, http_error_reason(m->error));
        if (msg != NULL) {
            iocp_log(so->logger, "warning", msg, NULL);
            Py_DECREF(msg);
        } else {
            PyErr_Clear();
        }
    }
    iocp_http_refused(so->st, o, c, m);
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
        if (e->kind == ENTRY_DRAIN && so->on_drain == Py_None) {
            ConnObject *po = conn_py(c);
            if (po == NULL || po->aio == NULL)
                continue;   /* nobody listens (want_drain is always on) */
        }
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
                connect_done(so, o, NULL);
        } else if (e->kind == ENTRY_EOF) {
            int keep = 0;
            if (notify(so, c, o, so->on_eof, "on_eof", &keep) && keep)
                conn_keep_open(c);
        } else if (e->kind == ENTRY_DRAIN) {
            if (o->aio != NULL)
                aio_notice(so, o, "drained");
            if (so->on_drain != Py_None)
                notify(so, c, o, so->on_drain, "on_drain", NULL);
        } else {
            /* One sent reference given back per message, before the
             * message and its reply are allocated: the heap reuses the
             * block instead of growing, then trimming, around a batch of
             * frees. */
            Py_XDECREF((PyObject *)worker_pop_release(w));
            PyObject *msg;
            uint64_t seq = 0;
            if (so->resp_client) {
                iocp_resp_reply_in(so, o, e, worker_resp_msg(w, e));
                worker_set_current(w, NULL);
                continue;
            }
            if (so->resp) {
                const struct resp_msg *m = worker_resp_msg(w, e);
                if (m->error != 0) {
                    resp_refused(so, o, c, m);
                    worker_set_current(w, NULL);
                    continue;
                }
                msg = iocp_resp_message(o, c, e, m, worker_resp_args(w, m), &seq);
            } else if (so->http) {
                const struct http_msg *m = worker_http_msg(w, e);
                if (m->status != 0) {
                    http_refused(so, o, c, m);
                    worker_set_current(w, NULL);
                    continue;
                }
                msg = iocp_http_request(so->st, o, c, e, m, worker_http_fields(w, m));
            } else {
                msg = PyBytes_FromStringAndSize((const char *)e->ptr,
                                                (Py_ssize_t)e->len);
            }
            if (msg == NULL) {
                callback_failed(so, c, "creating the message");
            } else {
                PyObject *args[2] = {(PyObject *)o, msg};
                PyObject *r = PyObject_Vectorcall(so->handler, args, 2, NULL);
                if (r == NULL) {
                    callback_failed(so, c, "handler");
                    if (so->http)
                        iocp_http_failed(so->st, msg);
                }
                if (so->resp && !so->hold &&
                    iocp_resp_after(o, seq, r == NULL, so->resp_noreply_logged
                                                       ? NULL : so->logger))
                    so->resp_noreply_logged = 1;
                Py_DECREF(msg);
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

const struct dispatch_ops iocp_dispatch_ops = {
    .thread_start = d_thread_start,
    .thread_exit = d_thread_exit,
    .dispatch = d_dispatch,
    .release = d_release,
};
