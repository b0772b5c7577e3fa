/* server.c - the Server type: the native engine behind iocport.Server
 * (iocport/server.py): its configuration checked and handed to the core,
 * listeners, outgoing connections, files, start, stop and stats. */
#include "py/objects.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

static int
server_traverse(ServerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->handler);
    Py_VISIT(self->on_connect);
    Py_VISIT(self->on_close);
    Py_VISIT(self->on_eof);
    Py_VISIT(self->on_drain);
    Py_VISIT(self->logger);
    Py_VISIT(self->conn_type);
    Py_VISIT(self->file_type);
    Py_VISIT(self->tls_contexts);
    return 0;
}

static int
server_clear(ServerObject *self)
{
    Py_CLEAR(self->handler);
    Py_CLEAR(self->on_connect);
    Py_CLEAR(self->on_close);
    Py_CLEAR(self->on_eof);
    Py_CLEAR(self->on_drain);
    Py_CLEAR(self->logger);
    Py_CLEAR(self->conn_type);
    Py_CLEAR(self->file_type);
    Py_CLEAR(self->tls_contexts);
    return 0;
}

static void
server_dealloc(ServerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->srv != NULL) {
        /* A running server holds a reference to itself: not running here. */
        Py_BEGIN_ALLOW_THREADS
        server_destroy(self->srv);
        Py_END_ALLOW_THREADS
    }
    server_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
check_callable(PyObject *v, const char *name, int allow_none)
{
    if ((allow_none && v == Py_None) || PyCallable_Check(v))
        return 0;
    PyErr_Format(PyExc_TypeError, "%s must be callable%s, got %.100s", name,
                 allow_none ? " or None" : "", Py_TYPE(v)->tp_name);
    return -1;
}

/* An int argument in [lo, hi] (NULL: not given, *out keeps its default):
 * TypeError for anything else, bool included, ValueError out of range,
 * both naming it.  0 or -1. */
