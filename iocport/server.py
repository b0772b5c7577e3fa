"""The public Server: a thin Python face on the native engine.

Everything per message happens in C (iocport._iocport); this file resolves
the backend, creates listening sockets, and runs serve_forever's signal
handling.
"""
import atexit
import errno
import inspect
import logging
import os
import signal
import socket
import stat
import threading

from . import _awaitable, _iocport
from .framing import HTTP, Framing, LengthPrefixed

__all__ = ["Server", "backends", "default_backend"]

log = logging.getLogger("iocport")

_BACKENDS = ("auto", "uring", "epoll")
# Strong references: a running server must be stopped at exit even when
# the program dropped its Server object (the native core keeps running).
_running = set()
_running_lock = threading.Lock()


def backends():
    """The backends this host can use, best first: ('uring', 'epoll') or ('epoll',)."""
    return _iocport.backends()


def default_backend():
    """The backend Server() picks: $IOCPORT_BACKEND if set, else 'auto'."""
    value = os.environ.get("IOCPORT_BACKEND", "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(
            f"IOCPORT_BACKEND must be one of {', '.join(_BACKENDS)}, got {value!r}")
    return value


class _WithMax(Framing):
    """A framing spec with its largest message replaced."""

    __slots__ = ("_inner", "_max")

    def __init__(self, inner, max_size):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_max", max_size)

    def _spec(self):
        return dict(self._inner._spec(), max_size=self._max)

    def __repr__(self):
        return f"{self._inner!r} (max_message={self._max})"


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_port(port):
    _check_int("port", port, 0)
    if port > 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return port


