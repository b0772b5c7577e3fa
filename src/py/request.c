/* request.c - HTTP for handlers: the Request type (one whole request, as
 * the core framed and parsed it), respond() (conn.respond and
 * req.respond), and the order of the answers: each connection's requests
 * are answered in the order they came, whichever is answered first and
 * from whichever thread; an answer that comes early waits, whole, for
 * those before it.  A request dropped without an answer, or whose handler
 * raised, is answered 500; a request the core refused is answered with
 * its status in its turn.  Everything here runs under the GIL. */
#include "py/order.h"
#include "lib/http_out.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

/* HTTP's slot flags, beside order.h's. */
enum {
    SLOT_HEAD = ORDER_PROTO << 0,    /* a HEAD request: no body goes out */
    SLOT_CLOSE = ORDER_PROTO << 1,   /* not keep-alive: close after it */
    SLOT_HTTP10 = ORDER_PROTO << 2,  /* HTTP/1.0 with keep-alive: say so */
    SLOT_CHUNKED = ORDER_PROTO << 3, /* a stream, chunked */
    SLOT_V10 = ORDER_PROTO << 4,     /* an HTTP/1.0 request (no chunked) */
};

/* A body up to this size goes out in one piece with its head; a larger
 * one after it, from the body object itself when it is bytes. */
#define INLINE_BODY (16 * 1024)

/* ---- writing an answer --------------------------------------------------- */

/* The Date line, formatted once a second (under the GIL: module state). */
static const char *
date_line(iocp_state *st)
{
    int64_t t = (int64_t)time(NULL);
    if (t != st->http_date_sec) {
        http_date_line(t, st->http_date);
        st->http_date_sec = t;
    }
    return st->http_date;
}

/* Header bytes are refused if they could end the line or the field: no
 * CR, LF or NUL in a value, a token for a name. */
static int
valid_name(const char *p, Py_ssize_t n)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    if (n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (!((ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') ||
              (ch != 0 && strchr(tchar, ch) != NULL)))
            return 0;
    }
    return 1;
}

static int
valid_value(const char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\r' || ch == '\n' || ch == 0)
            return 0;
    }
    return 1;
}

static int
name_is(const char *p, Py_ssize_t n, const char *lower)
{
    size_t k = strlen(lower);
    if ((size_t)n != k)
        return 0;
    for (size_t i = 0; i < k; i++)
        if ((p[i] | 0x20) != lower[i])
            return 0;
    return 1;
}

/* bytes or str (ASCII) as a pointer and length; a new reference to what
 * holds them in *keep. */
static int
header_part(PyObject *v, const char *what, const char **p, Py_ssize_t *n,
            PyObject **keep)
{
    if (PyBytes_Check(v)) {
        *keep = Py_NewRef(v);
    } else if (PyUnicode_Check(v)) {
        *keep = PyUnicode_AsEncodedString(v, "latin-1", "strict");
        if (*keep == NULL) {
            PyErr_Format(PyExc_ValueError, "header %s %R is not latin-1", what, v);
            return -1;
        }
    } else {
        PyErr_Format(PyExc_TypeError, "header %s must be bytes or str, got %.100s",
                     what, Py_TYPE(v)->tp_name);
        return -1;
    }
    *p = PyBytes_AS_STRING(*keep);
    *n = PyBytes_GET_SIZE(*keep);
    return 0;
}

/* A growing byte buffer for the head of an answer. */
struct out {
    char *p;
    size_t len, cap;
};

