/* reply.c - RESP for handlers: each command owes one answer, and the
 * answers leave in command order (order.h).  conn.reply(value) answers the
 * oldest command not yet answered nor deferred; conn.defer() takes that
 * command's answer for later and returns a Reply, whose reply(value) gives
 * it from any thread (after a disk write, say).  Values are encoded
 * natively (resp.c's encoder), RESP2 or RESP3 as conn.resp_protocol says.
 * A protocol error is answered with Redis's text in its turn, then the
 * connection closes; a command left with no answer (its handler returned
 * without one, or raised, or its Reply was dropped) gets an error reply,
 * so that a client never waits for ever.
 *
 * The client side (RESP(client=True)): conn.command() sends a command and
 * queues its callback; each whole reply the core frames is decoded and
 * given to the oldest callback waiting (a push, or a reply no command
 * waits for, goes to the handler).  Everything here runs under the GIL. */
#include "py/order.h"

#include <errno.h>
#include <string.h>

enum {
    SLOT_DEFERRED = ORDER_PROTO,     /* conn.defer() took it */
};

/* Replies up to this size are encoded on the stack. */
#define STACK_REPLY 512

static const char NO_REPLY[] = "-ERR the server's handler gave no reply\r\n";
static const char FAILED[] = "-ERR the server's handler failed\r\n";

/* Answer command `seq` of o with `n` bytes at p (then close, if `close`).
 * 0, or -1 with an exception. */
static int
answer_bytes(ConnObject *o, uint64_t seq, const char *p, size_t n, int close)
{
    struct answer_queue *q = o->aq;
    struct slot *s = order_owed(o, seq);
    if (s == NULL || o->c == NULL)
        return 0;
    if (seq == q->first && !q->xfer) {
        int rc = order_sent(conn_send(o->c, p, n, 0, NULL));
        if (close)
            conn_close(o->c, 1);
        order_pop(o);
        return rc < 0 ? -1 : order_flush(o);
    }
    if ((s->resp = PyBytes_FromStringAndSize(p, (Py_ssize_t)n)) == NULL)
        return -1;
    s->flags |= ORDER_DONE | (close ? ORDER_THEN_CLOSE : 0);
    return 0;
}

/* Answer command `seq` of o with `value`, encoded.  True, or False if the
 * connection is closed. */
