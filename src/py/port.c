/* port.c - the Python binding of the completion port (lib/port.c): the Port
 * type, the Packet result type (a structseq) and PortClosedError.
 *
 * Threads and the GIL: waits run with the GIL released.  Everything that
 * moves a value in or out of the set port_visit() reports (post, close,
 * drain, port_wait_done/cancel) runs with the GIL held, so the cycle
 * collector always sees a consistent set (see port.h).  leave() may run
 * without it (when a thread exits, below): its hand-off only moves values
 * from the queue to a wait, both in that set, under the port's lock.  A
 * thread inside get() holds a strong reference to the Port, so dealloc
 * never races a wait.
 *
 * Threads that exit: every get registers the calling thread with the port
 * core (port_track, with the module state's pthread key), whose destructor
 * frees the thread's running slot when the OS thread ends, threading.Thread
 * or not.  That is native rather than a Python finalizer (say, on a
 * threading.local value) so that nothing on the thread's way out runs
 * Python code or needs the GIL and a live interpreter.  The core is
 * reference counted, so a thread may exit after its Port was deallocated:
 * dealloc closes the core and drops its values under the GIL, and only the
 * bare C struct waits for the last thread. */
#include "py/module.h"
#include "lib/port.h"

#include <errno.h>
#include <math.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define GET_MANY_LIMIT 4096              /* packets per get_many() call */
#define SIGNAL_SLICE_NS 50000000LL       /* main thread: check signals */

typedef struct {
    PyObject_HEAD
    struct port *port;
    unsigned long main_ident;            /* threading.main_thread().ident */
} PortObject;

/* ---- helpers ------------------------------------------------------------ */

static int64_t
mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Minimal keyword parser for METH_FASTCALL|METH_KEYWORDS: fills out[] (which
 * the caller initialises to NULL = not given) from args and kwnames. */
static int
parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames, const char *const *names, int nnames,
           int nrequired, PyObject **out)
{
    if (nargs > nnames) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most %d arguments (%zd given)", fname,
                     nnames, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        int i;
        for (i = 0; i < nnames; i++)
            if (PyUnicode_CompareWithASCIIString(kw, names[i]) == 0)
                break;
        if (i == nnames) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%U'",
                         fname, kw);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

/* An int (not float, not str) in 0..2**64-1. */
static int
arg_u64(PyObject *v, const char *name, uint64_t *out)
{
    if (v == NULL) {
        *out = 0;
        return 0;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.200s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be in range 0..2**64-1",
                     name);
        return -1;
    }
    *out = u;
    return 0;
}

/* None -> -1 (forever), else a non-negative number of seconds -> ns. */
static int
arg_timeout(PyObject *v, int64_t *out)
{
    if (v == NULL || v == Py_None) {
        *out = -1;
        return 0;
    }
    if (!PyFloat_Check(v) && !PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError,
                     "timeout must be a number or None, not %.200s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    double t = PyFloat_AsDouble(v);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(t) || t < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "timeout must be a non-negative number or None");
        return -1;
    }
    double ns = ceil(t * 1e9);
    *out = ns >= 9.2e18 ? INT64_MAX : (int64_t)ns;
    return 0;
}

static PyObject *
make_packet(iocp_state *st, const struct port_packet *pk)
{
    /* Steals the reference pk->value holds, even on failure. */
    PyObject *key = NULL, *nbytes = NULL;
    PyObject *pkt = PyStructSequence_New(st->PacketType);
    if (pkt == NULL)
        goto fail;
    key = PyLong_FromUnsignedLongLong(pk->key);
    if (key == NULL)
        goto fail;
    nbytes = PyLong_FromUnsignedLongLong(pk->nbytes);
    if (nbytes == NULL)
        goto fail;
    PyStructSequence_SET_ITEM(pkt, 0, key);
    PyStructSequence_SET_ITEM(pkt, 1, nbytes);
    PyStructSequence_SET_ITEM(pkt, 2, (PyObject *)pk->value);
    return pkt;
fail:
    Py_XDECREF(key);
    Py_XDECREF(nbytes);
    Py_XDECREF(pkt);
    Py_DECREF((PyObject *)pk->value);
    return NULL;
}

