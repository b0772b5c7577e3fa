/* module.h - the CPython binding's module: its state (the types, the
 * logger), the function each type's file gives module.c to add its types,
 * and the logging helpers.  What the binding's files share beyond that is
 * in objects.h. */
#ifndef IOCPORT_MODULE_H
#define IOCPORT_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>

typedef struct {
    PyTypeObject *Error;             /* exception: the base of the package's
                                        own errors (subclass of Exception) */
    PyTypeObject *PortType;
    PyTypeObject *PortClosedError;   /* exception: subclass of Error and
                                        RuntimeError */
    PyTypeObject *PacketType;        /* structseq (key, nbytes, value) */
    PyTypeObject *PortWaitType;      /* a Port.get_async() in progress */
    PyTypeObject *ServerType;
    PyTypeObject *ConnectionType;
    PyTypeObject *FramerType;
    PyTypeObject *FramingError;      /* exception: subclass of Error and
                                        ValueError, with .messages */
    PyTypeObject *FileType;
    PyTypeObject *HTTPParserType;    /* private: the parser's test hook */
    PyTypeObject *HTTPParseError;    /* exception: subclass of Error and
                                        ValueError, with .status */
    PyTypeObject *RequestType;       /* request.c: what HTTP handlers get */
    int64_t http_date_sec;           /* request.c: the Date line, once a */
    char http_date[40];              /* second (under the GIL) */
    /* resp.c: the RESP test hook, its protocol error, error replies */
    PyTypeObject *RESPParserType, *RESPProtocolError, *RESPError;
    PyTypeObject *SimpleStringType;  /* resp.c: bytes sent as +... */
    PyTypeObject *ReplyType;         /* reply.c: a RESP answer owed later */
    PyObject *logger;                /* logging.getLogger("iocport") */
    /* TLS, from its first use (py/tls.c): OpenSSL as the ssl module
     * loaded it, _ssl._SSLContext, ssl.SSLError and
     * ssl.SSLCertVerificationError. */
    struct ossl *ossl;
    PyObject *SSLContextType, *SSLError, *SSLCertVerificationError;
    /* Per-thread list of the ports a thread waited on, so that its exit
     * frees its running slots (port_key_create in port.h).  Valid while
     * port_key_ok; deleted at module free. */
    pthread_key_t port_key;
    int port_key_ok;
} iocp_state;

static inline iocp_state *iocp_get_state(PyObject *module)
{
    return (iocp_state *)PyModule_GetState(module);
}

/* A new exception type `dotted_name` ("iocport._iocport.X") deriving from
 * st->Error and `builtin`, so that both `except iocport.Error` and the
 * builtin's except clauses catch it; NULL on error. */
PyTypeObject *iocp_new_error(iocp_state *st, const char *dotted_name,
                             const char *doc, PyObject *builtin);

/* Each adds its types to the module and stores them in the state (Error
 * is made first, by module.c). */
int iocp_port_add_types(PyObject *module, iocp_state *st);
int iocp_server_add_types(PyObject *module, iocp_state *st);
int iocp_framer_add_types(PyObject *module, iocp_state *st);
int iocp_file_add_types(PyObject *module, iocp_state *st);
int iocp_bridge_add_types(PyObject *module, iocp_state *st);
int iocp_http_add_types(PyObject *module, iocp_state *st);
int iocp_resp_add_types(PyObject *module, iocp_state *st);
int iocp_request_add_type(PyObject *module, iocp_state *st);
int iocp_reply_add_type(PyObject *module, iocp_state *st);

/* tls.c: the OpenSSL the module loaded, freed at module free;
 * tls_check(ctx, server_side), the module function. */
void iocp_tls_free(iocp_state *st);
PyObject *iocp_tls_check(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* The awaitable forms are written in Python, in iocport/_awaitable.py (they
 * need the running loop): a method forwards its call there, as
 * iocport._awaitable.<name>(self, *args, **kwds). */
PyObject *iocp_awaitable(const char *name, PyObject *self, PyObject *args,
                         PyObject *kwds);
/* A METH_VARARGS | METH_KEYWORDS method `cname` forwarding to `pyname`. */
#define IOCP_AWAITABLE_METHOD(cname, pyname)                                \
    static PyObject *cname(PyObject *self, PyObject *args, PyObject *kwds)  \
    {                                                                       \
        return iocp_awaitable(pyname, self, args, kwds);                    \
    }

/* logger.<level>(msg, exc_info=exc); a failure to log is unraisable. */
void iocp_log(PyObject *logger, const char *level, PyObject *msg, PyObject *exc);
/* A new OSError for errno `err` (the right subclass), or NULL. */
PyObject *iocp_oserror(int err);
/* Log the current exception with its traceback at ERROR, then clear it.
 * Steals `msg` (which may be NULL if building it failed). */
void iocp_log_exception(PyObject *logger, PyObject *msg);

#endif