static int
out_put(struct out *o, const void *p, size_t n)
{
    if (o->len + n > o->cap) {
        size_t ncap = o->cap * 2 > o->len + n ? o->cap * 2 : o->len + n + 256;
        char *np = PyMem_Realloc(o->p, ncap);
        if (np == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        o->p = np;
        o->cap = ncap;
    }
    memcpy(o->p + o->len, p, n);
    o->len += n;
    return 0;
}

/* build_head's body_len for a body of unknown length: chunked (HTTP/1.1)
 * or up to the close (HTTP/1.0). */
#define LEN_UNKNOWN ((size_t)-1)

/* The head of an answer into *out: status line, the user's fields, date,
 * content-length (or chunked) and connection.  *close: the connection closes after it
 * (the request did not keep it alive, or the handler said so). */
static int
build_head(iocp_state *st, int status, PyObject *headers, size_t body_len,
           uint8_t flags, struct out *out, int *close)
{
    char line[HTTP_STATUS_LINE_MAX];
    int has_date = 0, said_close = 0;
    if (out_put(out, line, http_status_line(status, line)) < 0)
        return -1;
    if (headers != NULL && headers != Py_None) {
        PyObject *seq = PySequence_Fast(headers, "headers must be a sequence "
                                        "of (name, value) pairs");
        if (seq == NULL)
            return -1;
        Py_ssize_t nh = PySequence_Fast_GET_SIZE(seq);
        for (Py_ssize_t i = 0; i < nh; i++) {
            PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
            PyObject *kn = NULL, *kv = NULL;
            const char *np, *vp;
            Py_ssize_t nn, vn;
            int bad = 0;
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_Format(PyExc_TypeError, "headers must be (name, value) "
                             "pairs, got %.100s", Py_TYPE(pair)->tp_name);
                bad = 1;
            } else if (header_part(PyTuple_GET_ITEM(pair, 0), "name", &np, &nn, &kn) < 0 ||
                       header_part(PyTuple_GET_ITEM(pair, 1), "value", &vp, &vn, &kv) < 0) {
                bad = 1;
            } else if (!valid_name(np, nn)) {
                PyErr_Format(PyExc_ValueError, "invalid header name %R",
                             PyTuple_GET_ITEM(pair, 0));
                bad = 1;
            } else if (!valid_value(vp, vn)) {
                PyErr_Format(PyExc_ValueError, "header value of %R contains "
                             "CR, LF or NUL", PyTuple_GET_ITEM(pair, 0));
                bad = 1;
            } else if (name_is(np, nn, "content-length") ||
                       name_is(np, nn, "transfer-encoding")) {
                PyErr_Format(PyExc_ValueError, "%R is set by respond() from "
                             "the body", PyTuple_GET_ITEM(pair, 0));
                bad = 1;
            } else {
                int conn_field = name_is(np, nn, "connection");
                if (name_is(np, nn, "date"))
                    has_date = 1;
                if (conn_field && vn == 5 && name_is(vp, vn, "close"))
                    said_close = 1;
                /* (a request that closes gets our "connection: close") */
                if (!(conn_field && (flags & SLOT_CLOSE)) &&
                    (out_put(out, np, (size_t)nn) < 0 || out_put(out, ": ", 2) < 0 ||
                     out_put(out, vp, (size_t)vn) < 0 || out_put(out, "\r\n", 2) < 0))
                    bad = 1;
            }
            Py_XDECREF(kn);
            Py_XDECREF(kv);
            if (bad) {
                Py_DECREF(seq);
                return -1;
            }
        }
        Py_DECREF(seq);
    }
    if (!has_date && out_put(out, date_line(st), HTTP_DATE_LINE) < 0)
        return -1;
    if (body_len == LEN_UNKNOWN && (flags & SLOT_V10)) {
        flags |= SLOT_CLOSE;   /* no chunked in HTTP/1.0: the close ends it */
    } else if (body_len == LEN_UNKNOWN && status != 204 && status != 304) {
        if (out_put(out, "transfer-encoding: chunked\r\n", 28) < 0)
            return -1;
    } else if (status != 204 && status != 304) {
        char cl[48];
        int n = snprintf(cl, sizeof cl, "content-length: %zu\r\n", body_len);
        if (out_put(out, cl, (size_t)n) < 0)
            return -1;
    }
    *close = (flags & SLOT_CLOSE) || said_close;
    if ((flags & SLOT_CLOSE) && out_put(out, "connection: close\r\n", 19) < 0)
        return -1;
    if ((flags & SLOT_HTTP10) && !*close &&
        out_put(out, "connection: keep-alive\r\n", 24) < 0)
        return -1;
    return out_put(out, "\r\n", 2);
}

/* A body up to this size goes out in one piece with its head; a larger
 * one after it, from the body object itself when it is bytes. */
#define INLINE_BODY (16 * 1024)

/* The head of request `seq`'s answer into *out; its slot, or NULL with
 * *result False (the connection closed) or NULL (an exception). */
static struct slot *
head_for(iocp_state *st, ConnObject *o, uint64_t seq, int status,
         PyObject *headers, size_t blen, struct out *out, int *close,
         PyObject **result)
{
    *result = NULL;
    if (build_head(st, status, headers, blen, order_owed(o, seq)->flags, out,
                   close) < 0)
        return NULL;
    if (o->c == NULL) {
        *result = Py_NewRef(Py_False);
        return NULL;
    }
    /* (afresh: the headers' iteration may have run other threads) */
    struct slot *s = order_owed(o, seq);
    if (s == NULL || (s->flags & (ORDER_DONE | ORDER_STREAM))) {
        PyErr_SetString(PyExc_RuntimeError, "this request has been answered");
        return NULL;
    }
    return s;
}