static void
drop_packets(struct port_packet *pk, int n)
{
    for (int i = 0; i < n; i++)
        Py_DECREF((PyObject *)pk[i].value);
}

/* Release every queued value (with the GIL, outside the port's lock). */
static void
drain_all(struct port *p)
{
    struct port_packet buf[64];
    int n;
    while ((n = port_drain(p, buf, 64)) > 0)
        drop_packets(buf, n);
}

static PyObject *
closed_error(iocp_state *st)
{
    PyErr_SetString((PyObject *)st->PortClosedError, "the port is closed");
    return NULL;
}

/* Wait for up to max packets into out.  Returns the count (>= 1), 0 on
 * timeout (nothing set), -1 with an exception. */
static int
port_take(PortObject *self, iocp_state *st, struct port_packet *out, int max,
          int64_t timeout_ns)
{
    struct port *p = self->port;
    struct port_wait w;
    /* Before waiting, so that a failure leaves no packet to give back. */
    int rc = port_track(st->port_key, p);
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(rc == -ENOMEM ? PyExc_MemoryError
                                         : PyExc_OSError);
        return -1;
    }
    rc = port_wait_init(p, &w, out, max);
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* Poll with the GIL held: a ready packet costs no GIL round trip. */
    rc = port_get(p, &w, 0);
    if (rc == 0 && timeout_ns != 0) {
        int main = PyThread_get_thread_ident() == self->main_ident;
        int64_t deadline = timeout_ns > 0 ? mono_ns() + timeout_ns : 0;
        if (timeout_ns > 0 && deadline < 0)
            deadline = INT64_MAX;
        Py_INCREF(self);
        for (;;) {
            int64_t slice = -1;
            if (timeout_ns > 0) {
                slice = deadline - mono_ns();
                if (slice <= 0)
                    break;
            }
            if (main && (slice < 0 || slice > SIGNAL_SLICE_NS))
                slice = SIGNAL_SLICE_NS;
            Py_BEGIN_ALLOW_THREADS
            rc = port_get(p, &w, slice);
            Py_END_ALLOW_THREADS
            if (rc != 0)
                break;
            /* PEP 475: run handlers; go on waiting unless one raised. */
            if (main && PyErr_CheckSignals() < 0) {
                int left = port_wait_cancel(p, &w);
                drop_packets(out, left);
                Py_DECREF(self);
                return -1;
            }
        }
        Py_DECREF(self);
    }
    int n = port_wait_done(p, &w);   /* may hold a late hand-off */
    if (n > 0)
        return n;
    if (rc == -EPIPE) {
        closed_error(st);
        return -1;
    }
    return 0;
}

/* ---- the Port type ------------------------------------------------------ */

