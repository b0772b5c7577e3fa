/* http.c - the Python test hook for the HTTP/1.1 request parser
 * (lib/http.c): the private type _iocport.HTTPParser, an incremental
 * parser fed bytes that returns whole requests as dicts, and
 * HTTPParseError, what it raises on a rejection.  The request object
 * handlers will get is not this; it comes with the engine's HTTP framing. */
#include "py/objects.h"
#include "lib/http.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    struct http_limits lim;
    struct http_parser p;          /* p.lim points at lim above */
    struct http_field *fields;     /* room for lim.max_headers */
    uint8_t *buf;                  /* from the current request's start */
    size_t len, cap;
    size_t need;                   /* the last HTTP_NEED's */
    unsigned flags;                /* the last HTTP_NEED's */
    int error;                     /* sticky rejection (< 0) */
    int paused;                    /* after an Upgrade or CONNECT request */
    int busy;                      /* inside feed(): refuse re-entry */
} HTTPParserObject;

/* The limits as keyword arguments, from HTTP_LIMITS: one list. */
#define HP_KW(name, dflt, doc) #name,
#define HP_FMT(name, dflt, doc) "O"
#define HP_SIG(name, dflt, doc) ", " #name "=" #dflt
#define HP_COUNT(name, dflt, doc) +1
enum { HP_NLIMITS = 0 HTTP_LIMITS(HP_COUNT) };

/* A limit: an int (not a bool), not negative. */
static int
limit_from_py(PyObject *v, const char *name, uint64_t *out)
{
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be int, got %.200s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || x < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be positive, got %R", name, v);
        return -1;
    }
    if (overflow > 0) {
        PyErr_Format(PyExc_ValueError, "%s is too large", name);
        return -1;
    }
    *out = (uint64_t)x;
    return 0;
}