/* Answer request `seq` of o: the head, then a body (`view`, `body` its
 * object) or a file's range.  True if it went out or waits its turn,
 * False if the connection is closed. */
static PyObject *
answer_with(iocp_state *st, ConnObject *o, uint64_t seq, int status,
            PyObject *headers, PyObject *body, Py_buffer *view,
            PyObject *file, uint64_t foff, uint64_t fcount, PyObject *cb)
{
    PyObject *result = NULL;
    struct out out = {0};
    int close = 0;
    size_t blen = file != NULL ? (size_t)fcount : (size_t)view->len;
    if (status < 200 || status > 599) {
        PyErr_Format(PyExc_ValueError, "status must be 200 to 599, got %d", status);
        return NULL;
    }
    if (blen != 0 && (status == 204 || status == 304)) {
        PyErr_Format(PyExc_ValueError, "a %d answer has no body", status);
        return NULL;
    }
    struct answer_queue *q = o->aq;
    struct slot *s = head_for(st, o, seq, status, headers, blen, &out, &close,
                              &result);
    if (s == NULL)
        goto done;
    uint32_t i = (uint32_t)(seq - q->first);
    if (s->flags & SLOT_HEAD) {
        blen = 0;
        file = NULL;
    }
    if (i == 0 && !q->xfer && file == NULL) {
        /* Its turn: out now.  Small: one piece, one copy into the send
         * queue; large: the body after the head, by reference if bytes. */
        int rc;
        if (blen <= INLINE_BODY) {
            if (blen != 0 && out_put(&out, view->buf, blen) < 0)
                goto done;
            rc = order_sent(conn_send(o->c, out.p, out.len, 0, NULL));
        } else {
            PyObject *owner = PyBytes_CheckExact(body) ? body : NULL;
            rc = order_sent(conn_send(o->c, out.p, out.len, 0, NULL));
            int r2 = rc < 0 ? 0 : conn_send(o->c, view->buf, blen, 0, owner);
            if (r2 == 1)
                Py_INCREF(owner);   /* given back by d_release once sent */
            if (rc == 0)
                rc = order_sent(r2);
        }
        if (close)
            conn_close(o->c, 1);
        order_pop(o);
        if (rc < 0 || order_flush(o) < 0)
            goto done;
    } else {
        /* Early, or a file: it waits in its slot, whole. */
        size_t inl = file != NULL ? 0 : blen;
        s->resp = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(out.len + inl));
        if (s->resp == NULL)
            goto done;
        memcpy(PyBytes_AS_STRING(s->resp), out.p, out.len);
        if (inl != 0)
            memcpy(PyBytes_AS_STRING(s->resp) + out.len, view->buf, inl);
        s->file = Py_XNewRef(file);
        s->cb = cb != NULL && cb != Py_None ? Py_NewRef(cb) : NULL;
        s->foff = foff;
        s->fcount = fcount;
        s->flags |= ORDER_DONE | (close ? ORDER_THEN_CLOSE : 0);
        if (i == 0 && order_flush(o) < 0)
            goto done;
    }
    result = Py_NewRef(Py_True);
done:
    PyMem_Free(out.p);
    return result;
}

static PyObject *
answer(iocp_state *st, ConnObject *o, uint64_t seq, int status,
       PyObject *headers, PyObject *body)
{
    Py_buffer view = {0};
    if (body != NULL && body != Py_None &&
        PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "body must be bytes, bytearray or "
                     "memoryview, got %.100s", Py_TYPE(body)->tp_name);
        return NULL;
    }
    PyObject *r = answer_with(st, o, seq, status, headers, body, &view, NULL,
                              0, 0, NULL);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return r;
}

/* ---- streaming ----------------------------------------------------------- */

/* The stream of request `seq`, begun and not ended; else NULL with
 * RuntimeError (or *closed set, no exception, if the connection is). */
