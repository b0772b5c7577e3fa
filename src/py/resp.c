/* resp.c (binding) - a private test hook over src/lib/resp.c: the
 * RESPParser type (feed() frames commands, or on the client side whole
 * replies decoded into Python values; encode() writes a value as RESP),
 * RESPProtocolError (a protocol error, with Redis's text) and RESPError (an
 * error reply as a value).  The public RESP API comes later. */
#include "py/objects.h"
#include "lib/resp.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    struct resp_limits lim;
    int client;
    uint8_t *buf;              /* buffered bytes: buf[0..len) */
    size_t len, cap;
    struct resp_cmd cmd;       /* server side */
    struct resp_reply rep;     /* client side */
    struct resp_arg *args;     /* server side: argument spans */
    size_t nargs_cap;
    int error;                 /* sticky status (< 0) once one occurred */
    uint8_t bad;               /* its offending byte */
    int busy;                  /* inside feed() */
} RESPParserObject;

#define RESP_FIRST_ARGS 16

static PyObject *
rp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"client", "max_bulk", "max_args", "max_inline",
                             "max_depth", NULL};
    struct resp_limits lim;
    resp_limits_default(&lim);
    int client = 0;
    unsigned long long max_bulk = lim.max_bulk, max_args = lim.max_args;
    Py_ssize_t max_inline = (Py_ssize_t)lim.max_inline;
    int max_depth = (int)lim.max_depth;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$pKKni:RESPParser", kwlist,
                                     &client, &max_bulk, &max_args,
                                     &max_inline, &max_depth))
        return NULL;
    if (max_inline <= 0 || max_depth <= 0) {
        PyErr_SetString(PyExc_ValueError,
                        "max_inline and max_depth must be positive");
        return NULL;
    }
    lim.max_bulk = max_bulk;
    lim.max_args = max_args;
    lim.max_inline = (size_t)max_inline;
    lim.max_depth = (unsigned)max_depth;
    const char *err = resp_limits_check(&lim);
    if (err != NULL) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    RESPParserObject *self = (RESPParserObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->lim = lim;
    self->client = client;
    resp_cmd_reset(&self->cmd);
    resp_reply_reset(&self->rep);
    return (PyObject *)self;
}

static int
rp_traverse(RESPParserObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void
rp_dealloc(RESPParserObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    PyMem_Free(self->buf);
    PyMem_Free(self->args);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Raise RESPProtocolError for `status`: its text, .messages (what this
 * feed() framed before the error, or []) and .reply (what a Redis server
 * sends before closing, or None). */
static void
rp_fail(RESPParserObject *self, PyObject *msgs)
{
    iocp_state *st = PyType_GetModuleState(Py_TYPE(self));
    if (st == NULL)
        return;
    char text[RESP_ERROR_MAX];
    size_t n = resp_error_text(self->error, self->bad, text, sizeof text);
    PyObject *exc = PyObject_CallFunction((PyObject *)st->RESPProtocolError,
                                          "s#", text, (Py_ssize_t)n);
    if (exc == NULL)
        return;
    PyObject *list = msgs != NULL ? Py_NewRef(msgs) : PyList_New(0);
    PyObject *reply = resp_error_sent(self->error)
        ? PyBytes_FromFormat("-%s\r\n", text) : Py_NewRef(Py_None);
    if (list != NULL && reply != NULL &&
        PyObject_SetAttrString(exc, "messages", list) == 0 &&
        PyObject_SetAttrString(exc, "reply", reply) == 0)
        PyErr_SetObject((PyObject *)st->RESPProtocolError, exc);
    Py_XDECREF(list);
    Py_XDECREF(reply);
    Py_DECREF(exc);
}

static int
rp_reserve(RESPParserObject *self, size_t extra)
{
    if (extra <= self->cap - self->len)
        return 0;
    if (extra > (size_t)PY_SSIZE_T_MAX - self->len) {
        PyErr_NoMemory();
        return -1;
    }
    size_t want = self->len + extra, cap = self->cap ? self->cap : 256;
    while (cap < want)
        cap = cap > (size_t)PY_SSIZE_T_MAX / 2 ? want : cap * 2;
    uint8_t *buf = PyMem_Realloc(self->buf, cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->buf = buf;
    self->cap = cap;
    return 0;
}

/* ---- decoding ------------------------------------------------------------------ */

PyObject *
iocp_resp_command(const uint8_t *buf, const struct resp_arg *args, size_t nargs)
{
    PyObject *list = PyList_New((Py_ssize_t)nargs);
    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < nargs; i++) {
        const struct resp_arg *a = &args[i];
        PyObject *b;
        if (a->quoted) {
            /* (the value is never longer than its quoted token) */
            b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)a->len);
            if (b != NULL) {
                size_t n = resp_unquote(buf, a, (uint8_t *)PyBytes_AS_STRING(b));
                if (_PyBytes_Resize(&b, (Py_ssize_t)n) < 0)
                    b = NULL;
            }
        } else {
            b = PyBytes_FromStringAndSize((const char *)buf + a->off,
                                          (Py_ssize_t)a->len);
        }
        if (b == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, b);
    }
    return list;
}

