/* file.c - the File type: overlapped reads, writes, appends and syncs of
 * a regular file, run by a server's workers (io_uring operations, or the
 * epoll engine's thread pool), each reporting to a callback called under
 * the GIL on the worker, batched with the messages of the same turn.
 *
 * Lifetimes: a request holds a reference to its File (and the File to its
 * server), and a write's Py_buffer stays acquired until the completion, so
 * the kernel never writes into or reads from freed memory.  close() closes
 * the descriptor once the last request in flight has completed. */
#include "py/objects.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    struct file f;
    PyObject *server;            /* the ServerObject running the requests */
    struct server *srv;
    PyObject *logger;
    PyObject *close_cb;
    long pending;                /* requests submitted, not yet completed */
    int closing;                 /* close() called */
    int fd_open;
    int lock_ok;
} FileObject;

typedef struct {
    struct file_req r;           /* first: the core's view */
    FileObject *file;
    PyObject *callback;
    PyObject *rbytes;            /* read: the bytes object read into */
    Py_buffer view;              /* write: the caller's buffer */
    int has_view;
} FileReq;

static int
file_traverse(FileObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->server);
    Py_VISIT(self->logger);
    Py_VISIT(self->close_cb);
    return 0;
}

static int
file_clear(FileObject *self)
{
    Py_CLEAR(self->server);
    Py_CLEAR(self->logger);
    Py_CLEAR(self->close_cb);
    return 0;
}

/* Close the descriptor if still open (nothing is in flight: see the header
 * comment): 0, or the errno close(2) reported.  Linux releases the
 * descriptor even then, so it is never closed again. */
static int
close_fd(FileObject *self)
{
    if (!self->fd_open)
        return 0;
    self->fd_open = 0;
    return close(self->f.fd) == 0 ? 0 : errno;
}

static void
file_dealloc(FileObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)close_fd(self);  /* requests hold references: none is in flight */
    if (self->lock_ok)
        pthread_mutex_destroy(&self->f.lock);
    file_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyObject *
iocp_file_new(PyTypeObject *type, PyObject *server, struct server *srv,
              PyObject *logger, int fd, unsigned long long append_off)
{
    FileObject *self = (FileObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->f.fd = fd;
    if (pthread_mutex_init(&self->f.lock, NULL) != 0) {
        Py_DECREF(self);   /* lock_ok is 0: dealloc leaves the lock alone */
        return PyErr_NoMemory();
    }
    self->lock_ok = 1;
    self->f.windex = server_pick_worker(srv);
    self->f.append_off = append_off;
    self->fd_open = 1;
    self->server = Py_NewRef(server);
    self->srv = srv;
    self->logger = Py_NewRef(logger);
    return (PyObject *)self;
}

static void
run_callback(FileObject *self, PyObject *cb, PyObject *a, PyObject *b, int nargs)
{
    PyObject *args[2] = {a, b};
    PyObject *r = PyObject_Vectorcall(cb, args, (size_t)nargs, NULL);
    if (r == NULL)
        iocp_log_exception(self->logger, PyUnicode_FromFormat(
            "file callback raised (fd %d)", self->f.fd));
    Py_XDECREF(r);
}

/* Close the descriptor and report like every other operation:
 * callback(None, None), or callback(None, error) with close(2)'s errno. */
static void
finish_close(FileObject *self)
{
    int e = close_fd(self);
    PyObject *cb = self->close_cb;
    self->close_cb = NULL;
    if (cb == NULL)
        return;
    PyObject *err = e ? iocp_oserror(e) : Py_NewRef(Py_None);
    if (err == NULL)
        iocp_log_exception(self->logger, PyUnicode_FromString(
            "building a file close completion failed"));
    else
        run_callback(self, cb, Py_None, err, 2);   /* as sync(): no count */
    Py_XDECREF(err);
    Py_DECREF(cb);
}

void
iocp_file_done(struct file_req *r)
{
    FileReq *q = (FileReq *)r;
    FileObject *self = q->file;
    PyObject *result = NULL, *err = Py_None;

    if (r->res < 0) {
        int e = (int)-r->res;
        err = iocp_oserror(e);
        result = Py_NewRef(Py_None);
    } else if (r->op == FILE_READ) {
        if ((size_t)r->res == r->len)
            result = Py_NewRef(q->rbytes);
        else
            result = PyBytes_FromStringAndSize(PyBytes_AS_STRING(q->rbytes),
                                               (Py_ssize_t)r->res);
    } else if (r->op == FILE_WRITE) {
        result = PyLong_FromLong(r->res);
    } else {
        result = Py_NewRef(Py_None);
    }
    if (q->callback != NULL) {
        if (result == NULL || err == NULL)
            iocp_log_exception(self->logger, PyUnicode_FromString(
                "building a file completion failed"));
        else
            run_callback(self, q->callback, result, err, 2);
    }
    if (err != Py_None)
        Py_XDECREF(err);
    Py_XDECREF(result);
    if (q->has_view)
        PyBuffer_Release(&q->view);
    Py_XDECREF(q->rbytes);
    Py_XDECREF(q->callback);
    if (--self->pending == 0 && self->closing)
        finish_close(self);
    PyMem_RawFree(q);
    Py_DECREF(self);
}

static int
check_cb(PyObject *cb, int required)
{
    if ((cb == Py_None && !required) || PyCallable_Check(cb))
        return 0;
    PyErr_Format(PyExc_TypeError, "callback must be callable%s, got %.100s",
                 required ? "" : " or None", Py_TYPE(cb)->tp_name);
    return -1;
}

static int
check_offset(PyObject *v, unsigned long long *out)
{
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "offset must be an int, got %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    *out = PyLong_AsUnsignedLongLong(v);
    if (*out == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "offset must be >= 0");
        return -1;
    }
    return 0;
}

