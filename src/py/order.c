/* order.c - the order of answers (the API and the design in order.h). */
#include "py/order.h"

#include <errno.h>
#include <string.h>

int64_t
order_push(ConnObject *o, struct conn *c, uint8_t flags)
{
    struct answer_queue *q = o->aq;
    if (q == NULL) {
        q = o->aq = PyMem_Calloc(1, sizeof *q);
        if (q == NULL)
            return -1;
    }
    if (q->n == q->cap) {   /* double, unwrapping the ring */
        uint32_t ncap = q->cap ? q->cap * 2 : 4;
        struct slot *ns = PyMem_Malloc(ncap * sizeof *ns);
        if (ns == NULL)
            return -1;
        for (uint32_t i = 0; i < q->n; i++)
            ns[i] = *slot_at(q, i);
        PyMem_Free(q->s);
        q->s = ns;
        q->cap = ncap;
        q->head = 0;
    }
    *slot_at(q, q->n) = (struct slot){.flags = flags};
    q->n++;
    conn_hold(c);   /* the connection stays for its answer */
    return (int64_t)(q->first + q->n - 1);
}

void
order_drop(ConnObject *o, struct conn *c)
{
    struct answer_queue *q = o->aq;
    if (q == NULL)
        return;
    for (uint32_t i = 0; i < q->n; i++) {
        struct slot *s = slot_at(q, i);
        Py_CLEAR(s->resp);
        Py_CLEAR(s->file);
        Py_CLEAR(s->cb);
        if (c != NULL)
            conn_unhold(c);
    }
    q->first += q->n;
    q->n = 0;
}

void
order_free(ConnObject *o)
{
    if (o->aq == NULL)
        return;
    order_drop(o, NULL);
    Py_CLEAR(o->aq->xfer_cb);
    PyMem_Free(o->aq->s);
    PyMem_Free(o->aq);
    o->aq = NULL;
}

struct slot *
order_owed(ConnObject *o, uint64_t seq)
{
    struct answer_queue *q = o->aq;
    if (q == NULL || seq < q->first || seq - q->first >= q->n)
        return NULL;
    return slot_at(q, (uint32_t)(seq - q->first));
}

int
order_answered(ConnObject *o, uint64_t seq)
{
    struct slot *s = order_owed(o, seq);
    return s == NULL || (s->flags & (ORDER_DONE | ORDER_STREAM));
}


void
order_pop(ConnObject *o)
{
    struct answer_queue *q = o->aq;
    q->head = (q->head + 1) & (q->cap - 1);
    q->n--;
    q->first++;
    if (o->c != NULL)
        conn_unhold(o->c);
}

int
order_sent(int rc)
{
    if (rc == -ENOMEM) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;   /* (-EPIPE, -ENOBUFS: closing, the answer is lost with it) */
}

static PyObject *xfer_done(PyObject *self, PyObject *args);
static PyMethodDef xfer_done_def = {
    "_file_body_sent", xfer_done, METH_VARARGS,
    "A file body of an answer is sent: the answers after it go on."};

/* A file body: the answers after it wait until it is all sent. */
static int
start_xfer(ConnObject *o, struct slot *s)
{
    struct answer_queue *q = o->aq;
    PyObject *done = PyCFunction_NewEx(&xfer_done_def, (PyObject *)o, NULL);
    if (done == NULL || iocp_send_file(s->file, o->c, s->foff, (long long)s->fcount,
                                       done) < 0) {
        Py_XDECREF(done);
        conn_close(o->c, 0);   /* its length was promised: cut it off */
        return -1;
    }
    Py_DECREF(done);
    q->xfer = 1;
    q->xfer_close = (s->flags & ORDER_THEN_CLOSE) != 0;
    q->xfer_cb = s->cb;
    s->cb = NULL;
    return 0;
}

/* The bytes of a slot's `resp`: bytes, or a stream's bytearray. */
static const char *
resp_bytes(PyObject *resp, size_t *len)
{
    if (PyByteArray_Check(resp)) {
        *len = (size_t)PyByteArray_GET_SIZE(resp);
        return PyByteArray_AS_STRING(resp);
    }
    *len = (size_t)PyBytes_GET_SIZE(resp);
    return PyBytes_AS_STRING(resp);
}

int
order_flush(ConnObject *o)
{
    struct answer_queue *q = o->aq;
    int rc = 0;
    while (q->n != 0 && (slot_at(q, 0)->flags & (ORDER_DONE | ORDER_STREAM)) &&
           !q->xfer) {
        struct slot *head = slot_at(q, 0);
        if (!(head->flags & ORDER_DONE)) {   /* a stream, live from now */
            PyObject *resp = head->resp;
            head->resp = NULL;
            size_t n = 0;
            const char *p = resp != NULL ? resp_bytes(resp, &n) : NULL;
            if (o->c != NULL && n != 0 &&
                order_sent(conn_send(o->c, p, n, 0, NULL)) < 0)
                rc = -1;
            Py_XDECREF(resp);
            return rc;
        }
        struct slot s = *head;
        *head = (struct slot){0};
        order_pop(o);
        if (o->c != NULL) {
            size_t n = 0;
            const char *p = s.resp != NULL ? resp_bytes(s.resp, &n) : NULL;
            if (n != 0 && order_sent(conn_send(o->c, p, n, 0, NULL)) < 0)
                rc = -1;
            else if (s.file != NULL && start_xfer(o, &s) < 0)
                rc = -1;
            else if (s.file == NULL && (s.flags & ORDER_THEN_CLOSE))
                conn_close(o->c, 1);
        }
        Py_XDECREF(s.resp);
        Py_XDECREF(s.file);
        Py_XDECREF(s.cb);
    }
    return rc;
}

static PyObject *
xfer_done(PyObject *self, PyObject *args)
{
    ConnObject *o = (ConnObject *)self;
    PyObject *n, *err;
    if (!PyArg_ParseTuple(args, "OO", &n, &err))
        return NULL;
    struct answer_queue *q = o->aq;
    if (q == NULL)
        Py_RETURN_NONE;
    PyObject *cb = q->xfer_cb;
    q->xfer_cb = NULL;
    q->xfer = 0;
    if (o->c != NULL && err != Py_None)
        conn_close(o->c, 0);   /* short: the peer must not wait for the rest */
    else if (o->c != NULL && q->xfer_close)
        conn_close(o->c, 1);
    int rc = order_flush(o);
    if (cb != NULL) {
        PyObject *r = PyObject_CallFunctionObjArgs(cb, n, err, NULL);
        Py_DECREF(cb);
        if (r == NULL)
            return NULL;   /* (logged by the send_file completion) */
        Py_DECREF(r);
    }
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

int
order_put(ConnObject *o, struct slot *s, const void *p, size_t n)
{
    struct answer_queue *q = o->aq;
    if (n == 0)
        return 0;
    if (s == slot_at(q, 0) && !q->xfer && s->resp == NULL)
        return o->c != NULL ? order_sent(conn_send(o->c, p, n, 0, NULL)) : 0;
    if (s->resp == NULL && (s->resp = PyByteArray_FromStringAndSize(NULL, 0)) == NULL)
        return -1;
    Py_ssize_t at = PyByteArray_GET_SIZE(s->resp);
    if (PyByteArray_Resize(s->resp, at + (Py_ssize_t)n) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(s->resp) + at, p, n);
    return 0;
}