static PyObject *
answer(iocp_state *st, ConnObject *o, uint64_t seq, PyObject *value)
{
    if (o->c == NULL)
        Py_RETURN_FALSE;
    int proto = o->resp_proto == 3 ? 3 : 2;
    uint8_t *none = NULL;
    Py_ssize_t size = iocp_resp_encode_into(st, value, proto, &none);
    if (size < 0)
        return NULL;
    uint8_t stack[STACK_REPLY];
    uint8_t *buf = (size_t)size <= sizeof stack ? stack : PyMem_Malloc((size_t)size);
    if (buf == NULL)
        return PyErr_NoMemory();
    uint8_t *p = buf;
    int rc = -1;
    if (iocp_resp_encode_into(st, value, proto, &p) != size || p != buf + size) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "value changed while being encoded");
    } else {
        rc = answer_bytes(o, seq, (const char *)buf, (size_t)size, 0);
    }
    if (buf != stack)
        PyMem_Free(buf);
    if (rc < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* The oldest command of o neither answered nor deferred, or -1. */
static int64_t
oldest_open(ConnObject *o)
{
    struct answer_queue *q = o->aq;
    for (uint32_t i = 0; q != NULL && i < q->n; i++)
        if (!(slot_at(q, i)->flags & (ORDER_DONE | SLOT_DEFERRED)))
            return (int64_t)(q->first + i);
    return -1;
}

PyObject *
iocp_resp_message(ConnObject *o, struct conn *c, const struct entry *e,
                  const struct resp_msg *m, const struct resp_arg *args,
                  uint64_t *seq)
{
    PyObject *list = iocp_resp_command(e->ptr, args, m->nargs);
    if (list == NULL)
        return NULL;
    int64_t s = order_push(o, c, 0);
    if (s < 0) {
        Py_DECREF(list);
        return PyErr_NoMemory();
    }
    *seq = (uint64_t)s;
    return list;
}

int
iocp_resp_after(ConnObject *o, uint64_t seq, int failed, PyObject *logger)
{
    struct slot *s = order_owed(o, seq);
    if (s == NULL || (s->flags & (ORDER_DONE | SLOT_DEFERRED)))
        return 0;
    if (!failed && logger != NULL) {
        PyObject *msg = PyUnicode_FromFormat(
            "a RESP command on connection %llu got no reply from its handler "
            "(reply with conn.reply(), or take conn.defer() to reply later); "
            "answered with an error (logged once)", (unsigned long long)o->id);
        if (msg != NULL) {
            iocp_log(logger, "warning", msg, NULL);
            Py_DECREF(msg);
        }
        PyErr_Clear();
    }
    if (failed)
        answer_bytes(o, seq, FAILED, sizeof FAILED - 1, 1);
    else
        answer_bytes(o, seq, NO_REPLY, sizeof NO_REPLY - 1, 0);
    PyErr_Clear();
    return !failed;
}

void
iocp_resp_refused(ConnObject *o, struct conn *c, const struct resp_msg *m)
{
    char text[RESP_ERROR_MAX + 3];
    text[0] = '-';
    size_t n = resp_error_text(m->error, m->bad, text + 1, RESP_ERROR_MAX) + 1;
    text[n++] = '\r';
    text[n++] = '\n';
    int64_t seq = order_push(o, c, 0);
    if (seq < 0) {
        conn_close(c, 0);   /* no memory to keep the order: reset */
        return;
    }
    if (answer_bytes(o, (uint64_t)seq, text, n, 1) < 0)
        PyErr_Clear();
}

PyObject *
iocp_conn_reply(ConnObject *o, PyObject *value)
{
    int64_t seq = oldest_open(o);
    if (seq < 0) {
        if (o->c == NULL)
            Py_RETURN_FALSE;
        PyErr_SetString(PyExc_RuntimeError, "no command on this connection "
                        "waits for a reply");
        return NULL;
    }
    PyObject *module = PyType_GetModule(Py_TYPE(o));
    if (module == NULL)
        return NULL;
    return answer(iocp_get_state(module), o, (uint64_t)seq, value);
}

/* ---- the client side ---------------------------------------------------------- */

/* An argument of a command as bytes to send: bytes-like, str (UTF-8), int
 * or float (their text, as redis-py sends them).  A new reference, or
 * NULL with TypeError. */
static PyObject *
command_arg(PyObject *v)
{
    if (PyBytes_Check(v))
        return Py_NewRef(v);
    if (PyUnicode_Check(v))
        return PyUnicode_AsUTF8String(v);
    if (PyBool_Check(v))
        goto bad;
    if (PyLong_Check(v) || PyFloat_Check(v)) {
        PyObject *t = PyObject_Str(v);
        PyObject *b = t ? PyUnicode_AsUTF8String(t) : NULL;
        Py_XDECREF(t);
        return b;
    }
    if (PyObject_CheckBuffer(v))
        return PyBytes_FromObject(v);
bad:
    PyErr_Format(PyExc_TypeError, "command arguments must be bytes, str, int "
                 "or float, got %.100s", Py_TYPE(v)->tp_name);
    return NULL;
}

PyObject *
iocp_conn_command(ConnObject *o, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    PyObject *cb = Py_None;
    for (Py_ssize_t k = 0; kwnames != NULL && k < PyTuple_GET_SIZE(kwnames); k++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, k),
                                             "callback") != 0)
            return PyErr_Format(PyExc_TypeError, "command() got an unexpected "
                                "keyword argument %R", PyTuple_GET_ITEM(kwnames, k));
        cb = args[nargs + k];
    }
    if (nargs == 0)
        return PyErr_Format(PyExc_TypeError, "command() needs the command's "
                            "name and arguments");
    if (cb != Py_None && !PyCallable_Check(cb))
        return PyErr_Format(PyExc_TypeError, "callback must be callable or "
                            "None, got %.100s", Py_TYPE(cb)->tp_name);
    if (o->c == NULL)
        Py_RETURN_FALSE;
    /* Encode: *n then $len arg for each; one send. */
    PyObject *parts = PyTuple_New(nargs);
    if (parts == NULL)
        return NULL;
    size_t size = resp_put_array(NULL, (size_t)nargs);
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *b = command_arg(args[i]);
        if (b == NULL) {
            Py_DECREF(parts);
            return NULL;
        }
        PyTuple_SET_ITEM(parts, i, b);
        size += resp_put_bulk(NULL, NULL, (size_t)PyBytes_GET_SIZE(b));
    }
    uint8_t stack[STACK_REPLY];
    uint8_t *buf = size <= sizeof stack ? stack : PyMem_Malloc(size);
    if (buf == NULL) {
        Py_DECREF(parts);
        return PyErr_NoMemory();
    }
    uint8_t *p = buf;
    p += resp_put_array(p, (size_t)nargs);
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *b = PyTuple_GET_ITEM(parts, i);
        p += resp_put_bulk(p, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
    }
    Py_DECREF(parts);
    PyObject *result = NULL;
    if (o->waiting == NULL && (o->waiting = PyList_New(0)) == NULL)
        goto done;
    int rc = conn_send(o->c, buf, (size_t)(p - buf), 0, NULL);
    if (rc == -ENOMEM) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc < 0) {
        result = Py_NewRef(Py_False);   /* closing: no reply will come */
        goto done;
    }
    /* (under the GIL: no reply can be delivered before this is queued) */
    if (PyList_Append(o->waiting, cb) < 0)
        goto done;
    result = Py_NewRef(Py_True);