class Server:
    """A TCP or Unix-socket server whose handler receives whole messages.

    ``handler(conn, msg)`` is called with the GIL held for every whole
    message (``bytes``), in order per connection; socket work runs on native
    worker threads with the GIL released.  If it raises, the traceback is
    logged (logger ``"iocport"``), nothing more from that connection is
    handled, the replies already queued on it go out, then it closes; the
    server goes on.  Every argument but the handler is keyword-only:

    framing
        How the byte stream is cut into messages, and replies framed:
        ``LengthPrefixed(4)`` (the default), ``Delimited``, ``FixedSize``.
    workers
        Native worker threads, each with its own ring (or epoll set) and
        its own connections.  One is fastest for Python handlers (they share
        the GIL); more help ``native_echo`` and handlers that release it.
    backend
        ``"auto"`` (io_uring where the kernel allows it, else epoll),
        ``"uring"`` or ``"epoll"``; None: ``$IOCPORT_BACKEND``, else auto.
    on_connect, on_close
        ``on_connect(conn)`` once a connection is established (accepted or
        connected); ``on_close(conn)`` once for every connection, an
        outgoing one whose connect failed included.  ``conn.close_reason``
        says why it closed (one of ``CLOSE_REASONS``).
    on_eof
        ``on_eof(conn)`` once every message before the peer's FIN has been
        handled; return True to keep the connection open for replies that
        come from elsewhere, then ``conn.close()`` it.
    on_drain
        ``on_drain(conn)`` once a connection's queue has drained below half
        of ``max_unsent``: a server that pushes waits for it when
        ``conn.writable`` is False.
    max_message
        The largest payload accepted (default: the framing's ``max_size``,
        16 MiB); a bigger frame closes that connection only, after the
        replies to the messages before it.
    max_unsent
        Per connection: once replies queue more bytes than this, the server
        stops receiving from that peer until they drain below half.
    unsent_limit
        Per connection, the hard bound: a ``send()`` that would queue more
        closes the connection (``"overflow"``) and returns False.
    max_connections
        More are accepted and closed at once (counted as ``refused``).
    idle_timeout
        Seconds without traffic before a connection is closed (None: never).
    half_close_timeout
        Seconds a half-closed connection may stay silent before it is closed.
    native_echo
        Echo every message in C without calling Python (then ``handler``
        may be None): the ceiling, for benchmarks.
    handlers_per_connection
        For a coroutine handler: how many messages of one connection it may
        handle at once (default 1: one at a time, in order).  Above 1, a
        message starts while earlier ones are suspended, in arrival order;
        on_connect, on_eof and on_close still run alone.

    **Nothing owed is lost**: when the peer half-closes, or sends a bad
    frame, every whole message before it is still handled and every reply
    sent before the connection closes, including replies from the
    callbacks of file operations and ``send_file`` its handlers started.

    A Server is a context manager: ``with`` stops it on the way out, however
    the block ends (an exception included), started or not::

        with iocport.Server(on_message) as server:
            host, port = server.listen()      # port 0: a free one
            server.start()                    # runs in the background
            ...                               # talk to (host, port)
        # stopped: every connection closed, every worker joined

    ``serve_forever()`` instead blocks until Ctrl-C, SIGTERM or ``stop()``.

    **Coroutine handlers**: ``handler``, ``on_connect`` and ``on_close``
    may be ``async def`` functions.  They run on the asyncio loop's thread,
    each started eagerly (no Task unless it suspends), one at a time and in
    order per connection; a close cancels the one suspended and drops the
    messages queued behind it.  Such a server is served from a running
    loop, ``async with`` (which stops it without blocking the loop) and
    ``await server.serve()``.  Messages a coroutine has not finished count
    toward ``max_unsent``, as unsent replies do: while its handlers lag, a
    connection stops receiving, so memory stays bounded::

        async with iocport.Server(on_message) as server:
            server.listen("127.0.0.1", 9000)
            await server.serve()          # until cancelled or stop()
    """

    def __init__(self, handler=None, *, framing=None, workers=1, backend=None,
                 on_connect=None, on_close=None, on_eof=None, on_drain=None,
                 max_message=None, max_unsent=4 * 1024 * 1024,
                 unsent_limit=64 * 1024 * 1024, max_connections=100_000,
                 idle_timeout=None, half_close_timeout=30.0,
                 native_echo=False, ssl=None, ssl_handshake_timeout=60.0,
                 handlers_per_connection=1):
        if framing is None:
            framing = LengthPrefixed(4)
        if not isinstance(framing, Framing):
            raise TypeError("framing must be an iocport framing spec such as "
                            f"LengthPrefixed(4), got {type(framing).__name__}")
        if max_message is not None and isinstance(framing, HTTP):
            raise ValueError("max_message does not apply to HTTP() framing: "
                             "use HTTP(max_body=...)")
        if max_message is not None:
            framing = _WithMax(framing, _check_int("max_message", max_message))
        # The rest is checked once, by the native engine.
        if backend is None:
            backend = default_backend()
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, "
                             f"got {backend!r}")
        if backend == "uring" and "uring" not in backends():
            err = _iocport.uring_status()
            raise OSError(err, "io_uring is not available on this host: "
                          f"{os.strerror(err)} (use backend='epoll' or 'auto')")
        if ssl is not None:
            _iocport.tls_check(ssl, True)
        _check_int("handlers_per_connection", handlers_per_connection)
        self._bridge = None
        if _is_async(on_eof) or _is_async(on_drain):
            raise TypeError("on_eof and on_drain must be plain functions "
                            "(not async def)")
        if any(map(_is_async, (handler, on_connect, on_close))):
            from ._aio import _Bridge
            self._bridge = _Bridge(handler, on_connect, on_close, on_eof,
                                   handlers_per_connection)
            handler, on_connect, on_close, on_eof = self._bridge.callbacks()
        elif handlers_per_connection != 1:
            raise ValueError("handlers_per_connection is for a coroutine "
                             "handler (async def); this handler is a plain "
                             "function, which handles one message at a time")
        self._ssl = ssl
        self._requested = backend
        self._core = _iocport.Server(
            handler, framing, workers=workers,
            backend="epoll" if backend == "epoll" else "uring",
            on_connect=on_connect, on_close=on_close, on_eof=on_eof,
            on_drain=on_drain, max_unsent=max_unsent,
            unsent_limit=unsent_limit, max_connections=max_connections,
            idle_timeout=idle_timeout, half_close_timeout=half_close_timeout,
            native_echo=bool(native_echo), fallback=backend == "auto",
            ssl_handshake_timeout=ssl_handshake_timeout,
            hold_messages=self._bridge is not None and handler is not None)
        self._framing = framing
        self._addresses = []
        self._unix_files = []   # (path, st_dev, st_ino) listen_unix() made
        self._stopped = threading.Event()
        self._waiters = []   # (loop, future) of every serve() awaiting
        self._waiters_lock = threading.Lock()

    # -- listening ------------------------------------------------------
    def listen(self, host="127.0.0.1", port=0, *, backlog=1024, reuse_port=False,
               ssl=None):
        """Listen on (host, port); port 0 picks a free port.  Returns the
        bound address.  Call before start().  Its connections speak TLS
        with ``ssl`` (a server-side ssl.SSLContext), or with the Server's
        own ``ssl`` when None."""
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, got {type(host).__name__}")
        _check_port(port)
        if ssl is None:
            ssl = self._ssl
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog,
                                    reuse_port=reuse_port)
        try:
            self._core.add_listener(sock, ssl)
            address = sock.getsockname()[:2]
        finally:
            sock.close()
        self._addresses.append(address)
        return address

    def listen_unix(self, path, *, mode=None, backlog=1024, ssl=None):
        """Listen on a Unix stream socket; returns ``path``.  Call before
        start().

        ``path`` is a filesystem path (str, bytes or path-like) or a Linux
        abstract name: a str or bytes starting with a NUL (``"\\0app"``, as
        the socket module spells it), which needs no file.  A socket file
        left by a dead process (nothing accepts on it) is replaced; one a
        live server listens on raises OSError (EADDRINUSE), and so does a
        file that is not a socket.  ``mode`` (e.g. ``0o660``) sets the
        file's permissions before anyone can connect.  stop() removes the
        file, unless another has replaced it since.  Its connections speak
        TLS with ``ssl`` (or the Server's own ``ssl`` when None)."""
        address = _unix_address(path)
        abstract = address[0] == 0
        if mode is not None:
            _check_int("mode", mode, 0)
            if mode > 0o777:
                raise ValueError(f"mode must be between 0 and 0o777, got {mode:#o}")
            if abstract:
                raise ValueError("mode is for a filesystem path; an abstract "
                                 "name has no file")
        _check_int("backlog", backlog, 0)
        if ssl is None:
            ssl = self._ssl
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        created = None
        try:
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or abstract:
                    raise
                _remove_stale(address)
                sock.bind(address)
            if not abstract:
                st = os.lstat(address)
                created = (address, st.st_dev, st.st_ino)
                if mode is not None:
                    # Before listen(): until then every connect is refused.
                    os.chmod(address, mode)
            sock.listen(backlog)
            self._core.add_listener(sock, ssl)
        except BaseException:
            if created is not None:
                _unlink_ours(*created)
            raise
        finally:
            sock.close()
        if created is not None:
            self._unix_files.append(created)
        name = path if isinstance(path, str) else os.fsdecode(address)
        self._addresses.append(name)
        return name

    @property
    def addresses(self):
        """Every bound address, in listen order: (host, port) for TCP, the
        path (str) for a Unix socket."""
        return list(self._addresses)

    @property
    def address(self):
        """The first bound address (see addresses)."""
        if not self._addresses:
            raise RuntimeError("the server is not listening; call listen() first")
        return self._addresses[0]

    # -- running --------------------------------------------------------
    @property
    def backend(self):
        """'uring' or 'epoll': the backend in use (or to be used)."""
        return self._core.backend

    @property
    def running(self):
        """True between start() and stop()."""
        return self._core.running

    def start(self):
        """Start serving in the background (native worker threads).  A
        server with no listener is a client: see connect()."""
        bridge = self._bridge
        if bridge is not None and not self.running:
            import asyncio
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "this server's handler (or on_connect, on_close) is a "
                    "coroutine function: start it from a running asyncio loop, "
                    "with 'await server.serve()' or 'async with server'") from None
            bridge.attach(loop)
        self._stopped.clear()
        try:
            self._core.start()
        except BaseException:
            if bridge is not None and not self.running:
                bridge.finish()
            raise
        with _running_lock:
            _running.add(self)
        err = self._core.fallback_errno
        if err:
            log.warning("io_uring unavailable (%s); using the epoll backend",
                        os.strerror(err))
        return self

    def connect(self, host, port, callback=None, *, timeout=30.0, ssl=None,
                server_hostname=None):
        """Open an outgoing connection, overlapped: returns its Connection
        at once (send() may be called before it is connected; the bytes go
        out once it is).

        Every address the host resolves to is tried in turn (``localhost``:
        ::1, then 127.0.0.1), each with an equal share of the time left, until
        one answers or ``timeout`` seconds have passed.  ``callback(conn,
        error)`` then runs on a worker with the GIL held: ``error`` is None,
        or the OSError that made it fail (the last attempt's, or
        TimeoutError).  Once connected, on_connect(conn) runs (before the
        callback); every connection, failed ones too, ends with one
        on_close(conn).  Messages arrive at this server's handler, framed
        the same way.  The host is resolved here (a name lookup blocks the
        caller; numeric addresses do not).

        With ``ssl`` (a client-side ssl.SSLContext, e.g.
        ``ssl.create_default_context()``) the connection speaks TLS: SNI
        names ``server_hostname`` (default: host), whose certificate is
        checked as the context says (check_hostname, verify_mode);
        on_connect and the callback run once the handshake is over, and a
        failed handshake reaches the callback as ssl.SSLCertVerificationError
        or ssl.SSLError (close_reason 'tls')."""
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, got {type(host).__name__}")
        _check_port(port)
        _check_client_tls(ssl, server_hostname)
        if ssl is not None and server_hostname is None:
            server_hostname = host
        addresses = []
        for family, _, _, _, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM):
            if (family in (socket.AF_INET, socket.AF_INET6) and
                    (family, address) not in addresses):
                addresses.append((family, address))
        if not addresses:
            raise OSError(f"{host!r} has no IPv4 or IPv6 address")
        return self._dial(addresses, callback, timeout, ssl, server_hostname)

    def connect_unix(self, path, callback=None, *, timeout=30.0, ssl=None,
                     server_hostname=None):
        """Open an outgoing connection to a Unix stream socket (a path, or
        an abstract name with a leading NUL: see listen_unix()), the way
        connect() does: it returns the Connection at once, and
        ``callback(conn, error)`` and ``await conn`` report the outcome
        (FileNotFoundError: no such file; ConnectionRefusedError: nothing
        listens on it; TimeoutError).  Over TLS with ``ssl``, the
        certificate's name is checked against ``server_hostname``, which a
        context with check_hostname (the default) needs: a path is no host
        name."""
        address = _unix_address(path)
        _check_client_tls(ssl, server_hostname)
        if ssl is not None and server_hostname is None and ssl.check_hostname:
            raise ValueError("this ssl context checks the host name "
                             "(check_hostname): pass server_hostname")
        return self._dial([(socket.AF_UNIX, address)], callback, timeout, ssl,
                          server_hostname)

    def _dial(self, addresses, callback, timeout, ssl, server_hostname):
        if isinstance(self._framing, HTTP):
            raise ValueError("HTTP() framing frames requests, for serving: "
                             "outgoing connections need a server with a "
                             "stream framing (HTTP client framing is not "
                             "built yet)")
        if not self.running:
            raise RuntimeError("the server is not running; call start() first")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None, got "
                            f"{type(callback).__name__}")
        # The core calls `state`, which wakes `await conn` and then calls
        # the callback.  (timeout is checked by the native engine.)
        state = _awaitable.connect_callback(callback)
        conn = self._core.connect(addresses, state, timeout, ssl,
                                  server_hostname)
        conn._aio = state
        return conn

    # -- files ----------------------------------------------------------
    _MODES = {
        "r": os.O_RDONLY,
        "r+": os.O_RDWR,
        "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
        "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
        "a": os.O_WRONLY | os.O_CREAT,
        "a+": os.O_RDWR | os.O_CREAT,
        "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    }

    def open_file(self, path, mode="r", *, perms=0o644):
        """Open a regular file for overlapped reads, writes, appends and
        syncs run by this server's workers (see File).  Modes: r, r+, w,
        w+, a, a+, x.  Appends (``write(data)`` with no offset) go to the
        end of the file in the order they were issued."""
        if not isinstance(mode, str) or mode not in self._MODES:
            raise ValueError(f"mode must be one of {', '.join(self._MODES)}, "
                             f"got {mode!r}")
        # O_NONBLOCK: opening a FIFO (or a device) must not block the
        # caller; adopt_file() then refuses whatever is not a regular file.
        try:
            fd = os.open(path, self._MODES[mode] | os.O_CLOEXEC | os.O_NONBLOCK,
                         perms)
        except OSError as exc:
            if exc.errno == errno.ENXIO:   # a FIFO with no reader, for writing
                raise ValueError(f"File is for regular files; {path!r} is not "
                                 "one") from None
            raise
        try:
            os.set_blocking(fd, True)
            return self.adopt_file(fd)
        except BaseException:
            os.close(fd)
            raise

    def adopt_file(self, fd):
        """A File for an open descriptor, which it takes over (File.close()
        closes it).  Appends start at the file's current size."""
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, got {type(fd).__name__}")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            # A pipe, FIFO or socket would block a worker's read until data
            # comes (io_uring waits for it): those belong on connections.
            raise ValueError(f"File is for regular files; descriptor {fd} is not one")
        return self._core.adopt_file(fd, st.st_size)

    def stop(self):
        """Close every connection and listening socket, join every worker.
        Idempotent.  To serve again, listen() again, then start()."""
        self._core.stop()
        self._addresses = []
        files, self._unix_files = self._unix_files, []
        for created in files:
            _unlink_ours(*created)
        with _running_lock:
            _running.discard(self)
        self._stopped.set()
        if self._bridge is not None:
            self._bridge.stopped()
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, waiter in waiters:
            _on_loop(loop, _set_done, waiter)

    async def serve(self):
        """Serve from the running asyncio loop until stop() is called (from
        any thread or task); start the server first if it is not running.

        If the task awaiting it is cancelled, the server is stopped (without
        blocking the loop) and CancelledError raised again.  The way to
        serve a server whose handlers are coroutines (``async def``); a
        plain one serves the same way, its handlers still on the workers::

            async with iocport.Server(on_message) as server:
                server.listen("127.0.0.1", 9000)
                await server.serve()
        """
        import asyncio
        loop = asyncio.get_running_loop()
        waiter = (loop, loop.create_future())
        with self._waiters_lock:
            self._waiters.append(waiter)
        try:
            if not self.running:
                self.start()
            await waiter[1]
        except asyncio.CancelledError:
            await self._stop_async()
            raise
        finally:
            with self._waiters_lock:
                self._waiters.remove(waiter)
        if self._bridge is not None and self._bridge.loop is loop:
            self._bridge.finish()
            await self._bridge.settle()

    async def _stop_async(self):
        """stop() in a thread, then what it left on this loop's thread."""
        import asyncio
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.stop)
        if self._bridge is not None and self._bridge.loop is loop:
            self._bridge.finish()
            await self._bridge.settle()

    def serve_forever(self, ready=None):
        """Serve until Ctrl-C, SIGTERM or stop() from another thread.

        Starts the server if it is not running; ``ready()``, if given, is
        called once it is (a signal arriving from then on stops it cleanly).
        """
        on_main = threading.current_thread() is threading.main_thread()
        previous = None
        if on_main:
            # SIGTERM ends serving once: a second one (a supervisor that
            # signals the whole process group, say) arriving during the
            # shutdown is ignored rather than raised inside it.
            terminated = []

            def on_term(signum, frame):
                if not terminated:
                    terminated.append(signum)
                    raise _Terminate()

            previous = signal.signal(signal.SIGTERM, on_term)
        try:
            if not self.running:
                self.start()
            if ready is not None:
                ready()
            self._stopped.wait()
        except (KeyboardInterrupt, _Terminate):
            pass
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def stats(self):
        """Counters, as a dict: connections (live), accepted, closed,
        messages and bytes in and out, ``errors`` by close reason,
        accept_errors, refused, ``pauses`` (times a connection stopped
        receiving for backpressure), ``backend``, and ``workers``: per worker,
        its live ``connections`` and those it was ever given (``opened``)."""
        s = self._core.stats()
        s["backend"] = self.backend
        return s

    def __enter__(self):
        """Return the server (``with Server(...) as server``)."""
        return self

    def __exit__(self, *exc):
        """Stop the server, however the with block ended."""
        self.stop()

    async def __aenter__(self):
        """Return the server (``async with Server(...) as server``)."""
        return self

    async def __aexit__(self, *exc):
        """Stop the server without blocking the loop (the workers are joined
        in a thread), however the block ended; then wait for the coroutine
        handlers the stop cancelled, and the on_close coroutines."""
        await self._stop_async()

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return f"<iocport.Server {state} backend={self.backend} on {self._addresses}>"


