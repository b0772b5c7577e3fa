/* bridge.c - the native half of the asyncio layer (iocport/_aio.py): the
 * hand-off of a server's events from its workers to an asyncio loop, and
 * the loop's pass over them.
 *
 * Workers: the _Bridge object is the server's message handler.  Calling it
 * appends (kind, conn, msg) to `pending`, a flat list of triples, and
 * writes the eventfd the loop watches only when no wake-up is pending
 * (`signalled`), so a worker's turn of many messages costs one wake-up and
 * no Python frame.  The other events (open, eof, close) come through
 * push() from _aio.py's trampolines.
 *
 * Loop: drain() takes the whole list and runs each message's coroutine
 * eagerly, here in C: a message whose connection has nothing suspended
 * calls the handler and sends None into the coroutine (PyIter_Send, which
 * reports a return without raising StopIteration); one that finishes is
 * handed back to the core's backpressure count at once (conn_held_done).
 * Everything else goes to _aio.py: `suspended(conn, msg, coro, value)` for
 * a coroutine that awaited, `failed(conn, kind, exc)` for one that raised,
 * `slow(kind, conn, arg)` for any other event.  During a pass the host
 * Task is current (host_enter .. host_leave; see _aio.py's _Host: what a
 * handler awaits may ask for its Task); a handler that ends and leaves the
 * host referenced has it retired.  All of it under the GIL. */
#include "py/objects.h"

#include <errno.h>
#include <stddef.h>
#include <structmember.h>
#include <sys/eventfd.h>

/* The kinds of events, as _aio.py reads them from the module. */
enum { EV_MSG, EV_OPEN, EV_EOF, EV_CLOSE, EV_KINDS };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;   /* bridge_call: the object is a handler */
    PyObject *handler;           /* the message handler, or None */
    PyObject *busy;              /* dict: conn -> its suspended state */
    PyObject *aborted;           /* set: conns whose coroutine raised */
    PyObject *slow, *suspended, *failed;   /* _aio.py's paths */
    PyObject *new_host, *retire;           /* ... and its host Task's */
    PyObject *host;              /* the Task handlers start as, or NULL */
    PyObject *loop;              /* the loop it wakes, or NULL */
    PyObject *enter, *leave, *current;     /* asyncio.tasks' _enter_task,
                                              _leave_task, current_task */
    PyObject *cancelled;         /* asyncio.CancelledError */
    PyObject *pending;           /* list: kind, conn, arg, ... (workers) */
    PyObject *taken;             /* list: the batch drain() works on */
    PyObject *kinds[EV_KINDS];   /* the kinds as ints */
    PyTypeObject *conn_type;     /* Connection: what a conn must be */
    int fd;                      /* the eventfd, or -1 */
    int signalled;               /* a wake-up is pending */
    int draining;
} BridgeObject;