static PyObject *
Port_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"concurrency", NULL};
    PyObject *conc_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:Port", kwlist,
                                     &conc_obj))
        return NULL;
    long conc = 0;
    if (conc_obj != NULL) {
        if (!PyLong_Check(conc_obj) || PyBool_Check(conc_obj)) {
            PyErr_Format(PyExc_TypeError,
                         "concurrency must be an int, not %.200s",
                         Py_TYPE(conc_obj)->tp_name);
            return NULL;
        }
        int overflow = 0;
        conc = PyLong_AsLongAndOverflow(conc_obj, &overflow);
        if (conc == -1 && PyErr_Occurred())
            return NULL;
        if (overflow != 0 || conc < 0 ||
            conc > (long)PORT_MAX_CONCURRENCY) {
            PyErr_SetString(PyExc_ValueError,
                            "concurrency must be in range 0..65536 "
                            "(0 means os.cpu_count())");
            return NULL;
        }
    }
    if (conc == 0) {
        PyObject *os = PyImport_ImportModule("os");
        if (os == NULL)
            return NULL;
        PyObject *n = PyObject_CallMethod(os, "cpu_count", NULL);
        Py_DECREF(os);
        if (n == NULL)
            return NULL;
        conc = n == Py_None ? 1 : PyLong_AsLong(n);
        Py_DECREF(n);
        if (conc == -1 && PyErr_Occurred())
            return NULL;
        if (conc < 1)
            conc = 1;
        if (conc > (long)PORT_MAX_CONCURRENCY)
            conc = PORT_MAX_CONCURRENCY;
    }

    unsigned long main_ident = 0;
    PyObject *threading = PyImport_ImportModule("threading");
    if (threading == NULL)
        return NULL;
    PyObject *mt = PyObject_CallMethod(threading, "main_thread", NULL);
    Py_DECREF(threading);
    if (mt == NULL)
        return NULL;
    PyObject *ident = PyObject_GetAttrString(mt, "ident");
    Py_DECREF(mt);
    if (ident == NULL)
        return NULL;
    if (ident != Py_None)
        main_ident = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    if (PyErr_Occurred())
        return NULL;

    PortObject *self = (PortObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->main_ident = main_ident;
    self->port = port_create((unsigned)conc, 64);
    if (self->port == NULL) {
        PyErr_SetFromErrno(errno == ENOMEM ? PyExc_MemoryError
                                           : PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

struct visit_ctx {
    visitproc visit;
    void *arg;
};

static int
visit_value(void *value, void *arg)
{
    struct visit_ctx *c = arg;
    return c->visit((PyObject *)value, c->arg);
}

static int
Port_traverse(PyObject *op, visitproc visit, void *arg)
{
    PortObject *self = (PortObject *)op;
    int r = visit((PyObject *)Py_TYPE(op), arg);
    if (r)
        return r;
    if (self->port != NULL) {
        struct visit_ctx c = {visit, arg};
        return port_visit(self->port, visit_value, &c);
    }
    return 0;
}

static int
Port_clear(PyObject *op)
{
    PortObject *self = (PortObject *)op;
    if (self->port != NULL)
        drain_all(self->port);
    return 0;
}

static void
Port_dealloc(PyObject *op)
{
    PortObject *self = (PortObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (self->port != NULL) {
        /* Closed, nothing can be queued again: the values go now, under
         * the GIL; threads that waited on the port may still hold the
         * core (port_track) and free it when the last one exits. */
        struct port *p = self->port;
        self->port = NULL;
        port_close(p);
        drain_all(p);
        port_release(p);
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
Port_repr(PyObject *op)
{
    PortObject *self = (PortObject *)op;
    struct port_stats s;
    port_stats(self->port, &s);
    return PyUnicode_FromFormat(
        "<iocport.Port concurrency=%u running=%u waiters=%u queued=%zu%s>",
        s.concurrency, s.running, s.waiters, s.queued,
        s.closed ? " closed" : "");
}

PyDoc_STRVAR(Port_post_doc,
"post($self, /, key=0, nbytes=0, value=None)\n--\n\n"
"Queue a completion packet.  key and nbytes are ints in 0..2**64-1; the\n"
"port holds a reference to value until a get() returns it.  If a thread\n"
"waits and fewer than `concurrency` threads run, the most recent waiter\n"
"receives the packet.  Raises PortClosedError if the port is closed.");

static PyObject *
Port_post(PyObject *op, PyTypeObject *cls, PyObject *const *args,
          Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"key", "nbytes", "value"};
    PyObject *a[3] = {NULL, NULL, NULL};
    if (parse_args("post", args, nargs, kwnames, names, 3, 0, a) < 0)
        return NULL;
    struct port_packet pk;
    if (arg_u64(a[0], "key", &pk.key) < 0 ||
        arg_u64(a[1], "nbytes", &pk.nbytes) < 0)
        return NULL;
    PyObject *value = a[2] ? a[2] : Py_None;
    Py_INCREF(value);
    pk.value = value;
    int rc = port_post(((PortObject *)op)->port, &pk);
    if (rc == 0)
        Py_RETURN_NONE;
    Py_DECREF(value);
    if (rc == -EPIPE)
        return closed_error(PyType_GetModuleState(cls));
    return PyErr_NoMemory();
}

PyDoc_STRVAR(Port_get_doc,
"get($self, /, timeout=None)\n--\n\n"
"Wait for one packet and return it as a Packet (key, nbytes, value).\n"
"timeout is in seconds: None waits forever, 0 only polls.  Raises\n"
"TimeoutError when it expires and PortClosedError if the port is or gets\n"
"closed.  The GIL is released while waiting; signals are handled (Ctrl-C\n"
"interrupts a wait in the main thread).  Waiters are served last in,\n"
"first out, and the caller counts as running until its next get(), its\n"
"leave() or its end (a thread that exits frees its slot).");

static PyObject *
Port_get(PyObject *op, PyTypeObject *cls, PyObject *const *args,
         Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *a[1] = {NULL};
    if (parse_args("get", args, nargs, kwnames, names, 1, 0, a) < 0)
        return NULL;
    int64_t timeout_ns;
    if (arg_timeout(a[0], &timeout_ns) < 0)
        return NULL;
    iocp_state *st = PyType_GetModuleState(cls);
    struct port_packet pk;
    int n = port_take((PortObject *)op, st, &pk, 1, timeout_ns);
    if (n < 0)
        return NULL;
    if (n == 0) {
        PyErr_SetString(PyExc_TimeoutError, "no packet before the timeout");
        return NULL;
    }
    return make_packet(st, &pk);
}

PyDoc_STRVAR(Port_get_many_doc,
"get_many($self, /, max, timeout=None)\n--\n\n"
"Wait for at least one packet and return a list of 1 to max of them\n"
"(at most 4096 per call), in queue order.  When the timeout expires it\n"
"returns [] rather than raising TimeoutError.  Otherwise like get().");

static PyObject *
Port_get_many(PyObject *op, PyTypeObject *cls, PyObject *const *args,
              Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"max", "timeout"};
    PyObject *a[2] = {NULL, NULL};
    if (parse_args("get_many", args, nargs, kwnames, names, 2, 1, a) < 0)
        return NULL;
    if (!PyLong_Check(a[0]) || PyBool_Check(a[0])) {
        PyErr_Format(PyExc_TypeError, "max must be an int, not %.200s",
                     Py_TYPE(a[0])->tp_name);
        return NULL;
    }
    int overflow = 0;
    long max = PyLong_AsLongAndOverflow(a[0], &overflow);
    if (max == -1 && PyErr_Occurred())
        return NULL;
    if (overflow < 0 || (overflow == 0 && max < 1)) {
        PyErr_SetString(PyExc_ValueError, "max must be >= 1");
        return NULL;
    }
    if (overflow > 0 || max > GET_MANY_LIMIT)
        max = GET_MANY_LIMIT;
    int64_t timeout_ns;
    if (arg_timeout(a[1], &timeout_ns) < 0)
        return NULL;
    iocp_state *st = PyType_GetModuleState(cls);

    struct port_packet stackbuf[16];
    struct port_packet *out = stackbuf;
    if (max > 16) {
        out = PyMem_Malloc((size_t)max * sizeof *out);
        if (out == NULL)
            return PyErr_NoMemory();
    }
    PyObject *list = NULL;
    int n = port_take((PortObject *)op, st, out, (int)max, timeout_ns);
    if (n < 0)
        goto done;
    list = PyList_New(n);
    if (list == NULL) {
        drop_packets(out, n);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        PyObject *pkt = make_packet(st, &out[i]);
        if (pkt == NULL) {
            drop_packets(out + i + 1, n - i - 1);
            Py_CLEAR(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, pkt);
    }
done:
    if (out != stackbuf)
        PyMem_Free(out);
    return list;
}

PyDoc_STRVAR(Port_close_doc,
"close($self, /)\n--\n\n"
"Close the port: every waiting get() raises PortClosedError, so do later\n"
"get() and post() calls, and queued packets are dropped (their values\n"
"released).  Idempotent.");

static PyObject *
Port_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PortObject *self = (PortObject *)op;
    port_close(self->port);
    drain_all(self->port);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Port_leave_doc,
"leave($self, /)\n--\n\n"
"The calling thread stops counting as running (call it before a worker\n"
"thread blocks elsewhere for long); the freed slot goes to the most\n"
"recent waiter if packets are queued.  A thread that exits leaves every\n"
"port by itself, as on Windows; calling leave() first is harmless.");

static PyObject *
Port_leave(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    port_leave(((PortObject *)op)->port);
    Py_RETURN_NONE;
}

static PyObject *
Port_enter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(op);
}

static PyObject *
Port_exit(PyObject *op, PyObject *const *Py_UNUSED(args),
          Py_ssize_t Py_UNUSED(nargs))
{
    return Port_close(op, NULL);
}


/* ---- asynchronous gets (Port.get_async) ----------------------------------
 *
 * iocport/_awaitable.py runs the await on the loop; here are its two
 * pieces.  Port._wait_async() takes a queued packet at once (a Packet), or
 * stacks an async wait (port_wait_async in lib/port.h) and returns it as a
 * _PortWait: its eventfd, which the loop watches, is written when a post
 * hands the wait a packet or the port closes; result() then takes it.
 * Async waits do not count as running and the concurrency bound does not
 * hold them back.  A _PortWait holds its Port, so the port outlives it; it
 * has no tp_clear, so the collector never tears down a wait the port may
 * still write to; close() (or dealloc) cancels a wait still in progress (a
 * packet handed to it goes back to the front of the queue), then closes
 * the eventfd. */

typedef struct {
    PyObject_HEAD
    PortObject *port;
    struct port_wait w;
    struct port_packet out;
    int waiting;                         /* w is stacked or holds a packet */
    int efd;                             /* -1 once closed */
} PortWaitObject;

/* Finish the wait if it is in progress (cancel: give back what it holds).
 * Nothing writes the eventfd once the wait is off the port's stacks. */
static void
wait_finish(PortWaitObject *self, int cancel)
{
    if (!self->waiting)
        return;
    self->waiting = 0;
    struct port *p = self->port->port;
    if (cancel)
        drop_packets(&self->out, port_wait_cancel(p, &self->w));
    else
        (void)port_wait_done(p, &self->w);
}

/* Cancel the wait if in progress, then close the eventfd (the caller has
 * stopped watching it). */
static void
wait_close(PortWaitObject *self)
{
    wait_finish(self, 1);
    if (self->efd >= 0)
        (void)close(self->efd);   /* Linux releases it even on EINTR */
    self->efd = -1;
}

static int
PortWait_traverse(PyObject *op, visitproc visit, void *arg)
{
    PortWaitObject *self = (PortWaitObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->port);
    return 0;
}

static void
PortWait_dealloc(PyObject *op)
{
    PortWaitObject *self = (PortWaitObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (self->port != NULL)
        wait_close(self);
    Py_CLEAR(self->port);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
PortWait_result(PyObject *op, PyTypeObject *cls, PyObject *const *Py_UNUSED(args),
                Py_ssize_t nargs, PyObject *kwnames)
{
    PortWaitObject *self = (PortWaitObject *)op;
    if (nargs != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "result() takes no arguments");
        return NULL;
    }
    iocp_state *st = PyType_GetModuleState(cls);
    if (!self->waiting) {
        PyErr_SetString(PyExc_RuntimeError, "the wait is over");
        return NULL;
    }
    int rc = port_wait_poll(self->port->port, &self->w);
    if (rc == 0)
        Py_RETURN_NONE;
    wait_finish(self, 0);
    if (rc < 0)
        return closed_error(st);
    return make_packet(st, &self->out);
}

static PyObject *
PortWait_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    wait_close((PortWaitObject *)op);
    Py_RETURN_NONE;
}

static PyObject *
PortWait_get_fd(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(((PortWaitObject *)op)->efd);
}

static PyMethodDef PortWait_methods[] = {
    {"result", (PyCFunction)(void (*)(void))PortWait_result,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "result($self, /)\n--\n\n"
     "The Packet once handed one (the wait is then over), None while it\n"
     "waits; PortClosedError once the port is closed."},
    {"close", PortWait_close, METH_NOARGS,
     "close($self, /)\n--\n\n"
     "Stop waiting if the wait is not over (a packet handed meanwhile goes\n"
     "back to the front of the queue), then close the eventfd: stop\n"
     "watching it first."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef PortWait_getset[] = {
    {"fd", PortWait_get_fd, NULL,
     "The eventfd written when the wait has a packet or the port closed\n"
     "(-1 once closed).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot PortWait_slots[] = {
    {Py_tp_dealloc, PortWait_dealloc},
    {Py_tp_traverse, PortWait_traverse},
    {Py_tp_methods, PortWait_methods},
    {Py_tp_getset, PortWait_getset},
    {Py_tp_doc, (void *)"A Port.get_async() in progress (iocport's asyncio layer)."},
    {0, NULL},
};

static PyType_Spec PortWait_spec = {
    .name = "iocport._iocport._PortWait",
    .basicsize = sizeof(PortWaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = PortWait_slots,
};

static PyObject *
Port_wait_async(PyObject *op, PyTypeObject *cls, PyObject *const *Py_UNUSED(args),
                Py_ssize_t nargs, PyObject *kwnames)
{
    PortObject *port = (PortObject *)op;
    if (nargs != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "_wait_async() takes no arguments");
        return NULL;
    }
    iocp_state *st = PyType_GetModuleState(cls);
    struct port_packet pk;
    struct port_wait w;
    /* A queued packet costs no eventfd. */
    int rc = port_wait_init(port->port, &w, &pk, 1);
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int n = port_wait_async(port->port, &w, -1);
    (void)port_wait_done(port->port, &w);
    if (n > 0)
        return make_packet(st, &pk);
    if (n == -EPIPE)
        return closed_error(st);
    PortWaitObject *self = PyObject_GC_New(PortWaitObject, st->PortWaitType);
    if (self == NULL)
        return NULL;
    self->port = (PortObject *)Py_NewRef(op);
    self->waiting = 0;
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    rc = port_wait_init(port->port, &self->w, &self->out, 1);
    if (rc < 0) {
        (void)close(self->efd);
        self->efd = -1;
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    rc = port_wait_async(port->port, &self->w, self->efd);
    self->waiting = 1;   /* (finished by dealloc on -EPIPE: holds nothing) */
    PyObject_GC_Track(self);
    if (rc == -EPIPE) {
        Py_DECREF(self);
        return closed_error(st);
    }
    return (PyObject *)self;   /* holding a packet already if rc > 0 */
}

PyDoc_STRVAR(Port_get_async_doc,
"get_async($self, /, timeout=None)\n--\n\n"
"Coroutine: await one packet without blocking the loop (a Packet).\n"
"timeout is in seconds (None: forever): TimeoutError when it expires;\n"
"PortClosedError if the port is or gets closed.  Unlike get(), the\n"
"await does not count as a running thread and the concurrency bound\n"
"does not hold it back (a loop's coroutines share its one thread); a\n"
"thread waiting in get() within the bound is served first.  Cancelling\n"
"the await gives a packet handed meanwhile back to the front of the\n"
"queue.");

IOCP_AWAITABLE_METHOD(Port_get_async, "port_get")

static PyMethodDef Port_methods[] = {
    {"post", (PyCFunction)(void (*)(void))Port_post,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS, Port_post_doc},
    {"get", (PyCFunction)(void (*)(void))Port_get,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS, Port_get_doc},
    {"get_many", (PyCFunction)(void (*)(void))Port_get_many,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS, Port_get_many_doc},
    {"get_async", (PyCFunction)(void (*)(void))Port_get_async,
     METH_VARARGS | METH_KEYWORDS, Port_get_async_doc},
    {"_wait_async", (PyCFunction)(void (*)(void))Port_wait_async,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_wait_async($self, /)\n--\n\n"
     "For get_async(): a queued Packet, or a _PortWait stacked on the port."},
    {"close", Port_close, METH_NOARGS, Port_close_doc},
    {"leave", Port_leave, METH_NOARGS, Port_leave_doc},
    {"__enter__", Port_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nReturn the port."},
    {"__exit__", (PyCFunction)(void (*)(void))Port_exit, METH_FASTCALL,
     "__exit__($self, /, *exc_info)\n--\n\nClose the port."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
stat_get(PyObject *op, void *which)
{
    struct port_stats s;
    port_stats(((PortObject *)op)->port, &s);
    switch ((intptr_t)which) {
    case 0: return PyLong_FromUnsignedLong(s.concurrency);
    case 1: return PyLong_FromUnsignedLong(s.running);
    case 2: return PyLong_FromUnsignedLong(s.waiters);
    case 3: return PyLong_FromSize_t(s.queued);
    default: return PyBool_FromLong(s.closed);
    }
}

static PyGetSetDef Port_getset[] = {
    {"concurrency", stat_get, NULL,
     "At most this many threads run between two waits.", (void *)0},
    {"running", stat_get, NULL,
     "Threads counting as running (took a packet, not waiting again yet,\n"
     "not left, not ended).",
     (void *)1},
    {"waiters", stat_get, NULL,
     "Threads asleep in get()/get_many(), and get_async() awaits.",
     (void *)2},
    {"queued", stat_get, NULL, "Packets in the queue.", (void *)3},
    {"closed", stat_get, NULL, "True once close() was called.", (void *)4},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Port_doc,
"Port(concurrency=0)\n--\n\n"
"A completion port: a queue of packets (key, nbytes, value) that threads\n"
"post to and wait on.  Waiting threads are served last in, first out, and\n"
"at most `concurrency` threads run between two waits (0, the default,\n"
"means os.cpu_count(), or 1 if that is unknown).  A thread that got a\n"
"packet counts as running until it calls get() again, calls leave(), or\n"
"exits (its slot is then freed, as on Windows); while the limit is\n"
"reached, packets stay queued and waiters stay asleep.  get() raises\n"
"TimeoutError when its timeout expires (get_many() returns []).  close()\n"
"wakes every waiter with PortClosedError.\n"
"\n"
"A Port is a context manager, closed on the way out of the with block\n"
"(threads still waiting in get() then get PortClosedError)::\n"
"\n"
"    with Port(concurrency=2) as port:\n"
"        port.post(key=1, nbytes=5, value='hello')\n"
"        packet = port.get(timeout=1.0)    # key 1, nbytes 5, value 'hello'");

static PyType_Slot Port_slots[] = {
    {Py_tp_new, Port_new},
    {Py_tp_dealloc, Port_dealloc},
    {Py_tp_traverse, Port_traverse},
    {Py_tp_clear, Port_clear},
    {Py_tp_repr, Port_repr},
    {Py_tp_methods, Port_methods},
    {Py_tp_getset, Port_getset},
    {Py_tp_doc, (void *)Port_doc},
    {0, NULL},
};

static PyType_Spec Port_spec = {
    .name = "iocport._iocport.Port",
    .basicsize = sizeof(PortObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Port_slots,
};

static PyStructSequence_Field Packet_fields[] = {
    {"key", "The key given to post() (an int in 0..2**64-1)."},
    {"nbytes", "The byte count given to post() (an int in 0..2**64-1)."},
    {"value", "The object given to post()."},
    {NULL, NULL},
};

static PyStructSequence_Desc Packet_desc = {
    .name = "iocport._iocport.Packet",
    .doc = "A completion packet: (key, nbytes, value).",
    .fields = Packet_fields,
    .n_in_sequence = 3,
};

int
iocp_port_add_types(PyObject *module, iocp_state *st)
{
    st->PortType = (PyTypeObject *)PyType_FromModuleAndSpec(module,
                                                            &Port_spec, NULL);
    if (st->PortType == NULL ||
        PyModule_AddObjectRef(module, "Port", (PyObject *)st->PortType) < 0)
        return -1;
    st->PortWaitType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &PortWait_spec, NULL);
    if (st->PortWaitType == NULL)
        return -1;
    st->PacketType = PyStructSequence_NewType(&Packet_desc);
    if (st->PacketType == NULL ||
        PyModule_AddObjectRef(module, "Packet", (PyObject *)st->PacketType) < 0)
        return -1;
    st->PortClosedError = iocp_new_error(
        st, "iocport._iocport.PortClosedError",
        "Raised by Port.get()/post() once the port is closed (an\n"
        "iocport.Error and a RuntimeError).",
        PyExc_RuntimeError);
    if (st->PortClosedError == NULL ||
        PyModule_AddObjectRef(module, "PortClosedError",
                              (PyObject *)st->PortClosedError) < 0)
        return -1;
    return 0;
}