static int
int_arg(PyObject *v, const char *name, long long lo, long long hi,
        long long *out)
{
    if (v == NULL)
        return 0;
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %.100s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow != 0 || x < lo || x > hi) {
        if (hi >= PY_SSIZE_T_MAX)   /* as good as unbounded: say the floor */
            PyErr_Format(PyExc_ValueError, "%s must be at least %lld, got %R",
                         name, lo, v);
        else
            PyErr_Format(PyExc_ValueError, "%s must be between %lld and "
                         "%lld, got %R", name, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* A number of seconds >= 0, or None for 0 (no limit).  0 or -1. */
static int
seconds_arg(PyObject *v, const char *name, double *out)
{
    if (v == NULL)
        return 0;
    if (v == Py_None) {
        *out = 0.0;
        return 0;
    }
    if (PyBool_Check(v) || !(PyLong_Check(v) || PyFloat_Check(v))) {
        PyErr_Format(PyExc_TypeError, "%s must be a number of seconds or "
                     "None, got %.100s", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    if (!(x >= 0.0) || x > 1e9) {
        PyErr_Format(PyExc_ValueError, "%s must be between 0 and 1e9 "
                     "seconds, got %R", name, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* Seconds (>= 0, checked) as milliseconds; a positive time is never 0. */
static int64_t
seconds_to_ms(double seconds)
{
    int64_t ms = (int64_t)(seconds * 1000.0 + 0.5);
    return seconds > 0.0 && ms == 0 ? 1 : ms;
}

/* A Server object running the core with cfg; cbs: handler, on_connect,
 * on_close, on_eof, on_drain (checked). */
static PyObject *
server_object(PyTypeObject *type, struct server_config *cfg, PyObject **cbs)
{
    PyObject *module = PyType_GetModule(type);
    if (module == NULL)
        return NULL;
    iocp_state *st = iocp_get_state(module);
    ServerObject *self = (ServerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->handler = Py_NewRef(cbs[0]);
    self->on_connect = Py_NewRef(cbs[1]);
    self->on_close = Py_NewRef(cbs[2]);
    self->on_eof = Py_NewRef(cbs[3]);
    self->on_drain = Py_NewRef(cbs[4]);
    self->logger = Py_NewRef(st->logger);
    self->conn_type = (PyTypeObject *)Py_NewRef(st->ConnectionType);
    self->file_type = (PyTypeObject *)Py_NewRef(st->FileType);
    self->interp = PyInterpreterState_Get();
    self->st = st;
    self->http = cfg->framing.kind == FRAMING_HTTP;
    self->resp = cfg->framing.kind == FRAMING_RESP;
    self->resp_client = self->resp && cfg->framing.resp_client;
    self->resp_lim = cfg->framing.resp;
    self->hold = cfg->hold_msgs;
    if ((self->tls_contexts = PyList_New(0)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    cfg->want_open = self->on_connect != Py_None;
    cfg->want_eof = self->on_eof != Py_None;
    /* Always: a drain() may await any connection (d_dispatch skips the
     * notice when nobody listens). */
    cfg->want_drain = 1;
    self->srv = server_create(cfg, &iocp_dispatch_ops, self);
    if (self->srv == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
server_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"handler", "framing", "workers", "backend",
                             "on_connect", "on_close", "max_unsent",
                             "max_connections", "idle_timeout", "native_echo",
                             "fallback", "bufsize", "on_eof", "on_drain",
                             "half_close_timeout", "unsent_limit",
                             "ssl_handshake_timeout", "hold_messages", NULL};
    PyObject *handler, *framing, *on_connect = Py_None, *on_close = Py_None;
    PyObject *on_eof = Py_None, *on_drain = Py_None;
    PyObject *workers_o = NULL, *max_unsent_o = NULL, *unsent_limit_o = NULL;
    PyObject *max_conns_o = NULL, *bufsize_o = NULL;
    PyObject *idle_o = Py_None, *half_close_o = NULL, *handshake_o = NULL;
    const char *backend = "uring";
    long long workers = 1, max_conns = 100000, bufsize = 16384;
    long long max_unsent = 4 << 20, unsent_limit = 64LL << 20;
    double idle = 0.0, half_close = 30.0, handshake = 60.0;
    int native_echo = 0, fallback = 1, hold = 0;
    struct server_config cfg;

    memset(&cfg, 0, sizeof(cfg));
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$OsOOOOOppOOOOOOp", kwlist,
                                     &handler, &framing, &workers_o, &backend,
                                     &on_connect, &on_close, &max_unsent_o,
                                     &max_conns_o, &idle_o, &native_echo,
                                     &fallback, &bufsize_o, &on_eof, &on_drain,
                                     &half_close_o, &unsent_limit_o,
                                     &handshake_o, &hold))
        return NULL;
    if (handler == Py_None && !native_echo)
        return PyErr_Format(PyExc_TypeError, "handler is required (a "
                            "callable taking conn, msg)");
    /* The one place these are checked (iocport.Server passes them on). */
    if (check_callable(handler, "handler", native_echo) < 0 ||
        check_callable(on_connect, "on_connect", 1) < 0 ||
        check_callable(on_close, "on_close", 1) < 0 ||
        check_callable(on_eof, "on_eof", 1) < 0 ||
        check_callable(on_drain, "on_drain", 1) < 0 ||
        iocp_framing_from_py(framing, &cfg.framing) < 0 ||
        int_arg(workers_o, "workers", 1, 256, &workers) < 0 ||
        int_arg(max_unsent_o, "max_unsent", 1, PY_SSIZE_T_MAX, &max_unsent) < 0 ||
        int_arg(unsent_limit_o, "unsent_limit", max_unsent, PY_SSIZE_T_MAX,
                &unsent_limit) < 0 ||
        int_arg(max_conns_o, "max_connections", 1, UINT_MAX, &max_conns) < 0 ||
        int_arg(bufsize_o, "bufsize", 512, 1 << 20, &bufsize) < 0 ||
        seconds_arg(idle_o, "idle_timeout", &idle) < 0 ||
        seconds_arg(half_close_o, "half_close_timeout", &half_close) < 0 ||
        seconds_arg(handshake_o, "ssl_handshake_timeout", &handshake) < 0)
        return NULL;
    if (native_echo && cfg.framing.kind == FRAMING_RESP)
        return PyErr_Format(PyExc_ValueError, "native_echo is not for RESP "
                            "framing: commands need a handler");
    if (strcmp(backend, "uring") == 0)
        cfg.ops = &iocp_uring_ops;
    else if (strcmp(backend, "epoll") == 0)
        cfg.ops = &iocp_epoll_ops;
    else
        return PyErr_Format(PyExc_ValueError,
                            "backend must be 'uring' or 'epoll', got '%s'", backend);
    cfg.workers = (unsigned)workers;
    cfg.fallback = fallback;
    cfg.native_echo = native_echo;
    cfg.hold_msgs = (uint8_t)hold;
    cfg.max_unsent = (size_t)max_unsent;
    cfg.max_connections = (unsigned)max_conns;
    cfg.idle_timeout_ms = seconds_to_ms(idle);
    cfg.half_close_ms = seconds_to_ms(half_close);
    cfg.tls_handshake_ms = seconds_to_ms(handshake);
    cfg.unsent_limit = (size_t)unsent_limit;
    cfg.bufsize = (unsigned)bufsize;
    PyObject *cbs[] = {handler, on_connect, on_close, on_eof, on_drain};
    return server_object(type, &cfg, cbs);
}

/* TLS from `ctx` (None: plain, *use 0), its context kept alive with the
 * server.  0 or -1. */
static int
tls_arg(ServerObject *self, PyObject *ctx, int server_side,
        struct tls_config *out, int *use)
{
    *use = ctx != Py_None;
    if (!*use)
        return 0;
    iocp_state *st = PyType_GetModuleState(self->conn_type);
    if (iocp_tls_config(st, ctx, server_side, out) < 0)
        return -1;
    return PyList_Append(self->tls_contexts, ctx);
}

static PyObject *
server_add_listener_m(ServerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sock", "ssl", NULL};
    PyObject *sock, *ctx = Py_None;
    struct tls_config tls;
    int use_tls;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:add_listener", kwlist,
                                     &sock, &ctx))
        return NULL;
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0)
        return NULL;
    if (tls_arg(self, ctx, 1, &tls, &use_tls) < 0)
        return NULL;
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError,
                        "listeners must be added before start()");
        return NULL;
    }
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int fl = fcntl(dup, F_GETFL);
    if (fl < 0 || fcntl(dup, F_SETFL, fl | O_NONBLOCK) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(dup);
        return NULL;
    }
    int rc = server_add_listener(self->srv, dup, use_tls ? &tls : NULL);
    if (rc < 0) {
        close(dup);
        if (rc == -ENOSPC)
            return PyErr_Format(PyExc_ValueError, "at most %d listeners",
                                MAX_LISTENERS);
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* A Unix socket address: a path, or an abstract name (a leading NUL, as
 * the socket module spells it), as bytes (iocport.Server.connect_unix()
 * encodes and checks the user's; this only keeps the copy in bounds). */
static int
py_to_sockaddr_un(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_un *a = (struct sockaddr_un *)ss;
    if (!PyBytes_Check(addr)) {
        PyErr_Format(PyExc_TypeError, "an AF_UNIX address must be bytes, got "
                     "%.100s", Py_TYPE(addr)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(addr);
    const char *p = PyBytes_AS_STRING(addr);
    int abstract = n > 0 && p[0] == '\0';
    /* A path keeps its terminating NUL; an abstract name is all its bytes. */
    if (n == 0 || (size_t)n + !abstract > sizeof(a->sun_path) ||
        (!abstract && memchr(p, '\0', (size_t)n) != NULL)) {
        PyErr_Format(PyExc_ValueError, "an AF_UNIX address must be 1 to %zu "
                     "bytes with no NUL but a leading one, got %zd bytes",
                     sizeof(a->sun_path) - 1, n);
        return -1;
    }
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, p, (size_t)n);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n +
                       !abstract);
    return 0;
}

/* (family, address) -> struct sockaddr, as the socket module spells
 * addresses: (host, port) for AF_INET, (host, port[, flow, scope]) for
 * AF_INET6, bytes for AF_UNIX.  Hosts must be numeric (resolved already). */
static int
py_to_sockaddr(int family, PyObject *addr, struct sockaddr_storage *ss,
               socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_UNIX)
        return py_to_sockaddr_un(addr, ss, len);
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError,
                        "connect() takes AF_INET, AF_INET6 or AF_UNIX addresses");
        return -1;
    }
    const char *host;
    int port;
    unsigned int flow = 0, scope = 0;
    if (!PyTuple_Check(addr) ||
        !PyArg_ParseTuple(addr, "si|II", &host, &port, &flow, &scope)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError,
                        "address must be a (host, port) tuple with a numeric host");
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port must be 0-65535, got %d", port);
        return -1;
    }
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            goto bad_host;
        *len = sizeof(*a);
        return 0;
    }
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;   /* AF_INET6 */
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    a6->sin6_flowinfo = htonl(flow);
    a6->sin6_scope_id = scope;
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
        goto bad_host;
    *len = sizeof(*a6);
    return 0;
bad_host:
    PyErr_Format(PyExc_ValueError, "host must be a numeric address, got '%s'", host);
    return -1;
}

#define CONNECT_MAX_ADDRS 16   /* addresses tried per connect() */

static PyObject *
server_connect_m(ServerObject *self, PyObject *args)
{
    PyObject *addrs, *cb, *timeout_o, *ctx = Py_None;
    const char *host = NULL;
    double timeout = 0.0;
    struct sockaddr_storage ss[CONNECT_MAX_ADDRS];
    socklen_t lens[CONNECT_MAX_ADDRS];
    struct tls_config tls;
    int use_tls;
    if (!PyArg_ParseTuple(args, "OOO|Oz:connect", &addrs, &cb, &timeout_o,
                          &ctx, &host))
        return NULL;
    if (check_callable(cb, "callback", 1) < 0 ||
        seconds_arg(timeout_o, "timeout", &timeout) < 0 ||
        tls_arg(self, ctx, 0, &tls, &use_tls) < 0)
        return NULL;
    tls.host = host;
    if (!PyList_Check(addrs) || PyList_GET_SIZE(addrs) == 0)
        return PyErr_Format(PyExc_TypeError, "addresses must be a non-empty "
                            "list of (family, address) pairs");
    Py_ssize_t n = PyList_GET_SIZE(addrs);
    if (n > CONNECT_MAX_ADDRS)
        n = CONNECT_MAX_ADDRS;   /* the first ones: the resolver's order */
    for (Py_ssize_t i = 0; i < n; i++) {
        int family;
        PyObject *addr, *item = PyList_GET_ITEM(addrs, i);
        if (!PyArg_ParseTuple(item, "iO;addresses must be (family, address) "
                              "pairs", &family, &addr) ||
            py_to_sockaddr(family, addr, &ss[i], &lens[i]) < 0)
            return NULL;
    }
    ConnObject *o = (ConnObject *)self->conn_type->tp_alloc(self->conn_type, 0);
    if (o == NULL)
        return NULL;
    if (cb != Py_None)
        o->connect_cb = Py_NewRef(cb);
    struct conn *c;
    /* (0 or None: no deadline but the kernel's own) */
    int64_t ms = timeout > 0.0 ? seconds_to_ms(timeout) : INT64_MAX / 4;
    int rc = server_connect(self->srv, ss, lens, (unsigned)n, ms,
                            use_tls ? &tls : NULL, o, &c);
    if (rc < 0) {
        Py_DECREF(o);
        if (rc == -EPIPE) {
            PyErr_SetString(PyExc_RuntimeError,
                            "the server is not running; call start() first");
            return NULL;
        }
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    o->c = c;
    o->id = conn_id(c);
    /* The core's link (conn_py) holds this reference until it closes. */
    Py_INCREF(o);
    return (PyObject *)o;
}

static PyObject *
server_adopt_file_m(ServerObject *self, PyObject *args)
{
    int fd;
    unsigned long long append_off;
    if (!PyArg_ParseTuple(args, "iK:adopt_file", &fd, &append_off))
        return NULL;
    if (fd < 0)
        return PyErr_Format(PyExc_ValueError, "fd must be >= 0, got %d", fd);
    return iocp_file_new(self->file_type, (PyObject *)self, self->srv,
                         self->logger, fd, append_off);
}

static PyObject *
server_start_m(ServerObject *self, PyObject *Py_UNUSED(ignored))
{
    int rc;
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError, self->stopping
                        ? "server is stopping" : "server already started");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = server_start(self->srv);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->started = 1;
    Py_INCREF(self);   /* workers use the object until stop() */
    Py_RETURN_NONE;
}

static PyObject *
server_stop_m(ServerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->started) {
        server_stop(self->srv);   /* closes listeners not yet served */
        Py_RETURN_NONE;
    }
    if (self->stopping)
        Py_RETURN_NONE;   /* another thread is stopping it right now */
    if (server_on_worker(self->srv)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "stop() cannot be called from a handler (it joins "
                        "the worker running it); call it from another "
                        "thread");
        return NULL;
    }
    self->stopping = 1;
    Py_BEGIN_ALLOW_THREADS
    server_stop(self->srv);
    Py_END_ALLOW_THREADS
    self->stopping = 0;
    self->started = 0;
    Py_DECREF(self);
    Py_RETURN_NONE;
}

