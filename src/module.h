/* module.h - the CPython binding's shared declarations: module state and the
 * hooks each binding file (py_port.c, py_server.c) exposes to module.c. */
#ifndef IOCPORT_MODULE_H
#define IOCPORT_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyTypeObject *PortType;
    PyTypeObject *PortClosedError;   /* exception: subclass of RuntimeError */
    PyTypeObject *PacketType;        /* structseq (key, nbytes, value) */
    PyTypeObject *ServerType;
    PyTypeObject *ConnectionType;
    PyTypeObject *FramerType;
    PyObject *logger;                /* logging.getLogger("iocport") */
} iocp_state;

static inline iocp_state *iocp_get_state(PyObject *module)
{
    return (iocp_state *)PyModule_GetState(module);
}

/* Each adds its types to the module and stores them in the state. */
int iocp_port_add_types(PyObject *module, iocp_state *st);
int iocp_server_add_types(PyObject *module, iocp_state *st);
int iocp_framer_add_types(PyObject *module, iocp_state *st);

/* Fill a struct framing from a framing spec object (iocport.framing): any
 * object with a `_spec()` method returning the tuple
 * (kind, hdr_size, big_endian, hdr_included, delim: bytes, size, max_size).
 * 0, or -1 with TypeError/ValueError set. */
struct framing;
int iocp_framing_from_py(PyObject *spec, struct framing *out);

#endif
