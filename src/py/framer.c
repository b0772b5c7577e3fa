/* framer.c - the Python side of framing: iocp_framing_from_py() turns an
 * iocport.framing spec into a struct framing, the Framer type exposes
 * framing.c to Python as an incremental framer (feed/wrap), and
 * FramingError is what feed() raises on a bad frame.  iocp_buf_append()
 * is the buffer growth it shares with py/http.c. */
#include "py/objects.h"

#include <string.h>

/* ---- spec conversion ---------------------------------------------------- */

/* An int field of the spec as uint64_t; bool is not an int here. */
static int
spec_u64(PyObject *v, const char *name, uint64_t *out)
{
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError,
                     "framing spec field %s must be int, got %.200s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || (overflow == 0 && x < 0)) {
        PyErr_Format(PyExc_ValueError,
                     "framing spec field %s must not be negative", name);
        return -1;
    }
    if (overflow == 0) {
        *out = (uint64_t)x;
        return 0;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "framing spec field %s is too large",
                     name);
        return -1;
    }
    *out = (uint64_t)u;
    return 0;
}

static int
spec_bool(PyObject *v, const char *name, uint8_t *out)
{
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError,
                     "framing spec field %s must be bool, got %.200s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0)
        return -1;
    *out = (uint8_t)b;
    return 0;
}

/* uint8_t fields: out-of-range values saturate to 255, which framing_check
 * rejects with the right message. */
static uint8_t
sat8(uint64_t v)
{
    return v > 255 ? 255 : (uint8_t)v;
}

/* spec[name] for the conversion below: a borrowed reference, or NULL when
 * absent (no exception) or on error (exception set). */
static PyObject *
spec_item(PyObject *spec, const char *name)
{
    PyObject *key = PyUnicode_FromString(name);
    if (key == NULL)
        return NULL;
    PyObject *v = PyDict_GetItemWithError(spec, key);
    Py_DECREF(key);
    return v;
}

/* An int field, 0 when absent. */
static int
spec_field_u64(PyObject *spec, const char *name, uint64_t *out)
{
    PyObject *v = spec_item(spec, name);
    *out = 0;
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return spec_u64(v, name, out);
}

/* A bool field, false when absent. */
static int
spec_field_bool(PyObject *spec, const char *name, uint8_t *out)
{
    PyObject *v = spec_item(spec, name);
    *out = 0;
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return spec_bool(v, name, out);
}