static PyObject *
hp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {HTTP_LIMITS(HP_KW) NULL};
    static const char *names[] = {HTTP_LIMITS(HP_KW) NULL};
    PyObject *vals[HP_NLIMITS] = {NULL};
    struct http_limits lim = http_limits_default;
    uint64_t *fields[] = {
#define HP_PTR(name, dflt, doc) &lim.name,
        HTTP_LIMITS(HP_PTR)
#undef HP_PTR
    };
    _Static_assert(HP_NLIMITS == 6, "the format string below lists 6 limits");
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|$" HTTP_LIMITS(HP_FMT) ":HTTPParser", kwlist,
            &vals[0], &vals[1], &vals[2], &vals[3], &vals[4], &vals[5]))
        return NULL;
    for (int i = 0; i < HP_NLIMITS; i++)
        if (vals[i] != NULL && limit_from_py(vals[i], names[i], fields[i]) < 0)
            return NULL;
    const char *err = http_limits_check(&lim);
    if (err != NULL) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    HTTPParserObject *self = (HTTPParserObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->lim = lim;
    http_parser_init(&self->p, &self->lim);
    self->fields = PyMem_New(struct http_field, (size_t)lim.max_headers);
    if (self->fields == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
hp_dealloc(HTTPParserObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyMem_Free(self->fields);
    PyMem_Free(self->buf);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Raise HTTPParseError for `rc` with .status, .reason and .requests (the
 * requests parsed before it in this feed(), or [] when reqs is NULL). */
static void
hp_fail(HTTPParserObject *self, int rc, PyObject *reqs)
{
    iocp_state *st = PyType_GetModuleState(Py_TYPE(self));
    if (st == NULL)
        return;
    int status = http_error_status(rc);
    const char *reason = http_error_reason(rc);
    PyObject *exc = PyObject_CallFunction((PyObject *)st->HTTPParseError,
                                          "s", reason);
    if (exc == NULL)
        return;
    PyObject *list = reqs != NULL ? Py_NewRef(reqs) : PyList_New(0);
    PyObject *code = PyLong_FromLong(status);
    PyObject *why = PyUnicode_FromString(reason);
    if (list != NULL && code != NULL && why != NULL &&
        PyObject_SetAttrString(exc, "status", code) == 0 &&
        PyObject_SetAttrString(exc, "reason", why) == 0 &&
        PyObject_SetAttrString(exc, "requests", list) == 0)
        PyErr_SetObject((PyObject *)st->HTTPParseError, exc);
    Py_XDECREF(list);
    Py_XDECREF(code);
    Py_XDECREF(why);
    Py_DECREF(exc);
}

static PyObject *
span_bytes(const uint8_t *buf, struct http_span s)
{
    return PyBytes_FromStringAndSize((const char *)buf + s.off,
                                     (Py_ssize_t)s.len);
}

/* [(name, value), ...] of n fields. */
static PyObject *
fields_to_py(const uint8_t *buf, const struct http_field *f, size_t n)
{
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list != NULL && i < n; i++) {
        PyObject *name = span_bytes(buf, f[i].name);
        PyObject *value = span_bytes(buf, f[i].value);
        PyObject *pair = name && value ? PyTuple_Pack(2, name, value) : NULL;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (pair == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, pair);
    }
    return list;
}

static int
set_item(PyObject *d, const char *key, PyObject *v)
{
    if (v == NULL)
        return -1;
    int rc = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *
request_to_py(const uint8_t *buf, const struct http_request *r,
              const struct http_field *f)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    unsigned fl = r->flags;
    if (set_item(d, "method", span_bytes(buf, r->method)) < 0 ||
        set_item(d, "target", span_bytes(buf, r->target)) < 0 ||
        set_item(d, "path", span_bytes(buf, r->path)) < 0 ||
        set_item(d, "query", span_bytes(buf, r->query)) < 0 ||
        set_item(d, "version", span_bytes(buf, r->version)) < 0 ||
        set_item(d, "minor", PyLong_FromUnsignedLong(r->minor)) < 0 ||
        set_item(d, "headers", fields_to_py(buf, f, r->nheaders)) < 0 ||
        set_item(d, "trailers",
                 fields_to_py(buf, f + r->nheaders, r->ntrailers)) < 0 ||
        set_item(d, "body", span_bytes(buf, r->body)) < 0 ||
        set_item(d, "consumed", PyLong_FromSize_t(r->consumed)) < 0 ||
        set_item(d, "keep_alive", PyBool_FromLong(fl & HTTP_KEEP_ALIVE)) < 0 ||
        set_item(d, "expect_continue",
                 PyBool_FromLong(fl & HTTP_EXPECT_CONTINUE)) < 0 ||
        set_item(d, "upgrade", PyBool_FromLong(fl & HTTP_UPGRADE)) < 0 ||
        set_item(d, "connect", PyBool_FromLong(fl & HTTP_CONNECT)) < 0 ||
        set_item(d, "chunked", PyBool_FromLong(fl & HTTP_CHUNKED)) < 0)
        Py_CLEAR(d);
    return d;
}

static PyObject *
hp_feed(HTTPParserObject *self, PyObject *data)
{
    if (self->error) {
        hp_fail(self, self->error, NULL);
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "HTTPParser.feed() re-entered");
        return NULL;
    }
    if (iocp_buf_append(&self->buf, &self->len, &self->cap, data) < 0)
        return NULL;
    PyObject *reqs = PyList_New(0);
    if (reqs == NULL || self->len == 0)
        return reqs;
    self->busy = 1;
    size_t pos = 0;
    int ok = 0;
    for (;;) {
        struct http_request r;
        if (self->paused) {   /* the rest is not HTTP: keep it */
            ok = 1;
            break;
        }
        int rc = http_parse(&self->p, self->buf + pos, self->len - pos,
                            self->fields, &r);
        if (rc == HTTP_NEED) {
            self->need = r.need;
            self->flags = r.flags;
            ok = 1;
            break;
        }
        if (rc < 0) {
            self->error = rc;
            hp_fail(self, rc, reqs);
            break;
        }
        /* Consumed even if it cannot be returned (MemoryError): the parser
         * has moved on, and a chunked body was de-chunked in place. */
        PyObject *d = request_to_py(self->buf + pos, &r, self->fields);
        pos += r.consumed;
        self->need = 0;
        self->flags = 0;
        if (r.flags & (HTTP_UPGRADE | HTTP_CONNECT))
            self->paused = 1;
        if (d == NULL || PyList_Append(reqs, d) < 0) {
            Py_XDECREF(d);
            break;
        }
        Py_DECREF(d);
    }
    self->busy = 0;
    /* The request in progress moves to the buffer's start, as the parser
     * left it (offsets, not pointers: it may move). */
    if (self->error)
        pos = self->len;
    self->len -= pos;
    if (pos > 0)
        memmove(self->buf, self->buf + pos, self->len);
    if (!ok)
        Py_CLEAR(reqs);
    return reqs;
}

static PyObject *
hp_get_buffered(HTTPParserObject *self, void *Py_UNUSED(closure))
{
    return PyBytes_FromStringAndSize((const char *)self->buf,
                                     (Py_ssize_t)self->len);
}

static PyObject *
hp_get_need(HTTPParserObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->need);
}