done:
    if (buf != stack)
        PyMem_Free(buf);
    return result;
}

/* The oldest callback waiting (a new reference), or NULL if none. */
static PyObject *
next_waiting(ConnObject *o)
{
    PyObject *w = o->waiting;
    if (w == NULL || o->waiting_head >= PyList_GET_SIZE(w))
        return NULL;
    PyObject *cb = Py_NewRef(PyList_GET_ITEM(w, o->waiting_head));
    /* (SetItem drops the list's reference to cb: ours remains) */
    if (PyList_SetItem(w, o->waiting_head, Py_NewRef(Py_None)) < 0)
        PyErr_Clear();   /* (cannot fail: the index is in range) */
    o->waiting_head++;
    /* drop the answered head once it is most of the list */
    if (o->waiting_head > 64 && o->waiting_head * 2 > PyList_GET_SIZE(w)) {
        if (PyList_SetSlice(w, 0, o->waiting_head, NULL) < 0)
            PyErr_Clear();   /* (kept: it is only memory) */
        else
            o->waiting_head = 0;
    }
    return cb;
}

static void
call_back(ServerObject *so, ConnObject *o, PyObject *cb, PyObject *value)
{
    PyObject *args[2] = {(PyObject *)o, value};
    PyObject *r = PyObject_Vectorcall(cb, args, 2, NULL);
    if (r == NULL)
        iocp_log_exception(so->logger, PyUnicode_FromFormat(
            "a RESP reply's callback raised (connection %llu)",
            (unsigned long long)o->id));
    Py_XDECREF(r);
}