static int
spec_kind(PyObject *spec, uint8_t *out)
{
    PyObject *v = spec_item(spec, "kind");
    if (v == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "framing spec has no kind");
        return -1;
    }
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "framing spec field kind must be str, "
                     "got %.200s", Py_TYPE(v)->tp_name);
        return -1;
    }
    for (int k = 1; k < FRAMING_KIND_COUNT; k++) {
        if (PyUnicode_CompareWithASCIIString(v, framing_kind_name[k]) == 0) {
            *out = (uint8_t)k;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown framing kind %R", v);
    return -1;
}

int
iocp_framing_from_py(PyObject *spec, struct framing *out)
{
    memset(out, 0, sizeof *out);
    PyObject *meth = PyObject_GetAttrString(spec, "_spec");
    if (meth == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "framing must be an iocport framing spec such as "
                     "LengthPrefixed(4), got %.200s", Py_TYPE(spec)->tp_name);
        return -1;
    }
    PyObject *d = PyObject_CallNoArgs(meth);
    Py_DECREF(meth);
    if (d == NULL)
        return -1;
    int rc = -1;
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError,
                     "%.200s._spec() must return a dict, got %.200s",
                     Py_TYPE(spec)->tp_name, Py_TYPE(d)->tp_name);
        goto done;
    }
    uint64_t hdr_size, size, max_size;
    if (spec_kind(d, &out->kind) < 0 ||
        spec_field_u64(d, "hdr_size", &hdr_size) < 0 ||
        spec_field_bool(d, "big_endian", &out->big_endian) < 0 ||
        spec_field_bool(d, "hdr_included", &out->hdr_included) < 0 ||
        spec_field_u64(d, "size", &size) < 0 ||
        spec_field_u64(d, "max_size", &max_size) < 0)
        goto done;
    PyObject *delim = spec_item(d, "delim");
    if (delim == NULL && PyErr_Occurred())
        goto done;
    if (delim != NULL && !PyBytes_Check(delim)) {
        PyErr_Format(PyExc_TypeError,
                     "framing spec field delim must be bytes, got %.200s",
                     Py_TYPE(delim)->tp_name);
        goto done;
    }
    Py_ssize_t dlen = delim != NULL ? PyBytes_GET_SIZE(delim) : 0;
    if (dlen > (Py_ssize_t)sizeof out->delim) {
        PyErr_SetString(PyExc_ValueError, "delimiter must be 1 to 8 bytes");
        goto done;
    }
    if (dlen > 0)
        memcpy(out->delim, PyBytes_AS_STRING(delim), (size_t)dlen);
    out->delim_len = (uint8_t)dlen;
    out->hdr_size = sat8(hdr_size);
    out->size = size;
    out->max_size = max_size;
    if (out->kind == FRAMING_HTTP) {
        /* The limits, by their names in HTTP_LIMITS (lib/http.h); absent
         * ones keep their defaults. */
        out->http = http_limits_default;
#define HTTP_LIMIT_FROM_SPEC(name, dflt, doc)                                 \
        {                                                                     \
            PyObject *v = spec_item(d, #name);                                \
            if ((v == NULL && PyErr_Occurred()) ||                            \
                (v != NULL && spec_u64(v, #name, &out->http.name) < 0))       \
                goto done;                                                    \
        }
        HTTP_LIMITS(HTTP_LIMIT_FROM_SPEC)
#undef HTTP_LIMIT_FROM_SPEC
        out->max_size = out->http.max_body;
        uint64_t ms;
        if (spec_field_u64(d, "header_timeout_ms", &ms) < 0)
            goto done;
        out->http_header_ms = ms > INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)ms;
    } else if (out->kind == FRAMING_RESP) {
        /* The limits, as lib/resp.h names them; absent ones: Redis's. */
        resp_limits_default(&out->resp);
        uint64_t v;
        const char *names[] = {"max_bulk", "max_args", "max_inline", "max_depth"};
        for (int i = 0; i < 4; i++) {
            PyObject *item = spec_item(d, names[i]);
            if (item == NULL && PyErr_Occurred())
                goto done;
            if (item == NULL)
                continue;
            if (spec_u64(item, names[i], &v) < 0)
                goto done;
            if (i == 0)
                out->resp.max_bulk = v;
            else if (i == 1)
                out->resp.max_args = v;
            else if (i == 2)
                out->resp.max_inline = v > SIZE_MAX ? SIZE_MAX : (size_t)v;
            else
                out->resp.max_depth = v > 1000 ? 1000 : (unsigned)v;
        }
        out->max_size = out->resp.max_bulk;
        if (spec_field_bool(d, "client", &out->resp_client) < 0)
            goto done;
    }
    const char *err = framing_check(out);
    if (err != NULL) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    rc = 0;
done:
    Py_DECREF(d);
    return rc;
}

/* ---- Framer ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    struct framing f;
    PyObject *spec;       /* the spec it was made from, for repr */
    uint8_t *buf;         /* buffered partial message: buf[0..len) */
    size_t len;
    size_t cap;
    size_t scanned;       /* delimiter search resumes here */
    int error;            /* sticky framing status (< 0) once one occurred */
    int busy;             /* inside feed(): refuse re-entry */
} FramerObject;

/* Drop a buffer this large once it empties rather than keep it around. */
#define FRAMER_KEEP_CAP (64 * 1024)

static PyObject *
framer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"spec", NULL};
    PyObject *spec;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Framer", kwlist, &spec))
        return NULL;
    struct framing f;
    if (iocp_framing_from_py(spec, &f) < 0)
        return NULL;
    if (f.kind == FRAMING_HTTP || f.kind == FRAMING_RESP) {
        PyErr_Format(PyExc_ValueError, "Framer frames byte streams; %s are "
                     "framed by a server with that framing",
                     f.kind == FRAMING_HTTP ? "HTTP requests" : "RESP commands");
        return NULL;
    }
    FramerObject *self = (FramerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->f = f;
    self->spec = Py_NewRef(spec);
    return (PyObject *)self;
}

