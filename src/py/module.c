/* module.c - the _iocport extension module: multi-phase init, module state,
 * module-level functions, logging helpers, the base exception Error.
 * Types live in port.c (Port,
 * Packet, PortClosedError), framer.c (Framer, FramingError), file.c (File),
 * connection.c (Connection), server.c (Server), bridge.c (_Bridge, the
 * asyncio layer's hand-off), http.c (HTTPParser, HTTPParseError) and
 * resp.c (RESPParser, test hooks); dispatch.c holds the hooks the core's
 * workers call. */
#include "py/module.h"
#include "core/core.h"
#include "lib/port.h"

#include <errno.h>
#include <string.h>

void
iocp_log(PyObject *logger, const char *level, PyObject *msg, PyObject *exc)
{
    PyObject *meth = PyObject_GetAttrString(logger, level);
    PyObject *res = NULL;
    if (meth != NULL) {
        PyObject *args = PyTuple_Pack(1, msg);
        PyObject *kw = exc ? Py_BuildValue("{sO}", "exc_info", exc) : NULL;
        if (args != NULL && (exc == NULL || kw != NULL))
            res = PyObject_Call(meth, args, kw);
        Py_XDECREF(args);
        Py_XDECREF(kw);
        Py_DECREF(meth);
    }
    if (res == NULL)
        PyErr_WriteUnraisable(logger);
    Py_XDECREF(res);
}

void
iocp_log_exception(PyObject *logger, PyObject *msg)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    if (msg != NULL)
        iocp_log(logger, "error", msg, value ? value : Py_None);
    else
        PyErr_Clear();
    Py_XDECREF(msg);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

PyObject *
iocp_awaitable(const char *name, PyObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *mod = PyImport_ImportModule("iocport._awaitable");
    if (mod == NULL)
        return NULL;
    PyObject *fn = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    if (fn == NULL)
        return NULL;
    Py_ssize_t n = args != NULL ? PyTuple_GET_SIZE(args) : 0;
    PyObject *all = PyTuple_New(n + 1);
    if (all == NULL) {
        Py_DECREF(fn);
        return NULL;
    }
    PyTuple_SET_ITEM(all, 0, Py_NewRef(self));
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(all, i + 1, Py_NewRef(PyTuple_GET_ITEM(args, i)));
    PyObject *r = PyObject_Call(fn, all, kwds);
    Py_DECREF(all);
    Py_DECREF(fn);
    return r;
}

PyObject *
iocp_oserror(int err)
{
    /* OSError(errno, strerror) picks the subclass (ConnectionRefusedError...) */
    return PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
}

PyTypeObject *
iocp_new_error(iocp_state *st, const char *dotted_name, const char *doc,
               PyObject *builtin)
{
    PyObject *bases = PyTuple_Pack(2, (PyObject *)st->Error, builtin);
    if (bases == NULL)
        return NULL;
    PyObject *type = PyErr_NewExceptionWithDoc(dotted_name, doc, bases, NULL);
    Py_DECREF(bases);
    return (PyTypeObject *)type;
}

/* Error: the base of the package's own exceptions, made before the types
 * whose files derive theirs from it. */
static int
iocp_add_error(PyObject *module, iocp_state *st)
{
    st->Error = (PyTypeObject *)PyErr_NewExceptionWithDoc(
        "iocport._iocport.Error",
        "The base class of iocport's own exceptions: PortClosedError (also a\n"
        "RuntimeError) and FramingError (also a ValueError).  Errors from the\n"
        "system are OSError, and bad arguments TypeError or ValueError, as\n"
        "elsewhere in Python.",
        PyExc_Exception, NULL);
    if (st->Error == NULL ||
        PyModule_AddObjectRef(module, "Error", (PyObject *)st->Error) < 0)
        return -1;
    return 0;
}

static PyObject *
iocp_backends(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    /* The backends this host can use, best first. */
    (void)module;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = iocp_uring_probe();
    Py_END_ALLOW_THREADS
    if (rc == 0)
        return Py_BuildValue("(ss)", "uring", "epoll");
    return Py_BuildValue("(s)", "epoll");
}

static PyObject *
iocp_uring_status(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    /* 0 if io_uring works here, else the errno that refused it. */
    (void)module;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = iocp_uring_probe();
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(-rc);
}

static PyMethodDef iocp_methods[] = {
    {"tls_check", (PyCFunction)(void (*)(void))iocp_tls_check, METH_FASTCALL,
     "tls_check($module, ctx, server_side, /)\n--\n\n"
     "Raise the error ssl=ctx would raise (TypeError, ValueError,\n"
     "RuntimeError), for a server side or a client side context."},
    {"backends", iocp_backends, METH_NOARGS,
     "backends($module, /)\n--\n\n"
     "The I/O backends this host can use, best first ('uring', 'epoll')."},
    {"uring_status", iocp_uring_status, METH_NOARGS,
     "uring_status($module, /)\n--\n\n"
     "0 if io_uring is usable here, else the errno that refused it."},
    {NULL, NULL, 0, NULL},
};