static struct slot *
live_stream(ConnObject *o, uint64_t seq, int *closed)
{
    struct slot *s = order_owed(o, seq);
    *closed = o->c == NULL;
    if (*closed)
        return NULL;
    if (s == NULL || (s->flags & ORDER_DONE))
        PyErr_SetString(PyExc_RuntimeError, "this answer is complete");
    else if (!(s->flags & ORDER_STREAM))
        PyErr_SetString(PyExc_RuntimeError, "call respond_start() first");
    else
        return s;
    return NULL;
}

static PyObject *
stream_start(iocp_state *st, ConnObject *o, uint64_t seq, int status,
             PyObject *headers, PyObject *length)
{
    size_t blen = LEN_UNKNOWN;
    if (status < 200 || status > 599)
        return PyErr_Format(PyExc_ValueError, "status must be 200 to 599, got %d",
                            status);
    if (length != NULL && length != Py_None) {
        if (!PyLong_Check(length) || PyBool_Check(length))
            return PyErr_Format(PyExc_TypeError, "length must be an int or None");
        unsigned long long v = PyLong_AsUnsignedLongLong(length);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return PyErr_Format(PyExc_ValueError, "length must be >= 0 or None");
        }
        if (v >= (unsigned long long)LEN_UNKNOWN)
            return PyErr_Format(PyExc_ValueError, "length is too large");
        blen = (size_t)v;
    }
    if (status == 204 || status == 304)
        blen = 0;
    struct out out = {0};
    int close = 0;
    PyObject *result = NULL;
    struct slot *s = head_for(st, o, seq, status, headers, blen, &out, &close,
                              &result);
    if (s == NULL)
        goto done;
    s->flags |= ORDER_STREAM | (close ? ORDER_THEN_CLOSE : 0);
    if (blen == LEN_UNKNOWN && !(s->flags & SLOT_V10))
        s->flags |= SLOT_CHUNKED;
    s->left = blen == LEN_UNKNOWN ? UINT64_MAX : blen;
    if (order_put(o, s, out.p, out.len) < 0)
        goto done;
    result = Py_NewRef(Py_True);
done:
    PyMem_Free(out.p);
    return result;
}

static PyObject *
stream_write(ConnObject *o, uint64_t seq, PyObject *data)
{
    int closed;
    struct slot *s = live_stream(o, seq, &closed);
    if (s == NULL)
        return closed ? Py_NewRef(Py_False) : NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "write() expects bytes, bytearray or "
                     "memoryview, got %.100s", Py_TYPE(data)->tp_name);
        return NULL;
    }
    size_t n = (size_t)view.len;
    int rc = 0;
    if (!(s->flags & SLOT_CHUNKED) && s->left != UINT64_MAX) {
        if (n > s->left) {
            PyErr_Format(PyExc_ValueError, "write() of %zu bytes passes the "
                         "length given to respond_start() (%llu bytes left)",
                         n, (unsigned long long)s->left);
            rc = -1;
        } else {
            s->left -= n;
        }
    }
    if (rc == 0 && n != 0 && !(s->flags & SLOT_HEAD)) {
        if (s->flags & SLOT_CHUNKED) {
            char size[24];
            int k = snprintf(size, sizeof size, "%zx\r\n", n);
            rc = order_put(o, s, size, (size_t)k);
            if (rc == 0)
                rc = order_put(o, s, view.buf, n);
            if (rc == 0)
                rc = order_put(o, s, "\r\n", 2);
        } else {
            rc = order_put(o, s, view.buf, n);
        }
    }
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    return Py_NewRef(o->c != NULL ? Py_True : Py_False);
}

static PyObject *
stream_end(ConnObject *o, uint64_t seq)
{
    int closed;
    struct slot *s = live_stream(o, seq, &closed);
    if (s == NULL)
        return closed ? Py_NewRef(Py_False) : NULL;
    if (!(s->flags & SLOT_CHUNKED) && s->left != UINT64_MAX && s->left != 0)
        return PyErr_Format(PyExc_ValueError, "end() with %llu bytes of the "
                            "length given to respond_start() not written",
                            (unsigned long long)s->left);
    if ((s->flags & SLOT_CHUNKED) && !(s->flags & SLOT_HEAD) &&
        order_put(o, s, "0\r\n\r\n", 5) < 0)
        return NULL;
    s->flags |= ORDER_DONE;
    if (s == slot_at(o->aq, 0) && order_flush(o) < 0)
        return NULL;
    return Py_NewRef(o->c != NULL ? Py_True : Py_False);
}

/* ---- Request ------------------------------------------------------------- */