/* The value at buf[*pos..) of a reply resp_reply_next found whole, so the
 * recursion is bounded by max_depth.  Attributes are read and dropped;
 * sets and pushes become lists (as redis-py), verbatim strings their text
 * without the format (as redis-py), errors RESPError values. */
static PyObject *
decode(iocp_state *st, const struct resp_limits *lim, const uint8_t *buf,
       size_t len, size_t *pos)
{
    struct resp_item it;
    size_t need, scanned;
    for (;;) {
        if (resp_item_at(lim, buf, len, *pos, *pos, &it, &need, &scanned) !=
            RESP_OK) {
            PyErr_SetString(PyExc_RuntimeError, "RESP reply changed under "
                            "its decoder");
            return NULL;
        }
        *pos = it.end;
        if (it.type != '|')
            break;
        for (int64_t i = 0; i < 2 * it.n; i++) {
            PyObject *skip = decode(st, lim, buf, len, pos);
            if (skip == NULL)
                return NULL;
            Py_DECREF(skip);
        }
    }
    const char *s = (const char *)buf + it.off;
    Py_ssize_t n = (Py_ssize_t)it.len;
    switch (it.type) {
    case '+':
        return PyBytes_FromStringAndSize(s, n);
    case '-': case '!':
        return PyObject_CallFunction((PyObject *)st->RESPError, "N",
                                     PyUnicode_DecodeUTF8(s, n, "replace"));
    case ':':
        return PyLong_FromLongLong(it.n);
    case '(': {
        char *tmp = PyMem_Malloc((size_t)n + 1);
        if (tmp == NULL)
            return PyErr_NoMemory();
        memcpy(tmp, s, (size_t)n);
        tmp[n] = '\0';
        PyObject *v = PyLong_FromString(tmp, NULL, 10);
        PyMem_Free(tmp);
        return v;
    }
    case ',':
        return PyFloat_FromDouble(it.d);
    case '#':
        return PyBool_FromLong((long)it.n);
    case '_':
        Py_RETURN_NONE;
    case '$':
        if (it.n < 0)
            Py_RETURN_NONE;
        return PyBytes_FromStringAndSize(s, n);
    case '=':
        return PyBytes_FromStringAndSize(s + 4, n - 4);
    case '%': {
        PyObject *d = PyDict_New();
        for (int64_t i = 0; d != NULL && i < it.n; i++) {
            PyObject *k = decode(st, lim, buf, len, pos);
            PyObject *v = k ? decode(st, lim, buf, len, pos) : NULL;
            if (v == NULL || PyDict_SetItem(d, k, v) < 0)
                Py_CLEAR(d);
            Py_XDECREF(k);
            Py_XDECREF(v);
        }
        return d;
    }
    default:   /* * ~ > */
        if (it.n < 0)
            Py_RETURN_NONE;
        PyObject *list = PyList_New((Py_ssize_t)it.n);
        for (int64_t i = 0; list != NULL && i < it.n; i++) {
            PyObject *v = decode(st, lim, buf, len, pos);
            if (v == NULL)
                Py_CLEAR(list);
            else
                PyList_SET_ITEM(list, (Py_ssize_t)i, v);
        }
        return list;
    }
}

PyObject *
iocp_resp_decode(iocp_state *st, const struct resp_limits *lim,
                 const uint8_t *buf, size_t len)
{
    size_t pos = 0;
    return decode(st, lim, buf, len, &pos);
}

/* Frame what is buffered from *pos: 1 with a value in *out, 0 for "need
 * more", -1 on error (a protocol error is left in self->error). */
