/* module.h - the CPython binding's shared declarations: module state, the
 * hooks each binding file (py_port.c, py_framer.c, py_server.c, py_file.c)
 * exposes to module.c, and logging helpers. */
#ifndef IOCPORT_MODULE_H
#define IOCPORT_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>

typedef struct {
    PyTypeObject *PortType;
    PyTypeObject *PortClosedError;   /* exception: subclass of RuntimeError */
    PyTypeObject *PacketType;        /* structseq (key, nbytes, value) */
    PyTypeObject *ServerType;
    PyTypeObject *ConnectionType;
    PyTypeObject *FramerType;
    PyTypeObject *FramingError;      /* exception: subclass of ValueError,
                                        with .messages */
    PyTypeObject *FileType;
    PyObject *logger;                /* logging.getLogger("iocport") */
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

/* Each adds its types to the module and stores them in the state. */
int iocp_port_add_types(PyObject *module, iocp_state *st);
int iocp_server_add_types(PyObject *module, iocp_state *st);
int iocp_framer_add_types(PyObject *module, iocp_state *st);
int iocp_file_add_types(PyObject *module, iocp_state *st);

/* logger.<level>(msg, exc_info=exc); a failure to log is unraisable. */
void iocp_log(PyObject *logger, const char *level, PyObject *msg, PyObject *exc);
/* A new OSError for errno `err` (the right subclass), or NULL. */
PyObject *iocp_oserror(int err);
/* Log the current exception with its traceback at ERROR, then clear it.
 * Steals `msg` (which may be NULL if building it failed). */
void iocp_log_exception(PyObject *logger, PyObject *msg);

/* py_file.c: a File object for a descriptor (taken over) whose requests run
 * on `srv`; `server` is kept alive by it.  ENTRY_FILE completions go to
 * iocp_file_done (under the GIL). */
struct server;
struct file_req;
PyObject *iocp_file_new(PyTypeObject *type, PyObject *server, struct server *srv,
                        PyObject *logger, int fd, unsigned long long append_off);
void iocp_file_done(struct file_req *r);
/* Connection.send_file: 0, or -1 with an exception set. */
struct conn;
struct xfer;
int iocp_send_file(PyObject *file, struct conn *c, unsigned long long offset,
                   long long count, PyObject *callback);
void iocp_send_file_done(struct xfer *x);

/* Fill a struct framing from a framing spec object (iocport.framing): any
 * object with a `_spec()` method returning the tuple
 * (kind, hdr_size, big_endian, hdr_included, delim: bytes, size, max_size).
 * 0, or -1 with TypeError/ValueError set. */
struct framing;
int iocp_framing_from_py(PyObject *spec, struct framing *out);

#endif