static FileReq *
new_req(FileObject *self, int op, PyObject *cb)
{
    if (self->closing) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on closed file");
        return NULL;
    }
    FileReq *q = PyMem_RawCalloc(1, sizeof(*q));
    if (q == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    q->r.f = &self->f;
    q->r.op = (uint8_t)op;
    q->r.py = q;
    /* Started by a handler or callback of a connection: a reply may come
     * from its callback, so a half-closed connection waits for it. */
    q->r.hold = server_current_conn(self->srv);
    if (q->r.hold != NULL)
        conn_hold(q->r.hold);
    q->file = (FileObject *)Py_NewRef(self);
    q->callback = cb == Py_None ? NULL : Py_NewRef(cb);
    return q;
}

static void
drop_req(FileReq *q)
{
    if (q->r.hold != NULL)
        conn_unhold(q->r.hold);
    if (q->has_view)
        PyBuffer_Release(&q->view);
    Py_XDECREF(q->rbytes);
    Py_XDECREF(q->callback);
    Py_DECREF(q->file);
    PyMem_RawFree(q);
}

/* Submit; returns the offset the operation works at (for an append: where
 * it lands, assigned at submission), or NULL with an exception. */
static PyObject *
submit(FileObject *self, FileReq *q)
{
    self->pending++;
    int rc = server_file_submit(self->srv, &q->r);
    uint64_t off = q->r.off;   /* read before the request can complete */
    if (rc < 0) {
        self->pending--;
        drop_req(q);
        if (rc == -EPIPE) {
            PyErr_SetString(PyExc_RuntimeError,
                            "the server is not running; start() it first");
        } else {
            errno = -rc;
            PyErr_SetFromErrno(PyExc_OSError);
        }
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(off);
}

static PyObject *
file_read(FileObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"offset", "size", "callback", NULL};
    PyObject *offset, *cb;
    Py_ssize_t size;
    unsigned long long off;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnO:read", kwlist,
                                     &offset, &size, &cb))
        return NULL;
    if (check_offset(offset, &off) < 0 || check_cb(cb, 1) < 0)
        return NULL;
    if (size < 0)
        return PyErr_Format(PyExc_ValueError, "size must be >= 0, got %zd", size);
    FileReq *q = new_req(self, FILE_READ, cb);
    if (q == NULL)
        return NULL;
    q->rbytes = PyBytes_FromStringAndSize(NULL, size);
    if (q->rbytes == NULL) {
        drop_req(q);
        return NULL;
    }
    q->r.buf = PyBytes_AS_STRING(q->rbytes);
    q->r.len = (size_t)size;
    q->r.off = off;
    return submit(self, q);
}