typedef struct {
    PyObject_VAR_HEAD                  /* ob_size: fields[] */
    PyObject *raw;                     /* the request's bytes */
    ConnObject *conn;
    PyObject *headers;                 /* cached tuple of pairs, or NULL */
    uint64_t seq;
    struct http_request r;
    struct http_field fields[1];
} RequestObject;

static PyObject *
span(RequestObject *self, struct http_span s)
{
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->raw) + s.off,
                                     (Py_ssize_t)s.len);
}

static PyObject *req_method(RequestObject *s, void *c) { (void)c; return span(s, s->r.method); }
static PyObject *req_target(RequestObject *s, void *c) { (void)c; return span(s, s->r.target); }
static PyObject *req_path(RequestObject *s, void *c) { (void)c; return span(s, s->r.path); }
static PyObject *req_query(RequestObject *s, void *c) { (void)c; return span(s, s->r.query); }
static PyObject *req_version(RequestObject *s, void *c) { (void)c; return span(s, s->r.version); }
static PyObject *req_body(RequestObject *s, void *c) { (void)c; return span(s, s->r.body); }

static PyObject *
req_keep_alive(RequestObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong((self->r.flags & HTTP_KEEP_ALIVE) != 0);
}

static PyObject *
req_conn(RequestObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef((PyObject *)self->conn);
}

static PyObject *
pairs(RequestObject *self, size_t from, size_t n)
{
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (t == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const struct http_field *f = &self->fields[from + i];
        PyObject *k = span(self, f->name), *v = k ? span(self, f->value) : NULL;
        PyObject *pair = v ? PyTuple_Pack(2, k, v) : NULL;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (pair == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, pair);
    }
    return t;
}

static PyObject *
req_headers(RequestObject *self, void *closure)
{
    (void)closure;
    if (self->headers == NULL)
        self->headers = pairs(self, 0, self->r.nheaders);
    return Py_XNewRef(self->headers);
}

static PyObject *
req_trailers(RequestObject *self, void *closure)
{
    (void)closure;
    return pairs(self, self->r.nheaders, self->r.ntrailers);
}

static PyObject *
req_header(RequestObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2)
        return PyErr_Format(PyExc_TypeError, "header() takes a name and an "
                            "optional default (%zd given)", nargs);
    const char *np;
    Py_ssize_t nn;
    PyObject *keep;
    if (header_part(args[0], "name", &np, &nn, &keep) < 0)
        return NULL;
    const char *raw = PyBytes_AS_STRING(self->raw);
    PyObject *r = NULL;
    for (size_t i = 0; i < self->r.nheaders && r == NULL; i++) {
        const struct http_field *f = &self->fields[i];
        if (f->name.len != (size_t)nn)
            continue;
        size_t k = 0;
        while (k < f->name.len && ((raw[f->name.off + k] | 0x20) == (np[k] | 0x20)))
            k++;
        if (k == f->name.len)
            r = span(self, f->value);
    }
    Py_DECREF(keep);
    if (r == NULL && !PyErr_Occurred())
        r = Py_NewRef(nargs == 2 ? args[1] : Py_None);
    return r;
}

static int
respond_args(PyObject *args, PyObject *kwds, const char *fname, int *status,
             PyObject **headers, PyObject **body)
{
    static char *kwlist[] = {"status", "headers", "body", NULL};
    char fmt[32];
    snprintf(fmt, sizeof fmt, "i|OO:%s", fname);
    *headers = NULL;
    *body = NULL;
    return PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, status,
                                       headers, body) ? 0 : -1;
}

static PyObject *
req_respond(RequestObject *self, PyObject *args, PyObject *kwds)
{
    int status;
    PyObject *headers, *body;
    if (respond_args(args, kwds, "respond", &status, &headers, &body) < 0)
        return NULL;
    if (order_answered(self->conn, self->seq)) {
        PyErr_SetString(PyExc_RuntimeError, "this request has been answered");
        return NULL;
    }
    iocp_state *st = PyType_GetModuleState(Py_TYPE(self));
    return answer(st, self->conn, self->seq, status, headers, body);
}

