/* connection.c - the Connection type: what handlers are given, and what
 * connect() returns.  Its methods call the core (conn_send, conn_close...)
 * from any thread, under the GIL; its `c` is cleared under the GIL when the
 * connection closes (dispatch.c), after which sends return False. */
#include "py/order.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/un.h>

static int
conn_traverse(ConnObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->state);
    Py_VISIT(self->peer);
    Py_VISIT(self->connect_cb);
    Py_VISIT(self->tls);
    Py_VISIT(self->aio);
    Py_VISIT(self->waiting);
    return 0;
}

static int
conn_clear(ConnObject *self)
{
    Py_CLEAR(self->state);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->connect_cb);
    Py_CLEAR(self->tls);
    Py_CLEAR(self->aio);
    Py_CLEAR(self->waiting);
    return 0;
}

static void
conn_dealloc(ConnObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    conn_clear(self);
    order_free(self);
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
    if (iocp_range_args(offset_o, count_o, &offset, &count) < 0)
        return NULL;
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

IOCP_AWAITABLE_METHOD(conn_send_file_async_m, "send_file")
IOCP_AWAITABLE_METHOD(conn_command_async_m, "command")

static PyObject *
conn_drain_m(ConnObject *self, PyObject *Py_UNUSED(ignored))
{
    return iocp_awaitable("drain", (PyObject *)self, NULL, NULL);
}

/* `await conn`: the connection once connected (see connect()). */
static PyObject *
conn_await(ConnObject *self)
{
    return iocp_awaitable("connection_await", (PyObject *)self, NULL, NULL);
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

/* iocport's asyncio layer: a coroutine handler raised (reason 'handler'). */
static PyObject *
conn_abort_handler_m(ConnObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->c != NULL)
        conn_end_input(self->c, CLOSE_HANDLER);
    Py_RETURN_NONE;
}

/* iocport's asyncio layer: a held message is handled (hold_messages). */
static PyObject *
conn_handled_m(ConnObject *self, PyObject *msg)
{
    if (!PyBytes_Check(msg))
        return PyErr_Format(PyExc_TypeError, "_handled() takes the message "
                            "(bytes), got %s", Py_TYPE(msg)->tp_name);
    if (self->c != NULL)
        conn_held_done(self->c, (size_t)PyBytes_GET_SIZE(msg));
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
    size_t off = offsetof(struct sockaddr_un, sun_path);
    if (len > off && sa->sa_family == AF_UNIX) {
        /* A path (up to its NUL, if the kernel kept one) or an abstract
         * name: a leading NUL, then all the bytes, as connect_unix() takes
         * it.  An unbound peer (most clients) has neither: None. */
        const char *p = ((const struct sockaddr_un *)sa)->sun_path;
        size_t n = len - off;
        if (p[0] != '\0')
            n = strnlen(p, n);
        return PyUnicode_DecodeFSDefaultAndSize(p, (Py_ssize_t)n);
    }
    Py_RETURN_NONE;
}

/* Fill self->peer from the open connection's address; 0 or -1. */
int
iocp_conn_peer_to_py(ConnObject *self)
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
        if (iocp_conn_peer_to_py(self) < 0)
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
conn_get_aio(ConnObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->aio ? self->aio : Py_None);
}