static int
rp_next(RESPParserObject *self, iocp_state *st, size_t *pos, PyObject **out)
{
    const uint8_t *buf = self->buf + *pos;
    size_t len = self->len - *pos;
    *out = NULL;
    if (self->client) {
        int rc = resp_reply_next(&self->lim, &self->rep, buf, len);
        if (rc == RESP_NEED)
            return 0;
        if (rc < 0) {
            self->error = rc;
            self->bad = self->rep.bad;
            return -1;
        }
        size_t at = 0;
        *out = decode(st, &self->lim, buf, self->rep.consumed, &at);
        *pos += self->rep.consumed;
        return *out ? 1 : -1;
    }
    for (;;) {
        int rc = resp_cmd_next(&self->lim, &self->cmd, buf, len, self->args,
                               self->nargs_cap);
        if (rc == RESP_NEED)
            return 0;
        if (rc < 0) {
            self->error = rc;
            self->bad = self->cmd.bad;
            return -1;
        }
        if (rc == RESP_GROW) {
            size_t cap = self->nargs_cap ? self->nargs_cap * 2 : RESP_FIRST_ARGS;
            if (cap > self->cmd.want_args)
                cap = (size_t)self->cmd.want_args;
            struct resp_arg *a = PyMem_Realloc(self->args, cap * sizeof *a);
            if (a == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            self->args = a;
            self->nargs_cap = cap;
            continue;
        }
        size_t consumed = self->cmd.consumed, nargs = self->cmd.nargs;
        *pos += consumed;
        if (nargs == 0) {        /* an empty command: Redis ignores it */
            buf += consumed;
            len -= consumed;
            continue;
        }
        *out = iocp_resp_command(buf, self->args, nargs);
        return *out ? 1 : -1;
    }
}

static PyObject *
rp_feed(RESPParserObject *self, PyObject *data)
{
    if (self->error) {
        rp_fail(self, NULL);
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "RESPParser.feed() re-entered");
        return NULL;
    }
    iocp_state *st = PyType_GetModuleState(Py_TYPE(self));
    if (st == NULL)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = rp_reserve(self, (size_t)view.len);
    if (rc == 0 && view.len > 0) {
        memcpy(self->buf + self->len, view.buf, (size_t)view.len);
        self->len += (size_t)view.len;
    }
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    PyObject *msgs = PyList_New(0);
    if (msgs == NULL)
        return NULL;
    self->busy = 1;
    size_t pos = 0;
    int ok = 0;
    for (;;) {
        PyObject *v;
        int r = rp_next(self, st, &pos, &v);
        if (r == 0) {
            ok = 1;
            break;
        }
        if (r < 0) {
            if (self->error)
                rp_fail(self, msgs);
            break;
        }
        r = PyList_Append(msgs, v);
        Py_DECREF(v);
        if (r < 0)
            break;
    }
    self->busy = 0;
    if (self->error)
        pos = self->len;
    if (pos > 0) {
        self->len -= pos;
        memmove(self->buf, self->buf + pos, self->len);
    }
    if (!ok)
        Py_CLEAR(msgs);
    return msgs;
}

/* ---- encoding ------------------------------------------------------------------ */