void
iocp_resp_reply_in(ServerObject *so, ConnObject *o, const struct entry *e,
                   const struct resp_msg *m)
{
    PyObject *value = iocp_resp_decode(so->st, &so->resp_lim, e->ptr, e->len);
    if (value == NULL) {
        iocp_log_exception(so->logger, PyUnicode_FromFormat(
            "decoding a RESP reply failed (connection %llu)",
            (unsigned long long)o->id));
        value = Py_NewRef(Py_None);
    }
    PyObject *cb = m->top == '>' ? NULL : next_waiting(o);
    if (cb != NULL && cb != Py_None)
        call_back(so, o, cb, value);
    else if (so->handler != Py_None)
        call_back(so, o, so->handler, value);
    Py_XDECREF(cb);
    Py_DECREF(value);
}

void
iocp_resp_closed(ServerObject *so, ConnObject *o)
{
    PyObject *cb;
    while ((cb = next_waiting(o)) != NULL) {
        if (cb != Py_None) {
            PyObject *exc = PyObject_CallFunction(
                PyExc_ConnectionError, "s", "the connection closed before "
                "the reply came");
            if (exc == NULL)
                PyErr_Clear();
            else
                call_back(so, o, cb, exc);
            Py_XDECREF(exc);
        }
        Py_DECREF(cb);
    }
}

/* ---- Reply ----------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    ConnObject *conn;
    uint64_t seq;
} ReplyObject;

PyObject *
iocp_conn_defer(ConnObject *o)
{
    int64_t seq = oldest_open(o);
    if (seq < 0) {
        PyErr_SetString(PyExc_RuntimeError, "no command on this connection "
                        "waits for a reply");
        return NULL;
    }
    PyObject *module = PyType_GetModule(Py_TYPE(o));
    if (module == NULL)
        return NULL;
    iocp_state *st = iocp_get_state(module);
    ReplyObject *r = (ReplyObject *)st->ReplyType->tp_alloc(st->ReplyType, 0);
    if (r == NULL)
        return NULL;
    r->conn = (ConnObject *)Py_NewRef((PyObject *)o);
    r->seq = (uint64_t)seq;
    order_owed(o, (uint64_t)seq)->flags |= SLOT_DEFERRED;
    return (PyObject *)r;
}

static PyObject *
reply_reply(ReplyObject *self, PyObject *value)
{
    struct slot *s = order_owed(self->conn, self->seq);
    if (s == NULL || (s->flags & ORDER_DONE)) {
        if (self->conn->c == NULL)
            Py_RETURN_FALSE;
        PyErr_SetString(PyExc_RuntimeError, "this command has its reply");
        return NULL;
    }
    return answer(PyType_GetModuleState(Py_TYPE(self)), self->conn, self->seq, value);
}

static int
reply_traverse(ReplyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->conn);
    return 0;
}

static void
reply_dealloc(ReplyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    struct slot *s = self->conn != NULL ? order_owed(self->conn, self->seq) : NULL;
    if (s != NULL && !(s->flags & ORDER_DONE) && self->conn->c != NULL) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (answer_bytes(self->conn, self->seq, NO_REPLY, sizeof NO_REPLY - 1, 0) < 0)
            PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
    Py_CLEAR(self->conn);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef reply_methods[] = {
    {"reply", (PyCFunction)reply_reply, METH_O,
     "reply($self, value, /)\n--\n\n"
     "Give the deferred command its reply (encoded as conn.reply() does);\n"
     "it leaves in command order.  Any thread.  True, or False if the\n"
     "connection is closed."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot reply_slots[] = {
    {Py_tp_doc, "A RESP command's reply, owed later: what conn.defer() returns.\n"
                "Dropped without reply(), the command gets an error reply."},
    {Py_tp_dealloc, reply_dealloc},
    {Py_tp_traverse, reply_traverse},
    {Py_tp_methods, reply_methods},
    {0, NULL},
};

static PyType_Spec reply_spec = {
    .name = "iocport._iocport.Reply",
    .basicsize = sizeof(ReplyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = reply_slots,
};

int
iocp_reply_add_type(PyObject *module, iocp_state *st)
{
    st->ReplyType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &reply_spec, NULL);
    if (st->ReplyType == NULL)
        return -1;
    return PyModule_AddType(module, st->ReplyType);
}