static int
push(BridgeObject *b, int kind, PyObject *conn, PyObject *arg)
{
    PyObject *list = b->pending;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (PyList_Append(list, b->kinds[kind]) < 0 ||
        PyList_Append(list, conn) < 0 ||
        PyList_Append(list, arg) < 0) {
        /* No memory: no part of a triple may stay. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyList_SetSlice(list, n, PyList_GET_SIZE(list), NULL) < 0)
            PyErr_Clear();   /* (shrinking does not allocate) */
        PyErr_Restore(type, value, tb);
        return -1;
    }
    if (!b->signalled && b->fd >= 0) {
        b->signalled = 1;
        if (eventfd_write(b->fd, 1) < 0 && errno != EAGAIN) {
            b->signalled = 0;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    return 0;
}

/* On a worker: bridge(conn, msg), the server's message handler. */
static PyObject *
bridge_call(PyObject *self, PyObject *const *args, size_t nargsf,
            PyObject *kwnames)
{
    BridgeObject *b = (BridgeObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL ||
        !Py_IS_TYPE(args[0], b->conn_type) ||
        (!PyBytes_Check(args[1]) && iocp_request_size(args[1]) < 0))
        return PyErr_Format(PyExc_TypeError, "_Bridge takes (conn, msg): a "
                            "Connection and bytes (or a Request)");
    if (push(b, EV_MSG, args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bridge_push_m(BridgeObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "push() takes (kind, conn, arg)");
    long kind = PyLong_AsLong(args[0]);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    /* (messages come through the call, which checks them) */
    if (kind <= EV_MSG || kind >= EV_KINDS)
        return PyErr_Format(PyExc_ValueError, "push(): no event kind %ld "
                            "(open, eof and close only)", kind);
    if (!Py_IS_TYPE(args[1], self->conn_type))
        return PyErr_Format(PyExc_TypeError, "push(): conn must be a "
                            "Connection, got %s", Py_TYPE(args[1])->tp_name);
    if (push(self, (int)kind, args[1], args[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* A message's coroutine ended: it no longer counts toward backpressure.
 * (A Connection and bytes or a Request: bridge_call let nothing else in.) */
static void
handled(PyObject *conn, PyObject *msg)
{
    struct conn *c = ((ConnObject *)conn)->c;
    Py_ssize_t n = PyBytes_Check(msg) ? PyBytes_GET_SIZE(msg)
                                      : iocp_request_size(msg);
    if (c != NULL)
        conn_held_done(c, (size_t)n);
}

/* Call one of _aio.py's paths; an exception there is a bug of ours:
 * reported as unraisable, and the pass goes on. */
static void
call_back(PyObject *fn, PyObject *const *args, size_t n)
{
    PyObject *r = PyObject_Vectorcall(fn, args, n, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable(fn);
    Py_XDECREF(r);
}

/* The raised exception, normalised with its traceback, taken (new ref). */
static PyObject *
take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* The message's coroutine (or the plain handler) raised.  0, or -1 when
 * it was not an Exception (nor CancelledError): a KeyboardInterrupt or
 * SystemExit goes on up, as it does from any asyncio callback. */
static int
message_failed(BridgeObject *b, PyObject *conn)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception) &&
        !PyErr_ExceptionMatches(b->cancelled))
        return -1;
    PyObject *exc = take_exception();
    if (exc == NULL)
        return 0;
    PyObject *args[3] = {conn, b->kinds[EV_MSG], exc};
    call_back(b->failed, args, 3);
    Py_DECREF(exc);
    return 0;
}

/* Run one message eagerly (conn has nothing suspended), as the host Task.
 * 0, or -1 with an exception that must go on up. */
static int
run_message(BridgeObject *b, PyObject *conn, PyObject *msg)
{
    PyObject *host = b->host;
    Py_ssize_t refs = host != NULL ? Py_REFCNT(host) : 0;
    PyObject *args[2] = {conn, msg};
    PyObject *r = PyObject_Vectorcall(b->handler, args, 2, NULL);
    int rc = 0;
    if (r == NULL) {
        rc = message_failed(b, conn);
    } else if (!PyCoro_CheckExact(r)) {   /* a plain function: done */
        Py_DECREF(r);
        handled(conn, msg);
    } else {
        PyObject *value = NULL;
        PySendResult s = PyIter_Send(r, Py_None, &value);
        if (s == PYGEN_NEXT) {   /* it awaited: the host goes on with it */
            PyObject *sargs[4] = {conn, msg, r, value};
            call_back(b->suspended, sargs, 4);
            Py_DECREF(value);
            Py_DECREF(r);
            return 0;
        }
        Py_DECREF(r);
        if (s == PYGEN_RETURN) {
            Py_DECREF(value);
            handled(conn, msg);
        } else {
            rc = message_failed(b, conn);
        }
    }
    /* Ended here: if what it left behind still holds the host (a stored
     * current_task()), that Task is its own now: park another. */
    if (rc == 0 && host != NULL && host == b->host && Py_REFCNT(host) > refs)
        call_back(b->retire, NULL, 0);
    return rc;
}

/* What is left of a batch when an exception goes on up: back to the front
 * of pending, for the next pass. */
static void
put_back(BridgeObject *b, Py_ssize_t from, Py_ssize_t n)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *rest = PyList_GetSlice(b->taken, from, n);
    if (rest == NULL || PyList_SetSlice(b->pending, 0, 0, rest) < 0)
        PyErr_WriteUnraisable((PyObject *)b);   /* lost: no memory */
    Py_XDECREF(rest);
    PyErr_Restore(type, value, tb);
}

/* Whether a message of conn may run here: nothing of conn is suspended,
 * and none of its coroutines raised.  1, 0, or -1 on an error. */
static int
runs_here(BridgeObject *b, PyObject *conn)
{
    int in = 0;
    if (PyDict_GET_SIZE(b->busy) > 0 &&
        (in = PyDict_Contains(b->busy, conn)) != 0)
        return in < 0 ? -1 : 0;
    if (PySet_GET_SIZE(b->aborted) > 0 &&
        (in = PySet_Contains(b->aborted, conn)) != 0)
        return in < 0 ? -1 : 0;
    return 1;
}

/* One pass over what is queued; 0, or -1 with an exception to raise. */
static int
drain_pass(BridgeObject *self)
{
    while (PyList_GET_SIZE(self->pending) > 0) {
        PyObject *batch = self->pending;   /* swap: workers append to the
                                              other list meanwhile */
        self->pending = self->taken;
        self->taken = batch;
        Py_ssize_t n = PyList_GET_SIZE(batch), i;
        int failed = 0;
        for (i = 0; i < n; i += 3) {
            PyObject *kind = PyList_GET_ITEM(batch, i);
            PyObject *conn = PyList_GET_ITEM(batch, i + 1);
            PyObject *arg = PyList_GET_ITEM(batch, i + 2);
            int here = kind == self->kinds[EV_MSG] ? runs_here(self, conn) : 0;
            if (here < 0) {
                failed = 1;
                break;
            }
            if (here && run_message(self, conn, arg) < 0) {
                failed = 1;
                i += 3;      /* that one ran */
                break;
            }
            if (!here) {
                PyObject *args[3] = {kind, conn, arg};
                call_back(self->slow, args, 3);
            }
        }
        if (failed)
            put_back(self, i, n);
        if (PyList_SetSlice(batch, 0, n, NULL) < 0) {
            if (!failed)
                PyErr_WriteUnraisable((PyObject *)self);
            else
                PyErr_Clear();   /* keep the first error */
        }
        if (failed)
            return -1;
    }
    return 0;
}

static int
call2(PyObject *fn, PyObject *a, PyObject *b)
{
    PyObject *args[2] = {a, b};
    PyObject *r = PyObject_Vectorcall(fn, args, 2, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Make the host Task current (parking one first if there is none); the
 * task that was current, stepped aside (finish() inside serve()'s Task),
 * in *outer (a new reference), else NULL.  0, or -1 with an exception. */
static int
host_enter(BridgeObject *b, PyObject **outer)
{
    *outer = NULL;
    if (b->loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_Bridge: not attached to a loop");
        return -1;
    }
    if (b->host == NULL) {
        PyObject *r = PyObject_CallNoArgs(b->new_host);   /* set_host()s */
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        if (b->host == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "_Bridge: no host Task");
            return -1;
        }
    }
    PyObject *cur = PyObject_CallOneArg(b->current, b->loop);
    if (cur == NULL)
        return -1;
    if (cur != Py_None && call2(b->leave, b->loop, cur) < 0) {
        Py_DECREF(cur);
        return -1;
    }
    if (call2(b->enter, b->loop, b->host) < 0) {
        if (cur != Py_None && call2(b->enter, b->loop, cur) < 0)
            PyErr_WriteUnraisable((PyObject *)b);
        Py_DECREF(cur);
        return -1;
    }
    if (cur != Py_None)
        *outer = cur;
    else
        Py_DECREF(cur);
    return 0;
}

/* Undo host_enter(): the host (the one current now) leaves, `outer`
 * (stolen) comes back.  Keeps the exception being raised, if any. */
static int
host_leave(BridgeObject *b, PyObject *outer)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int rc = call2(b->leave, b->loop, b->host);
    if (outer != NULL && rc == 0)
        rc = call2(b->enter, b->loop, outer);
    Py_XDECREF(outer);
    if (type != NULL) {
        if (rc < 0)
            PyErr_WriteUnraisable((PyObject *)b);
        PyErr_Restore(type, value, tb);
    }
    return rc;
}

static PyObject *
bridge_begin_m(BridgeObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *outer;
    if (host_enter(self, &outer) < 0)
        return NULL;
    return outer != NULL ? outer : Py_NewRef(Py_None);
}

static PyObject *
bridge_end_m(BridgeObject *self, PyObject *outer)
{
    if (host_leave(self, outer == Py_None ? NULL : Py_NewRef(outer)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bridge_drain_m(BridgeObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->draining)
        Py_RETURN_NONE;   /* a pass is under way: it takes what came */
    if (self->fd >= 0) {
        eventfd_t v;
        if (eventfd_read(self->fd, &v) < 0 && errno != EAGAIN)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* Cleared after the read: a worker that appends from here on wakes
     * the loop again, and what came before is taken below. */
    self->signalled = 0;
    if (PyList_GET_SIZE(self->pending) == 0)
        Py_RETURN_NONE;
    PyObject *outer;
    if (host_enter(self, &outer) < 0)
        return NULL;
    self->draining = 1;
    int rc = drain_pass(self);
    self->draining = 0;
    if (host_leave(self, outer) < 0 || rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bridge_attach_m(BridgeObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "attach() takes (fd, loop)");
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "attach(): no descriptor %ld", fd);
    self->fd = (int)fd;
    self->signalled = 0;
    Py_XSETREF(self->loop, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyObject *
bridge_detach_m(BridgeObject *self, PyObject *Py_UNUSED(ignored))
{
    self->fd = -1;   /* (the loop stays: what finishes on it runs there) */
    Py_RETURN_NONE;
}

static PyObject *
bridge_set_host_m(BridgeObject *self, PyObject *task)
{
    Py_XSETREF(self->host, task == Py_None ? NULL : Py_NewRef(task));
    Py_RETURN_NONE;
}

static PyObject *
bridge_get_idle(BridgeObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(!self->draining &&
                           PyList_GET_SIZE(self->pending) == 0);
}

/* owner.<name>, into *out (a new reference); 0 or -1. */
static int
owner_attr(PyObject *owner, const char *name, PyObject **out)
{
    *out = PyObject_GetAttrString(owner, name);
    return *out == NULL ? -1 : 0;
}

static PyObject *
bridge_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"owner", "handler", "cancelled", NULL};
    PyObject *owner, *handler, *cancelled;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO", kwlist, &owner,
                                     &handler, &cancelled))
        return NULL;
    BridgeObject *self = (BridgeObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    self->vectorcall = bridge_call;
    self->conn_type = (PyTypeObject *)Py_NewRef(
        ((iocp_state *)PyType_GetModuleState(type))->ConnectionType);
    self->handler = Py_NewRef(handler);
    self->cancelled = Py_NewRef(cancelled);
    if (owner_attr(owner, "busy", &self->busy) < 0 ||
        owner_attr(owner, "aborted", &self->aborted) < 0 ||
        owner_attr(owner, "_event", &self->slow) < 0 ||
        owner_attr(owner, "_suspended", &self->suspended) < 0 ||
        owner_attr(owner, "_failed", &self->failed) < 0 ||
        owner_attr(owner, "_new_host", &self->new_host) < 0 ||
        owner_attr(owner, "_retire_host", &self->retire) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (!PyDict_CheckExact(self->busy) || !PyAnySet_CheckExact(self->aborted)) {
        Py_DECREF(self);
        return PyErr_Format(PyExc_TypeError,
                            "_Bridge: owner.busy must be a dict, aborted a set");
    }
    PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
    if (tasks == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    int bad = owner_attr(tasks, "_enter_task", &self->enter) < 0 ||
              owner_attr(tasks, "_leave_task", &self->leave) < 0 ||
              owner_attr(tasks, "current_task", &self->current) < 0;
    Py_DECREF(tasks);
    self->pending = PyList_New(0);
    self->taken = PyList_New(0);
    if (bad || self->pending == NULL || self->taken == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    for (int k = 0; k < EV_KINDS; k++) {
        if ((self->kinds[k] = PyLong_FromLong(k)) == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

static int
bridge_traverse(BridgeObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->handler);
    Py_VISIT(self->busy);
    Py_VISIT(self->aborted);
    Py_VISIT(self->slow);
    Py_VISIT(self->suspended);
    Py_VISIT(self->failed);
    Py_VISIT(self->cancelled);
    Py_VISIT(self->pending);
    Py_VISIT(self->taken);
    Py_VISIT(self->conn_type);
    Py_VISIT(self->retire);
    Py_VISIT(self->new_host);
    Py_VISIT(self->loop);
    Py_VISIT(self->enter);
    Py_VISIT(self->leave);
    Py_VISIT(self->current);
    Py_VISIT(self->host);
    return 0;
}

static int
bridge_clear(BridgeObject *self)
{
    Py_CLEAR(self->handler);
    Py_CLEAR(self->busy);
    Py_CLEAR(self->aborted);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->suspended);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->cancelled);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->taken);
    Py_CLEAR(self->conn_type);
    Py_CLEAR(self->retire);
    Py_CLEAR(self->new_host);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->enter);
    Py_CLEAR(self->leave);
    Py_CLEAR(self->current);
    Py_CLEAR(self->host);
    for (int k = 0; k < EV_KINDS; k++)
        Py_CLEAR(self->kinds[k]);
    return 0;
}

static void
bridge_dealloc(BridgeObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    bridge_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef bridge_methods[] = {
    {"push", (PyCFunction)(void (*)(void))bridge_push_m, METH_FASTCALL,
     "push($self, kind, conn, arg, /)\n--\n\n"
     "Queue an event for the loop (on a worker, the GIL held); wake the\n"
     "loop unless a wake-up is pending."},
    {"drain", (PyCFunction)bridge_drain_m, METH_NOARGS,
     "drain($self, /)\n--\n\n"
     "On the loop: read the eventfd, then handle every queued event."},
    {"set_host", (PyCFunction)bridge_set_host_m, METH_O,
     "set_host($self, task, /)\n--\n\n"
     "The Task handlers start as (None: none yet); one that a finished\n"
     "handler left referenced is retired (owner._retire_host())."},
    {"attach", (PyCFunction)(void (*)(void))bridge_attach_m, METH_FASTCALL,
     "attach($self, fd, loop, /)\n--\n\n"
     "Wake `loop` through the eventfd `fd`."},
    {"detach", (PyCFunction)bridge_detach_m, METH_NOARGS,
     "detach($self, /)\n--\n\n"
     "Write the eventfd no more (it is about to close)."},
    {"begin", (PyCFunction)bridge_begin_m, METH_NOARGS,
     "begin($self, /)\n--\n\n"
     "Make the host Task current for handlers about to start; returns the\n"
     "task that was current (stepped aside), or None, for end()."},
    {"end", (PyCFunction)bridge_end_m, METH_O,
     "end($self, outer, /)\n--\n\n"
     "Undo begin(): the host leaves, `outer` (what begin() returned) is\n"
     "current again."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef bridge_getset[] = {
    {"idle", (getter)bridge_get_idle, NULL,
     "True when nothing is queued and no pass is under way.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef bridge_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(BridgeObject, vectorcall),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot bridge_slots[] = {
    {Py_tp_doc,
     "_Bridge(owner, handler, cancelled)\n--\n\n"
     "The native hand-off of iocport's asyncio layer (iocport/_aio.py)."},
    {Py_tp_new, bridge_new},
    {Py_tp_dealloc, bridge_dealloc},
    {Py_tp_traverse, bridge_traverse},
    {Py_tp_clear, bridge_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_methods, bridge_methods},
    {Py_tp_getset, bridge_getset},
    {Py_tp_members, bridge_members},
    {0, NULL},
};

static PyType_Spec bridge_spec = {
    .name = "iocport._iocport._Bridge",
    .basicsize = sizeof(BridgeObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = bridge_slots,
};

int
iocp_bridge_add_types(PyObject *module, iocp_state *st)
{
    (void)st;
    PyObject *type = PyType_FromModuleAndSpec(module, &bridge_spec, NULL);
    if (type == NULL)
        return -1;
    int rc = PyModule_AddObjectRef(module, "_Bridge", type);
    Py_DECREF(type);
    if (rc < 0 ||
        PyModule_AddIntConstant(module, "_EV_MSG", EV_MSG) < 0 ||
        PyModule_AddIntConstant(module, "_EV_OPEN", EV_OPEN) < 0 ||
        PyModule_AddIntConstant(module, "_EV_EOF", EV_EOF) < 0 ||
        PyModule_AddIntConstant(module, "_EV_CLOSE", EV_CLOSE) < 0)
        return -1;
    return 0;
}