static PyObject *
hp_get_expect_continue(HTTPParserObject *self, void *Py_UNUSED(closure))
{
    unsigned want = HTTP_HEADERS_DONE | HTTP_EXPECT_CONTINUE;
    return PyBool_FromLong((self->flags & want) == want);
}

static PyObject *
hp_get_paused(HTTPParserObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->paused);
}

static PyObject *
hp_get_work(HTTPParserObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->p.work);
}

static PyMethodDef hp_methods[] = {
    {"feed", (PyCFunction)hp_feed, METH_O,
     "feed($self, data, /)\n--\n\n"
     "Add bytes; return the requests now whole, as a list of dicts (method,\n"
     "target, path, query, version, minor, headers, trailers, body,\n"
     "consumed, keep_alive, expect_continue, upgrade, connect, chunked).\n"
     "After an Upgrade or CONNECT request it stops: what follows stays in\n"
     "buffered.  A rejection raises HTTPParseError, then again on every\n"
     "later call."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef hp_getset[] = {
    {"buffered", (getter)hp_get_buffered, NULL,
     "The bytes after the last whole request (a chunked body in progress\n"
     "is partly de-chunked).", NULL},
    {"need", (getter)hp_get_need, NULL,
     "The buffer length the request in progress needs, if known, else 0.",
     NULL},
    {"expect_continue", (getter)hp_get_expect_continue, NULL,
     "The request in progress has its header section and expects a\n"
     "100 Continue before its body.", NULL},
    {"paused", (getter)hp_get_paused, NULL,
     "An Upgrade or CONNECT request was parsed: the rest is not HTTP.", NULL},
    {"work", (getter)hp_get_work, NULL,
     "Bytes the parser examined so far (each line's about three times).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot hp_slots[] = {
    {Py_tp_doc,
     "HTTPParser(*" HTTP_LIMITS(HP_SIG) ")\n--\n\n"
     "The native HTTP/1.1 request parser (src/lib/http.c), for tests:\n"
     "feed() bytes, get whole requests.  Private: the request object\n"
     "handlers get comes later."},
    {Py_tp_new, hp_new},
    {Py_tp_dealloc, hp_dealloc},
    {Py_tp_methods, hp_methods},
    {Py_tp_getset, hp_getset},
    {0, NULL},
};

static PyType_Spec hp_spec = {
    .name = "iocport._iocport.HTTPParser",
    .basicsize = sizeof(HTTPParserObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = hp_slots,
};

int
iocp_http_add_types(PyObject *module, iocp_state *st)
{
    st->HTTPParserType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &hp_spec, NULL);
    if (st->HTTPParserType == NULL ||
        PyModule_AddObjectRef(module, "HTTPParser",
                              (PyObject *)st->HTTPParserType) < 0)
        return -1;
    st->HTTPParseError = iocp_new_error(
        st, "iocport._iocport.HTTPParseError",
        "Raised by HTTPParser.feed() on a request it rejects; an iocport.Error\n"
        "and a ValueError.  status: what a server answers (400, 413, 414,\n"
        "431, 501, 505); reason: why; requests: the whole requests that call\n"
        "parsed before it.",
        PyExc_ValueError);
    if (st->HTTPParseError == NULL ||
        PyModule_AddObjectRef(module, "HTTPParseError",
                              (PyObject *)st->HTTPParseError) < 0)
        return -1;
    return 0;
}