static int
iocp_exec(PyObject *module)
{
    iocp_state *st = iocp_get_state(module);
    PyObject *logging = PyImport_ImportModule("logging");
    if (logging == NULL)
        return -1;
    st->logger = PyObject_CallMethod(logging, "getLogger", "s", "iocport");
    Py_DECREF(logging);
    if (st->logger == NULL)
        return -1;
    int rc = port_key_create(&st->port_key);
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    st->port_key_ok = 1;
    if (iocp_add_error(module, st) < 0 ||
        iocp_port_add_types(module, st) < 0 ||
        iocp_framer_add_types(module, st) < 0 ||
        iocp_file_add_types(module, st) < 0 ||
        iocp_bridge_add_types(module, st) < 0 ||
        iocp_http_add_types(module, st) < 0 ||
        iocp_request_add_type(module, st) < 0 ||
        iocp_reply_add_type(module, st) < 0 ||
        iocp_resp_add_types(module, st) < 0 ||
        iocp_server_add_types(module, st) < 0)
        return -1;
    return 0;
}

static int
iocp_traverse(PyObject *module, visitproc visit, void *arg)
{
    iocp_state *st = iocp_get_state(module);
    Py_VISIT(st->Error);
    Py_VISIT(st->PortType);
    Py_VISIT(st->PortClosedError);
    Py_VISIT(st->PacketType);
    Py_VISIT(st->PortWaitType);
    Py_VISIT(st->ServerType);
    Py_VISIT(st->ConnectionType);
    Py_VISIT(st->FramerType);
    Py_VISIT(st->FramingError);
    Py_VISIT(st->FileType);
    Py_VISIT(st->HTTPParserType);
    Py_VISIT(st->HTTPParseError);
    Py_VISIT(st->RequestType);
    Py_VISIT(st->RESPParserType);
    Py_VISIT(st->RESPProtocolError);
    Py_VISIT(st->RESPError);
    Py_VISIT(st->SimpleStringType);
    Py_VISIT(st->ReplyType);
    Py_VISIT(st->logger);
    Py_VISIT(st->SSLContextType);
    Py_VISIT(st->SSLError);
    Py_VISIT(st->SSLCertVerificationError);
    return 0;
}

static int
iocp_clear(PyObject *module)
{
    iocp_state *st = iocp_get_state(module);
    Py_CLEAR(st->Error);
    Py_CLEAR(st->PortType);
    Py_CLEAR(st->PortClosedError);
    Py_CLEAR(st->PacketType);
    Py_CLEAR(st->PortWaitType);
    Py_CLEAR(st->ServerType);
    Py_CLEAR(st->ConnectionType);
    Py_CLEAR(st->FramerType);
    Py_CLEAR(st->FramingError);
    Py_CLEAR(st->FileType);
    Py_CLEAR(st->HTTPParserType);
    Py_CLEAR(st->HTTPParseError);
    Py_CLEAR(st->RequestType);
    Py_CLEAR(st->RESPParserType);
    Py_CLEAR(st->RESPProtocolError);
    Py_CLEAR(st->RESPError);
    Py_CLEAR(st->SimpleStringType);
    Py_CLEAR(st->ReplyType);
    Py_CLEAR(st->logger);
    Py_CLEAR(st->SSLContextType);
    Py_CLEAR(st->SSLError);
    Py_CLEAR(st->SSLCertVerificationError);
    return 0;
}

static void
iocp_free(void *module)
{
    iocp_state *st = iocp_get_state((PyObject *)module);
    iocp_clear((PyObject *)module);
    /* Not in iocp_clear: the collector clears a cycle (which may hold the
     * module and Ports) before freeing it.  Every Port is gone or garbage by
     * now (each keeps its type, which keeps the module), so no thread can
     * call port_track() with the key any more. */
    if (st->port_key_ok) {
        st->port_key_ok = 0;
        port_key_delete(st->port_key);
    }
    iocp_tls_free(st);   /* every server, and so every SSL, is gone */
}

static PyModuleDef_Slot iocp_slots[] = {
    {Py_mod_exec, iocp_exec},
#if PY_VERSION_HEX >= 0x030D0000
    /* Handlers share connection state with the workers under the GIL. */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef iocp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "iocport._iocport",
    .m_doc = "Native core of iocport: completion port, backends, server.",
    .m_size = sizeof(iocp_state),
    .m_methods = iocp_methods,
    .m_slots = iocp_slots,
    .m_traverse = iocp_traverse,
    .m_clear = iocp_clear,
    .m_free = iocp_free,
};

PyMODINIT_FUNC
PyInit__iocport(void)
{
    return PyModuleDef_Init(&iocp_module);
}