# sizeof(struct sockaddr_un.sun_path) on Linux: a path and its NUL, or an
# abstract name (a leading NUL and at most 107 bytes more).
_UNIX_PATH_MAX = 108


def _unix_address(path):
    """A Unix socket address as bytes (the native connect's form): a path,
    or an abstract name with a leading NUL."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError("path must be a str, bytes or os.PathLike, got "
                        f"{type(path).__name__}")
    address = os.fsencode(path)
    abstract = address[:1] == b"\0"
    if not address:
        raise ValueError("path must not be empty")
    if not abstract and b"\0" in address:
        raise ValueError("a Unix socket path must contain no NUL (a leading "
                         "one makes an abstract name)")
    if len(address) + (not abstract) > _UNIX_PATH_MAX:
        raise ValueError(f"a Unix socket path is at most {_UNIX_PATH_MAX - 1} "
                         f"bytes, got {len(address)}")
    return address


def _check_client_tls(ssl, server_hostname):
    """TypeError/ValueError unless connect()'s ssl and server_hostname fit."""
    if ssl is None and server_hostname is not None:
        raise ValueError("server_hostname is only meaningful with ssl")
    if server_hostname is not None and not isinstance(server_hostname, str):
        raise TypeError("server_hostname must be a str or None, got "
                        f"{type(server_hostname).__name__}")
    if ssl is not None:
        _iocport.tls_check(ssl, False)