static int
framer_traverse(FramerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->spec);
    return 0;
}

static int
framer_clear(FramerObject *self)
{
    Py_CLEAR(self->spec);
    return 0;
}

static void
framer_dealloc(FramerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    framer_clear(self);
    PyMem_Free(self->buf);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Raise FramingError for `status`; its `messages` is `msgs` (the whole
 * messages framed before the bad frame in this feed()), or a new empty list
 * when msgs is NULL.  Framer cannot be subclassed, so Py_TYPE(self) is the
 * class that holds the module state. */
static void
framer_fail(FramerObject *self, int status, PyObject *msgs)
{
    iocp_state *st = PyType_GetModuleState(Py_TYPE(self));
    if (st == NULL)
        return;
    PyObject *exc = PyObject_CallFunction((PyObject *)st->FramingError, "s",
                                          framing_strerror(status));
    if (exc == NULL)
        return;
    PyObject *list = msgs != NULL ? Py_NewRef(msgs) : PyList_New(0);
    if (list == NULL || PyObject_SetAttrString(exc, "messages", list) < 0) {
        Py_XDECREF(list);
        Py_DECREF(exc);
        return;
    }
    Py_DECREF(list);
    PyErr_SetObject((PyObject *)st->FramingError, exc);
    Py_DECREF(exc);
}

/* Shared with the other incremental parsers of the binding (objects.h). */
int
iocp_buf_append(uint8_t **buf, size_t *len, size_t *cap, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return -1;
    size_t extra = (size_t)view.len;
    int rc = 0;
    if (extra > *cap - *len) {
        size_t want = *len + extra;
        size_t n = *cap ? *cap : 256;
        while (n < want)
            n = n > (size_t)PY_SSIZE_T_MAX / 2 ? want : n * 2;
        uint8_t *grown = extra > (size_t)PY_SSIZE_T_MAX - *len
                             ? NULL : PyMem_Realloc(*buf, n);
        if (grown == NULL) {
            PyErr_NoMemory();
            rc = -1;
        } else {
            *buf = grown;
            *cap = n;
        }
    }
    if (rc == 0 && extra > 0) {
        memcpy(*buf + *len, view.buf, extra);
        *len += extra;
    }
    PyBuffer_Release(&view);
    return rc;
}

static PyObject *
framer_feed(FramerObject *self, PyObject *data)
{
    if (self->error) {
        framer_fail(self, self->error, NULL);
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Framer.feed() re-entered");
        return NULL;
    }
    if (iocp_buf_append(&self->buf, &self->len, &self->cap, data) < 0)
        return NULL;

    PyObject *msgs = PyList_New(0);
    if (msgs == NULL)
        return NULL;
    self->busy = 1;
    size_t pos = 0;
    int ok = 0;
    for (;;) {
        struct frame fr;
        int st = framing_next(&self->f, self->buf + pos, self->len - pos,
                              self->scanned, &fr);
        if (st == FRAME_NEED) {
            self->scanned = fr.scanned;
            ok = 1;
            break;
        }
        if (st != FRAME_OK) {
            /* The messages before the bad frame go out on the exception. */
            self->error = st;
            framer_fail(self, st, msgs);
            break;
        }
        PyObject *m = PyBytes_FromStringAndSize(
            (const char *)self->buf + pos + fr.off, (Py_ssize_t)fr.len);
        if (m == NULL)
            break;
        int r = PyList_Append(msgs, m);
        Py_DECREF(m);
        if (r < 0)
            break;
        pos += fr.consumed;
        self->scanned = 0;
    }
    self->busy = 0;
    /* Drop the consumed bytes (even on MemoryError, to stay in step with the
     * stream); after a framing error drop everything. */
    if (self->error)
        pos = self->len;
    if (pos > 0) {
        self->len -= pos;
        memmove(self->buf, self->buf + pos, self->len);
    }
    if (self->len == 0 && self->cap > FRAMER_KEEP_CAP) {
        PyMem_Free(self->buf);
        self->buf = NULL;
        self->cap = 0;
    }
    if (!ok)
        Py_CLEAR(msgs);
    return msgs;
}

static PyObject *
framer_wrap(FramerObject *self, PyObject *payload)
{
    Py_buffer view;
    if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint8_t hdr[8], trl[8];
    size_t hl, tl;
    PyObject *res = NULL;
    if (framing_wrap(&self->f, (size_t)view.len, hdr, &hl, trl, &tl) != 0) {
        if (self->f.kind == FRAMING_FIXED)
            PyErr_Format(PyExc_ValueError,
                         "payload must be exactly %llu bytes, got %zd",
                         (unsigned long long)self->f.size, view.len);
        else
            PyErr_Format(PyExc_ValueError,
                         "payload of %zd bytes does not fit a %d-byte "
                         "length header", view.len, (int)self->f.hdr_size);
        goto done;
    }
    if ((size_t)view.len > (size_t)PY_SSIZE_T_MAX - hl - tl) {
        PyErr_NoMemory();
        goto done;
    }
    res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(hl + (size_t)view.len + tl));
    if (res == NULL)
        goto done;
    char *p = PyBytes_AS_STRING(res);
    memcpy(p, hdr, hl);
    if (view.len > 0)
        memcpy(p + hl, view.buf, (size_t)view.len);
    memcpy(p + hl + (size_t)view.len, trl, tl);
done:
    PyBuffer_Release(&view);
    return res;
}