static PyObject *
req_respond_file(RequestObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"file", "status", "headers", "offset", "count",
                             "callback", NULL};
    PyObject *file, *headers = NULL, *offset_o = NULL, *count_o = Py_None;
    PyObject *cb = Py_None;
    int status = 200;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|iO$OOO:respond_file", kwlist,
                                     &file, &status, &headers, &offset_o,
                                     &count_o, &cb))
        return NULL;
    iocp_state *st = PyType_GetModuleState(Py_TYPE(self));
    if (!PyObject_TypeCheck(file, st->FileType))
        return PyErr_Format(PyExc_TypeError, "respond_file() expects an "
                            "iocport File, got %.100s", Py_TYPE(file)->tp_name);
    if (cb != Py_None && !PyCallable_Check(cb))
        return PyErr_Format(PyExc_TypeError, "callback must be callable or "
                            "None, got %.100s", Py_TYPE(cb)->tp_name);
    unsigned long long offset = 0;
    long long count = -1;
    if (iocp_range_args(offset_o, count_o, &offset, &count) < 0)
        return NULL;
    if (order_answered(self->conn, self->seq)) {
        PyErr_SetString(PyExc_RuntimeError, "this request has been answered");
        return NULL;
    }
    if (iocp_file_range(file, offset, &count) < 0)
        return NULL;
    struct answer_queue *q = self->conn->aq;
    int sends = count > 0 &&
                !(slot_at(q, (uint32_t)(self->seq - q->first))->flags & SLOT_HEAD);
    Py_buffer none = {0};
    PyObject *r = answer_with(st, self->conn, self->seq, status, headers, NULL,
                              &none, count > 0 ? file : NULL, offset,
                              (uint64_t)count, cb);
    if (r == NULL || sends || cb == Py_None)
        return r;
    /* Nothing of the file goes out (HEAD, or an empty range): done now. */
    PyObject *cr = PyObject_CallFunction(cb, "iO", 0, Py_None);
    if (cr == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    Py_DECREF(cr);
    return r;
}

static PyObject *
req_respond_start(RequestObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"status", "headers", "length", NULL};
    int status;
    PyObject *headers = NULL, *length = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|O$O:respond_start", kwlist,
                                     &status, &headers, &length))
        return NULL;
    if (order_answered(self->conn, self->seq)) {
        if (self->conn->c == NULL)
            Py_RETURN_FALSE;
        PyErr_SetString(PyExc_RuntimeError, "this request has been answered");
        return NULL;
    }
    iocp_state *st = PyType_GetModuleState(Py_TYPE(self));
    return stream_start(st, self->conn, self->seq, status, headers, length);
}

static PyObject *
req_write(RequestObject *self, PyObject *data)
{
    return stream_write(self->conn, self->seq, data);
}

static PyObject *
req_end(RequestObject *self, PyObject *Py_UNUSED(ignored))
{
    return stream_end(self->conn, self->seq);
}

/* A request with no answer when its handler raised or it was dropped:
 * 500, so that the ones after it are not held back for ever. */
static void
answer_500(iocp_state *st, ConnObject *o, uint64_t seq)
{
    static const char why[] = "internal server error\n";
    PyObject *body = PyBytes_FromStringAndSize(why, sizeof why - 1);
    PyObject *r = body ? answer(st, o, seq, 500, NULL, body) : NULL;
    Py_XDECREF(body);
    if (r == NULL)
        PyErr_Clear();   /* (no memory: the connection's close drops it) */
    Py_XDECREF(r);
}

static int
req_traverse(RequestObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->conn);
    Py_VISIT(self->headers);
    return 0;
}

static void
req_dealloc(RequestObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    struct slot *owed_slot = self->conn != NULL ? order_owed(self->conn, self->seq) : NULL;
    if (owed_slot != NULL && (owed_slot->flags & ORDER_STREAM) &&
        !(owed_slot->flags & ORDER_DONE) && self->conn->c != NULL) {
        /* a body begun and never ended: its peer must not wait for it */
        conn_close(self->conn->c, 0);
    } else if (self->conn != NULL && !order_answered(self->conn, self->seq)) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        iocp_state *st = PyType_GetModuleState(tp);
        PyObject *msg = PyUnicode_FromFormat(
            "a request on connection %llu was dropped unanswered; answered 500",
            (unsigned long long)self->conn->id);
        if (msg != NULL) {
            iocp_log(st->logger, "warning", msg, NULL);
            Py_DECREF(msg);
        }
        PyErr_Clear();
        answer_500(st, self->conn, self->seq);
        PyErr_Restore(et, ev, tb);
    }
    Py_CLEAR(self->conn);
    Py_CLEAR(self->headers);
    Py_CLEAR(self->raw);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