def _remove_stale(path):
    """Remove the socket file at `path` if nothing listens on it (its
    server died); else raise EADDRINUSE saying what is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return   # gone meanwhile: bind again
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EADDRINUSE, f"{os.fsdecode(path)!r} exists and is "
                      "not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Non-blocking: a live server with a full backlog says EAGAIN.
        probe.setblocking(False)
        err = probe.connect_ex(path)
    finally:
        probe.close()
    if err == errno.ENOENT:
        return   # gone meanwhile: bind again
    if err != errno.ECONNREFUSED:
        raise OSError(errno.EADDRINUSE, f"{os.fsdecode(path)!r} is in use: a "
                      "server listens on it")
    log.info("removing the stale socket file %r", os.fsdecode(path))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _unlink_ours(path, dev, ino):
    """Remove the socket file listen_unix() made, unless it is another now."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the socket file %r: %s",
                    os.fsdecode(path), exc)


def _is_async(fn):
    return fn is not None and inspect.iscoroutinefunction(fn)


def _set_done(future):
    if not future.done():
        future.set_result(None)


def _on_loop(loop, fn, *args):
    """fn(*args) on `loop`'s thread: now if this is it, else soon (nothing
    if that loop is closed)."""
    import asyncio
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        fn(*args)
        return
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


class _Terminate(BaseException):
    pass


@atexit.register
def _stop_all():
    # Workers must not touch Python once finalization starts: stop them first.
    with _running_lock:
        servers = list(_running)
    for server in servers:
        server.stop()