static PyObject *
framer_get_pending(FramerObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->len);
}

static PyObject *
framer_get_spec(FramerObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->spec);
}

static PyObject *
framer_repr(FramerObject *self)
{
    return PyUnicode_FromFormat("<Framer %R pending=%zu%s>", self->spec,
                                self->len, self->error ? " failed" : "");
}

static PyMethodDef framer_methods[] = {
    {"feed", (PyCFunction)framer_feed, METH_O,
     "feed($self, data, /)\n--\n\n"
     "Add bytes from the stream; return the whole messages now complete, as\n"
     "a list of bytes (payloads only).  The partial rest stays buffered.\n"
     "On a framing error (message too big, bad header) raise FramingError,\n"
     "a ValueError whose messages attribute lists the whole messages this\n"
     "call framed before the bad frame.  The Framer is then unusable: every\n"
     "later feed() raises the same error, with messages == []."},
    {"wrap", (PyCFunction)framer_wrap, METH_O,
     "wrap($self, payload, /)\n--\n\n"
     "Return payload framed for sending (header or delimiter added).\n"
     "ValueError if it cannot be framed (too long for the length header,\n"
     "or not exactly the size of a FixedSize framing)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef framer_getset[] = {
    {"pending", (getter)framer_get_pending, NULL,
     "Number of buffered bytes not yet part of a whole message.", NULL},
    {"spec", (getter)framer_get_spec, NULL,
     "The framing spec this Framer was made from.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot framer_slots[] = {
    {Py_tp_doc,
     "Framer(spec)\n--\n\n"
     "Incremental message framer for an iocport framing spec\n"
     "(LengthPrefixed, Delimited, FixedSize): feed() stream bytes to get\n"
     "whole messages, wrap() payloads to send them."},
    {Py_tp_new, framer_new},
    {Py_tp_dealloc, framer_dealloc},
    {Py_tp_traverse, framer_traverse},
    {Py_tp_clear, framer_clear},
    {Py_tp_repr, framer_repr},
    {Py_tp_methods, framer_methods},
    {Py_tp_getset, framer_getset},
    {0, NULL},
};

static PyType_Spec framer_spec = {
    .name = "iocport._iocport.Framer",
    .basicsize = sizeof(FramerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = framer_slots,
};

int
iocp_framer_add_types(PyObject *module, iocp_state *st)
{
    st->FramerType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &framer_spec, NULL);
    if (st->FramerType == NULL ||
        PyModule_AddObjectRef(module, "Framer", (PyObject *)st->FramerType) < 0)
        return -1;
    st->FramingError = iocp_new_error(
        st, "iocport._iocport.FramingError",
        "Raised by Framer.feed() on a framing error (a message over max_size,\n"
        "a bad length header); an iocport.Error and a ValueError.  messages:\n"
        "the whole messages (bytes) that call framed before the bad frame, in\n"
        "order.",
        PyExc_ValueError);
    if (st->FramingError == NULL ||
        PyModule_AddObjectRef(module, "FramingError",
                              (PyObject *)st->FramingError) < 0)
        return -1;
    return 0;
}