Py_ssize_t
iocp_resp_encode_into(iocp_state *st, PyObject *v, int proto, uint8_t **out)
{
    Py_ssize_t total = -1;
    size_t n = 0;
#define PUT(call) do { n = (call); if (*out) *out += n; total += (Py_ssize_t)n; } while (0)
    if (Py_EnterRecursiveCall(" while encoding RESP"))
        return -1;
    total = 0;
    if (v == Py_None) {
        PUT(resp_put_null(*out, proto));
    } else if (PyBool_Check(v)) {
        PUT(resp_put_bool(*out, v == Py_True, proto));
    } else if (PyLong_Check(v)) {
        int overflow;
        long long ll = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (ll == -1 && PyErr_Occurred()) {
            total = -1;
        } else if (overflow == 0) {
            PUT(resp_put_int(*out, ll));
        } else {
            PyObject *s = PyLong_Type.tp_repr(v);
            Py_ssize_t sl;
            const char *p = s ? PyUnicode_AsUTF8AndSize(s, &sl) : NULL;
            if (p == NULL)
                total = -1;
            else
                PUT(resp_put_bignum(*out, p, (size_t)sl, proto));
            Py_XDECREF(s);
        }
    } else if (PyFloat_Check(v)) {
        PUT(resp_put_double(*out, PyFloat_AS_DOUBLE(v), proto));
    } else if (PyObject_TypeCheck(v, st->SimpleStringType)) {
        const char *p = PyBytes_AS_STRING(v);
        size_t sl = (size_t)PyBytes_GET_SIZE(v);
        if (!resp_line_ok(p, sl)) {
            PyErr_SetString(PyExc_ValueError,
                            "a RESP simple string must not contain CR or LF");
            total = -1;
        } else {
            PUT(resp_put_simple(*out, p, sl));
        }
    } else if (PyUnicode_Check(v)) {
        Py_ssize_t sl;
        const char *p = PyUnicode_AsUTF8AndSize(v, &sl);
        if (p == NULL)
            total = -1;
        else
            PUT(resp_put_bulk(*out, p, (size_t)sl));
    } else if (PyObject_CheckBuffer(v)) {
        Py_buffer view;
        if (PyObject_GetBuffer(v, &view, PyBUF_SIMPLE) < 0) {
            total = -1;
        } else {
            PUT(resp_put_bulk(*out, view.buf, (size_t)view.len));
            PyBuffer_Release(&view);
        }
    } else if (PyList_Check(v) || PyTuple_Check(v)) {
        Py_ssize_t len = PySequence_Fast_GET_SIZE(v);
        PUT(resp_put_array(*out, (size_t)len));
        for (Py_ssize_t i = 0; i < len && total >= 0; i++) {
            Py_ssize_t k = iocp_resp_encode_into(st, PySequence_Fast_GET_ITEM(v, i), proto, out);
            total = k < 0 ? -1 : total + k;
        }
    } else if (PyDict_Check(v)) {
        PUT(resp_put_map(*out, (size_t)PyDict_GET_SIZE(v), proto));
        Py_ssize_t i = 0;
        PyObject *key, *val;
        while (total >= 0 && PyDict_Next(v, &i, &key, &val)) {
            Py_ssize_t a = iocp_resp_encode_into(st, key, proto, out);
            Py_ssize_t b = a < 0 ? -1 : iocp_resp_encode_into(st, val, proto, out);
            total = b < 0 ? -1 : total + a + b;
        }
    } else if (PyAnySet_Check(v)) {
        PUT(resp_put_set(*out, (size_t)PySet_GET_SIZE(v), proto));
        PyObject *it = PyObject_GetIter(v), *key;
        if (it == NULL)
            total = -1;
        while (total >= 0 && (key = PyIter_Next(it)) != NULL) {
            Py_ssize_t k = iocp_resp_encode_into(st, key, proto, out);
            total = k < 0 ? -1 : total + k;
            Py_DECREF(key);
        }
        if (PyErr_Occurred())
            total = -1;
        Py_XDECREF(it);
    } else if (PyObject_TypeCheck(v, st->RESPError)) {
        PyObject *args = PyObject_GetAttrString(v, "args");
        PyObject *msg = args && PyTuple_Check(args) && PyTuple_GET_SIZE(args) == 1
                            ? PyTuple_GET_ITEM(args, 0) : NULL;
        const char *p = NULL;
        Py_ssize_t sl = 0;
        if (msg != NULL && PyUnicode_Check(msg))
            p = PyUnicode_AsUTF8AndSize(msg, &sl);
        else if (msg != NULL && PyBytes_Check(msg))
            PyBytes_AsStringAndSize(msg, (char **)&p, &sl);
        else if (args != NULL)
            PyErr_SetString(PyExc_TypeError,
                            "RESPError needs one str or bytes argument");
        if (p != NULL && !resp_line_ok(p, (size_t)sl)) {
            PyErr_SetString(PyExc_ValueError,
                            "a RESP error must not contain CR or LF");
            p = NULL;
        }
        if (p == NULL)
            total = -1;
        else
            PUT(resp_put_error(*out, p, (size_t)sl));
        Py_XDECREF(args);
    } else {
        PyErr_Format(PyExc_TypeError,
                     "cannot encode %.200s as RESP: expected bytes, str, int, "
                     "float, bool, None, list, tuple, dict, set, SimpleString "
                     "or RESPError",
                     Py_TYPE(v)->tp_name);
        total = -1;
    }
#undef PUT
    Py_LeaveRecursiveCall();
    return total;
}

PyObject *
iocp_resp_encode(iocp_state *st, PyObject *value, int proto)
{
    uint8_t *none = NULL;
    Py_ssize_t size = iocp_resp_encode_into(st, value, proto, &none);
    PyObject *res = NULL;
    if (size >= 0)
        res = PyBytes_FromStringAndSize(NULL, size);
    if (res != NULL) {
        uint8_t *start = (uint8_t *)PyBytes_AS_STRING(res), *p = start;
        if (iocp_resp_encode_into(st, value, proto, &p) != size || p != start + size) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError,
                                "value changed while being encoded");
            Py_CLEAR(res);
        }
    }
    return res;
}

