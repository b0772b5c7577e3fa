"""The awaitable operations: ``await`` forms of what otherwise reports to a
callback on a native worker.

The native types' methods forward here (``File.read_async`` calls
``file_read``, ``Connection.drain`` calls ``drain``...): an await needs the
running loop, which is Python's.  Each operation starts as its callback
form does; the callback, on a worker thread, wakes the awaiting loop with
one ``call_soon_threadsafe`` (these are not per-message operations: the
messages' own hand-off is batched, see _aio.py).  ``Port.get_async()``
watches an eventfd the port writes instead (no thread waits for it).

Cancelling an await stops the native operation where there is a way:
a connect is aborted, a ``send_file`` aborts its connection (a file cut
short would leave the peer inside a message), a port wait gives back a
packet it was handed.  A file operation cannot be interrupted once issued
(a regular file's read, write or sync runs to its end): the await ends at
once, the operation completes unobserved, and its buffers are released
then, as for a callback's.
"""
import asyncio
import threading

from ._iocport import Packet

_PENDING = object()


def _deliver(fut, result, error):
    """On the loop: settle `fut` unless its await was cancelled."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _wake(loop, fut, result=None, error=None):
    """From any thread: settle `fut` on `loop`'s thread (nothing if that
    loop is closed: nothing awaits there any more)."""
    try:
        loop.call_soon_threadsafe(_deliver, fut, result, error)
    except RuntimeError:
        pass


async def _operation(start):
    """Run `start(callback)`, whose callback(result, error) runs on a
    worker, and return its result (or raise its error)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(result, error):
        _wake(loop, fut, result, error)

    start(done)
    return await fut


# -- File ------------------------------------------------------------------

async def file_read(file, offset, size):
    return await _operation(lambda done: file.read(offset, size, done))


async def file_write(file, data, offset=None):
    return await _operation(lambda done: file.write(data, offset, done))


async def file_sync(file, *, data_only=False):
    await _operation(lambda done: file.sync(done, data_only=data_only))


async def file_close(file):
    if file.closed:
        return   # as close(): idempotent
    await _operation(file.close)


# -- Port ------------------------------------------------------------------

def _ready(loop, fd, fut):
    loop.remove_reader(fd)   # the eventfd stays readable: once is enough
    if not fut.done():
        fut.set_result(None)


def _expire(fut):
    if not fut.done():
        fut.set_exception(TimeoutError("no packet before the timeout"))


async def port_get(port, timeout=None):
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number or None, not "
                            f"{type(timeout).__name__}")
        if not timeout >= 0:
            raise ValueError("timeout must be a non-negative number or None")
    loop = asyncio.get_running_loop()
    wait = port._wait_async()
    if type(wait) is Packet:
        return wait
    timer = None
    fd = wait.fd
    try:
        fut = loop.create_future()
        loop.add_reader(fd, _ready, loop, fd, fut)
        try:
            if timeout is not None:
                timer = loop.call_later(timeout, _expire, fut)
            packet = wait.result()   # handed one before the reader was on
            if packet is not None:
                return packet
            try:
                await fut
            except TimeoutError:
                packet = wait.result()   # handed one meanwhile after all
                if packet is None:
                    raise
                return packet
            return wait.result()
        finally:
            if timer is not None:
                timer.cancel()
            loop.remove_reader(fd)
    finally:
        wait.close()   # cancelled or timed out: what it holds goes back


# -- Connection ------------------------------------------------------------

class _ConnState:
    """What the awaits of one connection share (``conn._aio``): the outcome
    of its connect, and the loops' futures waiting on it or on a drain.
    Its methods run on the workers (the native core calls ``drained`` and
    ``closed``; ``__call__`` is the connect callback), the awaits on their
    loops: a lock orders the two."""

    __slots__ = ("lock", "outcome", "callback", "connecting", "draining")

    def __init__(self, callback=None, outcome=_PENDING):
        self.lock = threading.Lock()
        self.outcome = outcome       # _PENDING, None (connected), or the error
        self.callback = callback     # the user's connect callback
        self.connecting = []         # (loop, future) awaiting the connect
        self.draining = []           # (loop, future) awaiting a drain

    def __call__(self, conn, error):
        # The callback first: it has run when an await returns.
        callback, self.callback = self.callback, None
        try:
            if callback is not None:
                callback(conn, error)   # raising: logged by the core, as before
        finally:
            with self.lock:
                self.outcome = error
                waiters, self.connecting = self.connecting, []
            for loop, fut in waiters:
                _wake(loop, fut)

    def drained(self):
        with self.lock:
            waiters, self.draining = self.draining, []
        for loop, fut in waiters:
            _wake(loop, fut)

    closed = drained   # the awaits see conn.closed and raise


def connect_callback(callback):
    """The callback Server.connect() gives the core: wakes ``await conn``,
    then calls the user's `callback` (if any).  Attach it to the new
    connection as ``conn._aio``."""
    return _ConnState(callback)


def _state(conn):
    state = conn._aio
    if state is None:   # accepted, or connected by the core alone
        state = conn._aio = _ConnState(outcome=None)
    return state


def _forget(state, name, waiter):
    """Take `waiter` off the list `name` of `state` if still there."""
    with state.lock:
        waiters = getattr(state, name)
        if waiter in waiters:
            waiters.remove(waiter)


async def _wait(state, name, loop, fut):
    try:
        await fut
    finally:
        _forget(state, name, (loop, fut))


def connection_await(conn):
    return _connected(conn).__await__()


async def _connected(conn):
    state = conn._aio
    if state is None:
        return conn   # not an outgoing connection: it is connected
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    with state.lock:
        pending = state.outcome is _PENDING
        if pending:
            state.connecting.append((loop, fut))
    if pending:
        try:
            await _wait(state, "connecting", loop, fut)
        except asyncio.CancelledError:
            if state.outcome is _PENDING:
                conn.abort()   # stops the connect
            raise
    if state.outcome is not None:
        raise state.outcome
    return conn


def _closed_error():
    return ConnectionError("the connection is closed")


async def drain(conn):
    loop = asyncio.get_running_loop()
    state = _state(conn)
    while True:
        fut = loop.create_future()
        with state.lock:
            state.draining.append((loop, fut))
        # Checked after joining the waiters: a drain or close from here on
        # wakes this one.
        if conn.closed:
            _forget(state, "draining", (loop, fut))
            raise _closed_error()
        if conn.writable:
            _forget(state, "draining", (loop, fut))
            return
        await _wait(state, "draining", loop, fut)


async def send_file(conn, file, offset=0, count=None):
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(nbytes, error):
        _wake(loop, fut, nbytes, error)

    conn.send_file(file, offset, count, done)
    try:
        return await fut
    except asyncio.CancelledError:
        if fut.cancelled():
            conn.abort()   # stops the transfer: see the module docstring
        raise


# -- RESP client -------------------------------------------------------------

async def command(conn, *args):
    """conn.command(*args) awaited: the reply, decoded; an error reply is
    raised (iocport.resp.Error), as is a close before the reply
    (ConnectionError)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(conn, reply):
        if isinstance(reply, BaseException):
            _wake(loop, fut, None, reply)
        else:
            _wake(loop, fut, reply)

    if not conn.command(*args, callback=done):
        raise _closed_error()
    return await fut