static PyObject *
file_write(FileObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "offset", "callback", NULL};
    PyObject *data, *offset = Py_None, *cb = Py_None;
    unsigned long long off = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:write", kwlist,
                                     &data, &offset, &cb))
        return NULL;
    if ((offset != Py_None && check_offset(offset, &off) < 0) ||
        check_cb(cb, 0) < 0)
        return NULL;
    FileReq *q = new_req(self, FILE_WRITE, cb);
    if (q == NULL)
        return NULL;
    if (PyObject_GetBuffer(data, &q->view, PyBUF_SIMPLE) < 0) {
        drop_req(q);
        PyErr_Format(PyExc_TypeError,
                     "data must be bytes, bytearray or memoryview, got %.100s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    q->has_view = 1;
    q->r.buf = q->view.buf;
    q->r.len = (size_t)q->view.len;
    q->r.off = off;
    q->r.append = offset == Py_None;
    return submit(self, q);
}

static PyObject *
file_sync(FileObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"callback", "data_only", NULL};
    PyObject *cb = Py_None;
    int data_only = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$p:sync", kwlist,
                                     &cb, &data_only))
        return NULL;
    if (check_cb(cb, 0) < 0)
        return NULL;
    FileReq *q = new_req(self, data_only ? FILE_FDATASYNC : FILE_FSYNC, cb);
    if (q == NULL)
        return NULL;
    return submit(self, q);
}

static PyObject *
file_close(FileObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"callback", NULL};
    PyObject *cb = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:close", kwlist, &cb))
        return NULL;
    if (check_cb(cb, 0) < 0)
        return NULL;
    if (self->closing)
        Py_RETURN_NONE;
    self->closing = 1;
    if (cb != Py_None)
        self->close_cb = Py_NewRef(cb);
    if (self->pending == 0)
        finish_close(self);
    Py_RETURN_NONE;
}

IOCP_AWAITABLE_METHOD(file_read_async, "file_read")
IOCP_AWAITABLE_METHOD(file_write_async, "file_write")
IOCP_AWAITABLE_METHOD(file_sync_async, "file_sync")
IOCP_AWAITABLE_METHOD(file_close_async, "file_close")

static PyObject *
file_get_fd(FileObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->fd_open ? self->f.fd : -1);
}

static PyObject *
file_get_closed(FileObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->closing);
}

static PyObject *
file_get_pending(FileObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->pending);
}

static PyObject *
file_get_append_offset(FileObject *self, void *Py_UNUSED(closure))
{
    pthread_mutex_lock(&self->f.lock);
    unsigned long long off = self->f.append_off;
    pthread_mutex_unlock(&self->f.lock);
    return PyLong_FromUnsignedLongLong(off);
}

static PyObject *
file_repr(FileObject *self)
{
    return PyUnicode_FromFormat("<iocport.File fd=%d%s>", self->f.fd,
                                self->closing ? " closed" : "");
}