static int
conn_set_aio(ConnObject *self, PyObject *v, void *Py_UNUSED(closure))
{
    Py_XSETREF(self->aio, v == Py_None ? NULL : Py_XNewRef(v));
    return 0;
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

int
iocp_conn_tls_to_py(ConnObject *self)
{
    const struct tls_info *i = self->c ? conn_tls_info(self->c) : NULL;
    if (i == NULL)
        return 0;
    self->tls = iocp_tls_info(i);
    return self->tls ? 0 : -1;
}

/* Item `closure` of the TLS session tuple (version, cipher, ALPN,
 * certificate), or None: not TLS, or the handshake is not over. */
static PyObject *
conn_get_tls_item(ConnObject *self, void *closure)
{
    if (self->tls == NULL && iocp_conn_tls_to_py(self) < 0)
        return NULL;
    return Py_NewRef(self->tls ? PyTuple_GET_ITEM(self->tls, (intptr_t)closure)
                               : Py_None);
}

static PyObject *
conn_repr(ConnObject *self)
{
    return PyUnicode_FromFormat("<iocport.Connection id=%llu %s>",
                                (unsigned long long)self->id,
                                self->c ? "open" : "closed");
}

static PyObject *
conn_respond_m(ConnObject *self, PyObject *args, PyObject *kwds)
{
    return iocp_conn_respond(self, args, kwds);
}

static PyObject *
conn_reply_m(ConnObject *self, PyObject *value)
{
    return iocp_conn_reply(self, value);
}

static PyObject *
conn_defer_m(ConnObject *self, PyObject *Py_UNUSED(ignored))
{
    return iocp_conn_defer(self);
}

static PyObject *
conn_command_m(ConnObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    return iocp_conn_command(self, args, nargs, kwnames);
}

static PyMethodDef conn_methods[] = {
    {"command_async", (PyCFunction)(void (*)(void))conn_command_async_m,
     METH_VARARGS | METH_KEYWORDS,
     "command_async($self, /, *args)\n--\n\n"
     "RESP(client=True) framing: command() as an awaitable, on a running\n"
     "asyncio loop: its reply, decoded; an error reply is raised\n"
     "(iocport.resp.Error), as is a close before the reply (ConnectionError)."},
    {"command", (PyCFunction)(void (*)(void))conn_command_m,
     METH_FASTCALL | METH_KEYWORDS,
     "command($self, /, *args, callback=None)\n--\n\n"
     "RESP(client=True) framing: send a command (its arguments as bulk\n"
     "strings: bytes, str, int or float) and return at once; its reply,\n"
     "decoded (an error reply as iocport.resp.Error), reaches\n"
     "callback(conn, reply) on a worker, in the order the commands were\n"
     "sent (or the handler, without a callback).  Commands pipeline: send\n"
     "many before the first reply.  If the connection closes first, the\n"
     "callback gets a ConnectionError as its reply.  True, or False if the\n"
     "connection is closed."},
    {"reply", (PyCFunction)conn_reply_m, METH_O,
     "reply($self, value, /)\n--\n\n"
     "RESP framing: answer the oldest command of this connection not yet\n"
     "answered nor deferred with `value`, encoded natively: bytes and str\n"
     "as bulk strings, int, None (null), float, bool, list/tuple (array),\n"
     "dict (map; a flat array on RESP2), set, iocport.resp.SimpleString\n"
     "(+OK) and iocport.resp.Error (-ERR ...).  Replies leave in command\n"
     "order.  True, or False if the connection is closed."},
    {"defer", (PyCFunction)conn_defer_m, METH_NOARGS,
     "defer($self, /)\n--\n\n"
     "RESP framing: take the reply of the oldest command not yet answered\n"
     "nor deferred for later: returns a Reply whose reply(value) gives it,\n"
     "from any thread; the replies after it wait for it."},
    {"respond", (PyCFunction)(void (*)(void))conn_respond_m,
     METH_VARARGS | METH_KEYWORDS,
     "respond($self, /, status, headers=(), body=b'')\n--\n\n"
     "HTTP framing: answer the oldest request of this connection not yet\n"
     "answered (see Request.respond()).  True, or False if the connection\n"
     "is closed."},
    {"send", (PyCFunction)conn_send_m, METH_O,
     "send($self, data, /)\n--\n\n"
     "Queue one message, framed with the server's framing, and return at once.\n"
     "Safe from any thread.  Returns False (and sends nothing) once the\n"
     "connection is closing or closed, or when the message would take its\n"
     "unsent bytes past unsent_limit: the connection is then closed\n"
     "(reason 'overflow')."},
    {"send_raw", (PyCFunction)conn_send_raw, METH_O,
     "send_raw($self, data, /)\n--\n\n"
     "Queue bytes that are already framed; returns False as send() does."},
    {"send_file", (PyCFunction)(void (*)(void))conn_send_file_m,
     METH_VARARGS | METH_KEYWORDS,
     "send_file($self, /, file, offset=0, count=None, callback=None)\n--\n\n"
     "Stream count bytes of an iocport.File from offset (None: to the end)\n"
     "natively, with bounded memory.  Messages sent meanwhile follow the\n"
     "file.  callback(nbytes, error) runs when all of it is with the kernel\n"
     "or when it stopped (error: an OSError)."},
    {"send_file_async", (PyCFunction)(void (*)(void))conn_send_file_async_m,
     METH_VARARGS | METH_KEYWORDS,
     "send_file_async($self, /, file, offset=0, count=None)\n--\n\n"
     "Coroutine: send_file(), awaited: returns the bytes handed to the\n"
     "kernel once all of them are, or raises the OSError that stopped it.\n"
     "Cancelling the await aborts the connection (a file cut short would\n"
     "leave the peer inside a message), which stops the transfer."},
    {"drain", (PyCFunction)conn_drain_m, METH_NOARGS,
     "drain($self, /)\n--\n\n"
     "Coroutine: wait until the connection is writable again.  Returns at\n"
     "once while the bytes queued are at most max_unsent; otherwise once\n"
     "they have drained below half of it (as on_drain).  Raises\n"
     "ConnectionError if the connection is or gets closed."},
    {"close", (PyCFunction)conn_close_m, METH_NOARGS,
     "close($self, /)\n--\n\n"
     "Stop receiving, send what is queued, then close.  Idempotent."},
    {"abort", (PyCFunction)conn_abort_m, METH_NOARGS,
     "abort($self, /)\n--\n\nClose at once, dropping unsent data."},
    {"_abort_handler", (PyCFunction)conn_abort_handler_m, METH_NOARGS,
     "_abort_handler($self, /)\n--\n\n"
     "End the input as after a handler that raised (close_reason 'handler'):\n"
     "the replies queued go out, then it closes; for iocport's asyncio\n"
     "layer, whose handlers run on the loop's thread."},
    {"_handled", (PyCFunction)conn_handled_m, METH_O,
     "_handled($self, msg, /)\n--\n\n"
     "The message `msg` is handled: it no longer counts toward this\n"
     "connection's backpressure (a Server made with hold_messages=True;\n"
     "for iocport's asyncio layer)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
conn_get_resp_protocol(ConnObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->resp_proto == 3 ? 3 : 2);
}

static int
conn_set_resp_protocol(ConnObject *self, PyObject *v, void *Py_UNUSED(closure))
{
    long p = v != NULL && PyLong_Check(v) && !PyBool_Check(v) ? PyLong_AsLong(v) : -1;
    if (p != 2 && p != 3) {
        if (!PyErr_Occurred())
            PyErr_SetString(v != NULL && PyLong_Check(v) ? PyExc_ValueError
                                                         : PyExc_TypeError,
                            "resp_protocol must be 2 or 3");
        return -1;
    }
    self->resp_proto = (uint8_t)p;
    return 0;
}

static PyGetSetDef conn_getset[] = {
    {"resp_protocol", (getter)conn_get_resp_protocol, (setter)conn_set_resp_protocol,
     "RESP framing: the protocol replies are encoded in, 2 (the default) or\n"
     "3 (after a client's HELLO 3).", NULL},
    {"id", (getter)conn_get_id, NULL, "Unique id of this connection.", NULL},
    {"peer", (getter)conn_get_peer, NULL,
     "The peer's address: (host, port) for TCP, a path for a Unix socket\n"
     "(None if the peer's is unbound).", NULL},
    {"closed", (getter)conn_get_closed, NULL, "True once the connection is closed.", NULL},
    {"close_reason", (getter)conn_get_reason, NULL,
     "Why it closed (one of iocport.CLOSE_REASONS), or None while open.",
     NULL},
    {"unsent", (getter)conn_get_unsent, NULL, "Bytes queued but not yet sent.", NULL},
    {"writable", (getter)conn_get_writable, NULL,
     "True while the bytes queued are at most max_unsent (a server that\n"
     "pushes should wait for on_drain otherwise); False once closed.", NULL},
    {"tls_version", (getter)conn_get_tls_item, NULL,
     "The TLS version ('TLSv1.3', 'TLSv1.2'), or None: not TLS, or its\n"
     "handshake is not over (it is from on_connect on).", (void *)0},
    {"tls_cipher", (getter)conn_get_tls_item, NULL,
     "The TLS cipher as ssl.SSLSocket.cipher() gives it: (name, protocol,\n"
     "secret bits), or None.", (void *)1},
    {"alpn_protocol", (getter)conn_get_tls_item, NULL,
     "The protocol ALPN chose (both sides' contexts set_alpn_protocols()),\n"
     "or None.", (void *)2},
    {"peer_certificate", (getter)conn_get_tls_item, NULL,
     "The peer's TLS certificate, DER-encoded (ssl.DER_cert_to_PEM_cert()\n"
     "turns it into PEM), or None: not TLS, or the peer sent none.", (void *)3},
    {"_aio", (getter)conn_get_aio, (setter)conn_set_aio,
     "iocport's asyncio layer's state for this connection, or None.", NULL},
    {"state", (getter)conn_get_state, (setter)conn_set_state,
     "A slot for the user's own state (None at first).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot conn_slots[] = {
    {Py_tp_doc,
     "A connection: passed to handlers and callbacks, or returned by\n"
     "Server.connect(); cannot be created directly.\n"
     "\n"
     "send() frames and queues a message; it never blocks and is safe from\n"
     "any thread.  close() stops handling input, sends what is queued, then\n"
     "sends FIN and waits (up to 2 s) for the peer's, so no reply is lost to\n"
     "a reset; abort() closes at once.  A bytes message of 32 KiB or more is\n"
     "sent from the object itself, not copied; bytearray and memoryview are\n"
     "always copied, so changing them after send() is safe.\n"
     "\n"
     "A Connection is awaitable: ``await server.connect(host, port)``\n"
     "returns it once connected, or raises the OSError that made the\n"
     "connect fail (an accepted connection returns at once)."},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_repr, conn_repr},
    {Py_tp_methods, conn_methods},
    {Py_tp_getset, conn_getset},
    {Py_am_await, conn_await},
    {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "iocport.Connection",
    .basicsize = sizeof(ConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = conn_slots,
};

int
iocp_connection_add_type(PyObject *module, iocp_state *st)
{
    st->ConnectionType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &conn_spec, NULL);
    if (st->ConnectionType == NULL ||
        PyModule_AddType(module, st->ConnectionType) < 0)
        return -1;
    return 0;
}