static PyObject *
rp_encode(PyObject *cls, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "protocol", NULL};
    PyObject *value;
    int proto = 2;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|i:encode", kwlist, &value,
                                     &proto))
        return NULL;
    if (proto != 2 && proto != 3) {
        PyErr_Format(PyExc_ValueError, "protocol must be 2 or 3, got %d",
                     proto);
        return NULL;
    }
    iocp_state *st = PyType_GetModuleState((PyTypeObject *)cls);
    if (st == NULL)
        return NULL;
    return iocp_resp_encode(st, value, proto);
}

static PyObject *
rp_get_pending(RESPParserObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->len);
}

static PyMethodDef rp_methods[] = {
    {"feed", (PyCFunction)rp_feed, METH_O,
     "feed($self, data, /)\n--\n\n"
     "Add bytes from the stream; return what is now whole: commands (each a\n"
     "list of bytes), or with client=True replies decoded into Python values.\n"
     "On a protocol error raise RESPProtocolError (its text is Redis's), and\n"
     "every later call raises it again."},
    {"encode", (PyCFunction)(void (*)(void))rp_encode,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "encode($type, value, protocol=2)\n--\n\n"
     "value as a RESP reply, as Redis sends it to a RESP2 or RESP3 client."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rp_getset[] = {
    {"pending", (getter)rp_get_pending, NULL,
     "Number of buffered bytes not yet part of a whole command or reply.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rp_slots[] = {
    {Py_tp_doc,
     "RESPParser(*, client=False, max_bulk=536870912, max_args=1048576, "
     "max_inline=65536, max_depth=64)\n--\n\n"
     "A test hook over the native RESP framer (src/lib/resp.c): commands,\n"
     "or with client=True replies.  Private: the public API comes later."},
    {Py_tp_new, rp_new},
    {Py_tp_dealloc, rp_dealloc},
    {Py_tp_traverse, rp_traverse},
    {Py_tp_methods, rp_methods},
    {Py_tp_getset, rp_getset},
    {0, NULL},
};

static PyType_Spec rp_spec = {
    .name = "iocport._iocport.RESPParser",
    .basicsize = sizeof(RESPParserObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rp_slots,
};

static PyType_Slot simple_slots[] = {
    {Py_tp_doc, "SimpleString(value, /)\n--\n\n"
                "bytes sent as a RESP simple string (+OK) instead of a bulk\n"
                "string: SimpleString(b'OK').  No CR or LF."},
    {0, NULL},
};

static PyType_Spec simple_spec = {
    .name = "iocport._iocport.SimpleString",
    .basicsize = 0,
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = simple_slots,
};

int
iocp_resp_add_types(PyObject *module, iocp_state *st)
{
    st->SimpleStringType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &simple_spec, (PyObject *)&PyBytes_Type);
    if (st->SimpleStringType == NULL ||
        PyModule_AddObjectRef(module, "SimpleString",
                              (PyObject *)st->SimpleStringType) < 0)
        return -1;
    st->RESPParserType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &rp_spec, NULL);
    if (st->RESPParserType == NULL ||
        PyModule_AddObjectRef(module, "RESPParser",
                              (PyObject *)st->RESPParserType) < 0)
        return -1;
    st->RESPProtocolError = iocp_new_error(
        st, "iocport._iocport.RESPProtocolError",
        "Raised by RESPParser.feed() on a protocol error; an iocport.Error and\n"
        "a ValueError whose text is Redis's.  messages: what that call framed\n"
        "before the error; reply: the bytes a Redis server sends before it\n"
        "closes (None for errors in replies).",
        PyExc_ValueError);
    if (st->RESPProtocolError == NULL ||
        PyModule_AddObjectRef(module, "RESPProtocolError",
                              (PyObject *)st->RESPProtocolError) < 0)
        return -1;
    st->RESPError = (PyTypeObject *)PyErr_NewExceptionWithDoc(
        "iocport._iocport.RESPError",
        "An error reply (-ERR ..., !...), as a value: args[0] is its text.",
        NULL, NULL);
    if (st->RESPError == NULL ||
        PyModule_AddObjectRef(module, "RESPError",
                              (PyObject *)st->RESPError) < 0)
        return -1;
    return 0;
}