static PyMethodDef file_methods[] = {
    {"read", (PyCFunction)(void (*)(void))file_read, METH_VARARGS | METH_KEYWORDS,
     "read($self, /, offset, size, callback)\n--\n\n"
     "Read up to size bytes at offset; callback(data, error) gets the bytes\n"
     "(shorter at the end of the file) or error, an OSError."},
    {"write", (PyCFunction)(void (*)(void))file_write, METH_VARARGS | METH_KEYWORDS,
     "write($self, /, data, offset=None, callback=None)\n--\n\n"
     "Write data at offset, or append it when offset is None (appends land\n"
     "in the order they were issued).  Returns the offset it is written at.\n"
     "callback(nbytes, error) when done."},
    {"sync", (PyCFunction)(void (*)(void))file_sync, METH_VARARGS | METH_KEYWORDS,
     "sync($self, /, callback=None, *, data_only=False)\n--\n\n"
     "fsync (or fdatasync) the file; callback(None, error)."},
    {"close", (PyCFunction)(void (*)(void))file_close, METH_VARARGS | METH_KEYWORDS,
     "close($self, /, callback=None)\n--\n\n"
     "No new operations; the descriptor is closed once those in flight have\n"
     "completed, then callback(None, None) runs, or callback(None, error) with\n"
     "error an OSError if close(2) failed."},
    {"read_async", (PyCFunction)(void (*)(void))file_read_async,
     METH_VARARGS | METH_KEYWORDS,
     "read_async($self, /, offset, size)\n--\n\n"
     "Coroutine: read(), awaited: the bytes read (shorter at the end of the\n"
     "file), or raises the OSError."},
    {"write_async", (PyCFunction)(void (*)(void))file_write_async,
     METH_VARARGS | METH_KEYWORDS,
     "write_async($self, /, data, offset=None)\n--\n\n"
     "Coroutine: write(), awaited: the number of bytes written, or raises\n"
     "the OSError.  offset None appends, in the order of the calls."},
    {"sync_async", (PyCFunction)(void (*)(void))file_sync_async,
     METH_VARARGS | METH_KEYWORDS,
     "sync_async($self, /, *, data_only=False)\n--\n\n"
     "Coroutine: sync(), awaited; raises the OSError."},
    {"close_async", (PyCFunction)(void (*)(void))file_close_async,
     METH_VARARGS | METH_KEYWORDS,
     "close_async($self, /)\n--\n\n"
     "Coroutine: close(), awaited: returns once the operations in flight\n"
     "have completed and the descriptor is closed; raises the OSError of\n"
     "close(2)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef file_getset[] = {
    {"fd", (getter)file_get_fd, NULL, "The descriptor, or -1 once closed.", NULL},
    {"closed", (getter)file_get_closed, NULL, "True once close() was called.", NULL},
    {"pending", (getter)file_get_pending, NULL, "Operations in flight.", NULL},
    {"append_offset", (getter)file_get_append_offset, NULL,
     "Where the next append lands.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot file_slots[] = {
    {Py_tp_doc,
     "An open file whose operations run natively on the server's workers\n"
     "(io_uring operations; on epoll, a small native thread pool), never in\n"
     "Python's executor; from Server.open_file() or Server.adopt_file().\n"
     "\n"
     "Callbacks run with the GIL held on a worker, batched with messages:\n"
     "callback(result, error), result the bytes read, the number written,\n"
     "or None (sync, close), error None; on failure (None, error), error an\n"
     "OSError with its errno.  The server must be started first."},
    {Py_tp_dealloc, file_dealloc},
    {Py_tp_traverse, file_traverse},
    {Py_tp_clear, file_clear},
    {Py_tp_repr, file_repr},
    {Py_tp_methods, file_methods},
    {Py_tp_getset, file_getset},
    {0, NULL},
};

static PyType_Spec file_spec = {
    .name = "iocport.File",
    .basicsize = sizeof(FileObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = file_slots,
};

/* ---- send_file ----------------------------------------------------------- */

typedef struct {
    struct xfer x;               /* first: the core's view */
    PyObject *file;
    PyObject *callback;
} XferReq;

int
iocp_range_args(PyObject *offset_o, PyObject *count_o,
                unsigned long long *offset, long long *count)
{
    if (offset_o != NULL) {
        if (!PyLong_Check(offset_o) || PyBool_Check(offset_o)) {
            PyErr_SetString(PyExc_TypeError, "offset must be an int");
            return -1;
        }
        *offset = PyLong_AsUnsignedLongLong(offset_o);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "offset must be >= 0");
            return -1;
        }
    }
    if (count_o != NULL && count_o != Py_None) {
        if (!PyLong_Check(count_o) || PyBool_Check(count_o)) {
            PyErr_SetString(PyExc_TypeError, "count must be an int or None");
            return -1;
        }
        *count = PyLong_AsLongLong(count_o);
        if (*count == -1 && PyErr_Occurred())
            return -1;
        if (*count < 0) {
            PyErr_SetString(PyExc_ValueError, "count must be >= 0 or None");
            return -1;
        }
    }
    return 0;
}

int
iocp_file_range(PyObject *file, unsigned long long offset, long long *count)
{
    FileObject *fo = (FileObject *)file;
    struct stat st;
    if (fo->closing) {
        PyErr_SetString(PyExc_ValueError, "send_file() of a closed file");
        return -1;
    }
    if (fstat(fo->f.fd, &st) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    unsigned long long size = (unsigned long long)st.st_size;
    if (offset > size) {
        PyErr_Format(PyExc_ValueError, "offset %llu is past the end of the "
                     "file (%llu bytes)", offset, size);
        return -1;
    }
    if (*count < 0)
        *count = (long long)(size - offset);
    if ((unsigned long long)*count > size - offset) {
        PyErr_Format(PyExc_ValueError, "range %llu+%lld is past the end of "
                     "the file (%llu bytes)", offset, *count, size);
        return -1;
    }
    return 0;
}

int
iocp_send_file(PyObject *file, struct conn *c, unsigned long long offset,
               long long count, PyObject *callback)
{
    FileObject *fo = (FileObject *)file;
    if (iocp_file_range(file, offset, &count) < 0)
        return -1;
    XferReq *q = PyMem_RawCalloc(1, sizeof(*q));
    if (q == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    q->x.r.f = &fo->f;
    q->x.r.hold = c;     /* its callback may still reply: see new_req() */
    conn_hold(c);
    q->x.off = offset;
    q->x.end = offset + (unsigned long long)count;
    q->x.py = q;
    q->file = Py_NewRef(file);
    q->callback = callback == Py_None ? NULL : Py_NewRef(callback);
    fo->pending++;   /* close() waits for the transfer's reads too */
    int rc = conn_send_file(c, &q->x);
    if (rc < 0) {
        fo->pending--;
        conn_unhold(c);
        Py_DECREF(q->file);
        Py_XDECREF(q->callback);
        PyMem_RawFree(q);
        if (rc == -EBUSY)
            PyErr_SetString(PyExc_RuntimeError, "a send_file() is already "
                            "under way on this connection");
        else if (rc == -ENOMEM)
            PyErr_NoMemory();
        else
            PyErr_SetString(PyExc_ConnectionError, "the connection is closed");
        return -1;
    }
    return 0;
}

void
iocp_send_file_done(struct xfer *x)
{
    XferReq *q = (XferReq *)x;
    FileObject *fo = (FileObject *)q->file;
    if (q->callback != NULL) {
        PyObject *n = PyLong_FromUnsignedLongLong(x->queued);
        PyObject *err = Py_None;
        if (x->err)
            err = iocp_oserror(x->err);
        if (n == NULL || err == NULL)
            iocp_log_exception(fo->logger, PyUnicode_FromString(
                "building a send_file completion failed"));
        else
            run_callback(fo, q->callback, n, err, 2);
        Py_XDECREF(n);
        if (err != Py_None)
            Py_XDECREF(err);
        Py_DECREF(q->callback);
    }
    if (--fo->pending == 0 && fo->closing)
        finish_close(fo);
    Py_DECREF(q->file);
    PyMem_RawFree(q);
}

int
iocp_file_add_types(PyObject *module, iocp_state *st)
{
    st->FileType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &file_spec, NULL);
    if (st->FileType == NULL || PyModule_AddType(module, st->FileType) < 0)
        return -1;
    return 0;
}