req_repr(RequestObject *self)
{
    PyObject *m = span(self, self->r.method), *t = m ? span(self, self->r.target) : NULL;
    PyObject *r = t ? PyUnicode_FromFormat("<iocport.Request %S %S>", m, t) : NULL;
    Py_XDECREF(m);
    Py_XDECREF(t);
    return r;
}

static PyGetSetDef req_getset[] = {
    {"method", (getter)req_method, NULL, "The method, as sent: b'GET'.", NULL},
    {"target", (getter)req_target, NULL, "The request target, as sent: b'/a?b=1'.", NULL},
    {"path", (getter)req_path, NULL, "The target's path (b'' for the authority form).", NULL},
    {"query", (getter)req_query, NULL, "The target's query, without '?' (b'' if none).", NULL},
    {"version", (getter)req_version, NULL, "b'HTTP/1.1' or b'HTTP/1.0'.", NULL},
    {"headers", (getter)req_headers, NULL,
     "The header fields: a tuple of (name, value) bytes pairs in arrival order.", NULL},
    {"trailers", (getter)req_trailers, NULL,
     "The trailer fields of a chunked body: (name, value) pairs.", NULL},
    {"body", (getter)req_body, NULL, "The whole body (de-chunked), bytes.", NULL},
    {"keep_alive", (getter)req_keep_alive, NULL,
     "Whether the connection stays open after the answer.", NULL},
    {"conn", (getter)req_conn, NULL, "The connection it came on.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef req_methods[] = {
    {"header", (PyCFunction)(void (*)(void))req_header, METH_FASTCALL,
     "header($self, name, default=None, /)\n--\n\n"
     "The value of the first header field called `name` (bytes or str, any\n"
     "case), or `default`."},
    {"respond", (PyCFunction)(void (*)(void))req_respond, METH_VARARGS | METH_KEYWORDS,
     "respond($self, /, status, headers=(), body=b'')\n--\n\n"
     "Answer this request: the status line, `headers` ((name, value) pairs of\n"
     "bytes or str), date, content-length and connection, then `body`.\n"
     "Answers leave in the order of the requests: an early one waits for\n"
     "those before it.  Any thread.  True, or False if the connection is\n"
     "closed."},
    {"respond_file", (PyCFunction)(void (*)(void))req_respond_file,
     METH_VARARGS | METH_KEYWORDS,
     "respond_file($self, /, file, status=200, headers=(), *, offset=0,\n"
     "             count=None, callback=None)\n--\n\n"
     "Answer this request with a range of an iocport File (from `offset`,\n"
     "`count` bytes or to its end) as the body, streamed by the workers with\n"
     "bounded memory (see Connection.send_file).  The answers after it wait\n"
     "until it is all sent; `callback(nbytes, error)` runs then.  True, or\n"
     "False if the connection is closed."},
    {"respond_start", (PyCFunction)(void (*)(void))req_respond_start,
     METH_VARARGS | METH_KEYWORDS,
     "respond_start($self, /, status, headers=(), *, length=None)\n--\n\n"
     "Begin an answer whose body follows in write() calls and ends with\n"
     "end(): with `length`, exactly that many bytes (content-length);\n"
     "without, chunked (HTTP/1.1) or up to the close (HTTP/1.0).  True, or\n"
     "False if the connection is closed."},
    {"write", (PyCFunction)req_write, METH_O,
     "write($self, data, /)\n--\n\n"
     "The next part of a body begun with respond_start().  Any thread.\n"
     "True, or False if the connection is closed."},
    {"end", (PyCFunction)req_end, METH_NOARGS,
     "end($self, /)\n--\n\n"
     "End a body begun with respond_start(); the answers after it go on.\n"
     "True, or False if the connection is closed."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot req_slots[] = {
    {Py_tp_doc, "A whole HTTP request, given to the handler of a server with\n"
                "HTTP() framing.  Answer it with respond() (or conn.respond())."},
    {Py_tp_dealloc, req_dealloc},
    {Py_tp_traverse, req_traverse},
    {Py_tp_repr, req_repr},
    {Py_tp_getset, req_getset},
    {Py_tp_methods, req_methods},
    {0, NULL},
};

static PyType_Spec req_spec = {
    .name = "iocport._iocport.Request",
    .basicsize = offsetof(RequestObject, fields),
    .itemsize = sizeof(struct http_field),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = req_slots,
};

/* ---- what dispatch.c and connection.c call --------------------------------- */

PyObject *
iocp_http_request(iocp_state *st, ConnObject *o, struct conn *c,
                  const struct entry *e, const struct http_msg *m,
                  const struct http_field *fields)
{
    size_t nf = m->r.nheaders + m->r.ntrailers;
    uint8_t flags = 0;
    if (!(m->r.flags & HTTP_KEEP_ALIVE))
        flags |= SLOT_CLOSE;
    else if (m->r.minor == 0)
        flags |= SLOT_HTTP10;
    if (m->r.minor == 0)
        flags |= SLOT_V10;
    if (m->r.method.len == 4 && memcmp(e->ptr + m->r.method.off, "HEAD", 4) == 0)
        flags |= SLOT_HEAD;
    RequestObject *self = (RequestObject *)st->RequestType->tp_alloc(
        st->RequestType, (Py_ssize_t)nf);
    if (self == NULL)
        return NULL;
    self->raw = PyBytes_FromStringAndSize((const char *)e->ptr, (Py_ssize_t)e->len);
    if (self->raw == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->r = m->r;
    memcpy(self->fields, fields, nf * sizeof *fields);
    int64_t seq = order_push(o, c, flags);
    if (seq < 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->seq = (uint64_t)seq;
    self->conn = (ConnObject *)Py_NewRef((PyObject *)o);
    return (PyObject *)self;
}

void
iocp_http_failed(iocp_state *st, PyObject *req)
{
    RequestObject *self = (RequestObject *)req;
    struct slot *s = order_owed(self->conn, self->seq);
    if (s != NULL && (s->flags & ORDER_STREAM) && !(s->flags & ORDER_DONE) &&
        self->conn->c != NULL)
        conn_close(self->conn->c, 0);   /* its body cannot be ended */
    if (order_answered(self->conn, self->seq))
        return;
    /* (its input has ended: the answer says the connection closes) */
    struct answer_queue *q = self->conn->aq;
    slot_at(q, (uint32_t)(self->seq - q->first))->flags |= SLOT_CLOSE;
    answer_500(st, self->conn, self->seq);
}

void
iocp_http_refused(iocp_state *st, ConnObject *o, struct conn *c,
                  const struct http_msg *m)
{
    char out[HTTP_REFUSAL_MAX];
    size_t n = http_refusal(m->error, date_line(st), out);
    int64_t seq = order_push(o, c, SLOT_CLOSE);
    if (seq < 0) {
        PyErr_Clear();
        conn_close(c, 0);   /* no memory to keep the order: reset */
        return;
    }
    struct answer_queue *q = o->aq;
    struct slot *s = slot_at(q, (uint32_t)(seq - q->first));
    s->resp = PyBytes_FromStringAndSize(out, (Py_ssize_t)n);
    if (s->resp == NULL) {
        PyErr_Clear();
        conn_close(c, 0);
        return;
    }
    s->flags |= ORDER_DONE | ORDER_THEN_CLOSE;
    if (order_flush(o) < 0)
        PyErr_Clear();
}

Py_ssize_t
iocp_request_size(PyObject *o)
{
    /* (each module instance has its own Request type; all share dealloc) */
    if (Py_TYPE(o)->tp_dealloc != (destructor)req_dealloc)
        return -1;
    return PyBytes_GET_SIZE(((RequestObject *)o)->raw);
}

PyObject *
iocp_conn_respond(ConnObject *o, PyObject *args, PyObject *kwds)
{
    int status;
    PyObject *headers, *body;
    if (respond_args(args, kwds, "respond", &status, &headers, &body) < 0)
        return NULL;
    struct answer_queue *q = o->aq;
    uint32_t i = 0;
    while (q != NULL && i < q->n && (slot_at(q, i)->flags & (ORDER_DONE | ORDER_STREAM)))
        i++;
    if (q == NULL || i == q->n) {
        if (o->c == NULL)
            Py_RETURN_FALSE;
        PyErr_SetString(PyExc_RuntimeError, "no request on this connection "
                        "waits for an answer");
        return NULL;
    }
    PyObject *module = PyType_GetModule(Py_TYPE(o));
    if (module == NULL)
        return NULL;
    return answer(iocp_get_state(module), o, q->first + i, status, headers, body);
}

int
iocp_request_add_type(PyObject *module, iocp_state *st)
{
    st->RequestType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &req_spec, NULL);
    if (st->RequestType == NULL)
        return -1;
    return PyModule_AddType(module, st->RequestType);
}