static PyObject *
server_stats_m(ServerObject *self, PyObject *Py_UNUSED(ignored))
{
    struct server_stats st;
    server_get_stats(self->srv, &st);
    PyObject *errors = PyDict_New();
    if (errors == NULL)
        return NULL;
    for (int i = CLOSE_RESET; i < CLOSE_REASON_COUNT; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st.errors[i]);
        if (v == NULL || PyDict_SetItemString(errors, close_reason_name[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(errors);
            return NULL;
        }
        Py_DECREF(v);
    }
    /* Per worker: its live connections and those it was ever given (the
     * spread of the load). */
    PyObject *per = PyList_New(0);
    if (per == NULL) {
        Py_DECREF(errors);
        return NULL;
    }
    unsigned live;
    uint64_t opened;
    for (unsigned i = 0; server_worker_load(self->srv, i, &live, &opened) == 0;
         i++) {
        PyObject *d = Py_BuildValue("{sIsK}", "connections", live, "opened",
                                    (unsigned long long)opened);
        if (d == NULL || PyList_Append(per, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(per);
            Py_DECREF(errors);
            return NULL;
        }
        Py_DECREF(d);
    }
#define U(x) ((unsigned long long)(x))
    return Py_BuildValue(
        "{sIsKsKsKsKsKsKsKsKsKsKsNsNs{sKsKsK}}",
        "connections", st.connections,
        "accepted", U(st.accepted), "closed", U(st.closed),
        "messages_in", U(st.msgs_in), "messages_out", U(st.msgs_out),
        "bytes_in", U(st.bytes_in), "bytes_out", U(st.bytes_out),
        "eof", U(st.errors[CLOSE_EOF]),
        "accept_errors", U(st.accept_errors), "refused", U(st.refused),
        "pauses", U(st.pauses),
        "errors", errors, "workers", per,
        "ktls", "tx", U(st.ktls_tx), "no_ulp", U(st.ktls_no_ulp),
        "unsupported", U(st.ktls_unsupported));
#undef U
}

static PyObject *
server_get_backend(ServerObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(server_backend(self->srv));
}

static PyObject *
server_get_fallback_errno(ServerObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(server_fell_back(self->srv));
}

static PyObject *
server_get_running(ServerObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->started);
}

static PyMethodDef server_methods[] = {
    {"add_listener", (PyCFunction)(void (*)(void))server_add_listener_m,
     METH_VARARGS | METH_KEYWORDS,
     "add_listener($self, /, sock, ssl=None)\n--\n\n"
     "Serve a listening socket (its fd is duplicated), over TLS with ssl\n"
     "(an ssl.SSLContext for the server side) if given.  Before start()."},
    {"connect", (PyCFunction)server_connect_m, METH_VARARGS,
     "connect($self, addresses, callback, timeout, ssl=None, server_hostname=None, /)"
     "\n--\n\n"
     "Connect to the first of addresses ((family, address) pairs, tried in\n"
     "turn: numeric (host, port) for AF_INET and AF_INET6, bytes for\n"
     "AF_UNIX) that answers within timeout seconds (None: no limit), on a\n"
     "worker, over TLS with ssl (a client-side ssl.SSLContext) if\n"
     "given, sending SNI for server_hostname and checking it as the context\n"
     "says; callback(conn, error) runs when it completes (error is None, an\n"
     "OSError: the last attempt's, TimeoutError once the time is up, or an\n"
     "ssl.SSLError for a failed handshake)."},
    {"adopt_file", (PyCFunction)server_adopt_file_m, METH_VARARGS,
     "adopt_file($self, fd, append_offset, /)\n--\n\n"
     "A File for a descriptor, taken over (closed by File.close())."},
    {"start", (PyCFunction)server_start_m, METH_NOARGS,
     "start($self, /)\n--\n\nStart the worker threads."},
    {"stop", (PyCFunction)server_stop_m, METH_NOARGS,
     "stop($self, /)\n--\n\n"
     "Close every connection and join every worker.  Idempotent."},
    {"stats", (PyCFunction)server_stats_m, METH_NOARGS,
     "stats($self, /)\n--\n\nCounters: connections, messages, bytes, errors."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef server_getset[] = {
    {"backend", (getter)server_get_backend, NULL, "The backend in use.", NULL},
    {"fallback_errno", (getter)server_get_fallback_errno, NULL,
     "The errno that made io_uring fall back to epoll, or 0.", NULL},
    {"running", (getter)server_get_running, NULL, "True between start and stop.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot server_slots[] = {
    {Py_tp_doc,
     "Server(handler, framing, *, workers=1, backend='uring', on_connect=None,"
     " on_close=None, max_unsent=4194304, max_connections=100000,"
     " idle_timeout=None, native_echo=False, fallback=True, bufsize=16384,"
     " on_eof=None, on_drain=None, half_close_timeout=30.0,"
     " unsent_limit=67108864, ssl_handshake_timeout=60.0,"
     " hold_messages=False)\n--\n\n"
     "The native engine behind iocport.Server, which is the one to use: it\n"
     "resolves the backend and makes the listening sockets."},
    {Py_tp_new, server_new},
    {Py_tp_dealloc, server_dealloc},
    {Py_tp_traverse, server_traverse},
    {Py_tp_clear, server_clear},
    {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset},
    {0, NULL},
};

static PyType_Spec server_spec = {
    .name = "iocport._iocport.Server",
    .basicsize = sizeof(ServerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = server_slots,
};

int
iocp_server_add_types(PyObject *module, iocp_state *st)
{
    PyObject *reasons = PyTuple_New(CLOSE_REASON_COUNT);
    if (reasons == NULL)
        return -1;
    for (int i = 0; i < CLOSE_REASON_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(close_reason_name[i]);
        if (name == NULL) {
            Py_DECREF(reasons);
            return -1;
        }
        PyTuple_SET_ITEM(reasons, i, name);
    }
    int rc = PyModule_AddObjectRef(module, "CLOSE_REASONS", reasons);
    Py_DECREF(reasons);
    if (rc < 0)
        return -1;
    if (iocp_connection_add_type(module, st) < 0)
        return -1;
    st->ServerType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &server_spec, NULL);
    if (st->ServerType == NULL || PyModule_AddType(module, st->ServerType) < 0)
        return -1;
    return 0;
}
