"""Coroutine handlers: iocport inside an asyncio loop.

When a Server's handler, on_connect or on_close is an ``async def``
function, the native workers do not call it: they call the small sync
trampolines of a _Bridge, which append ``(kind, conn, msg)`` to a deque and
wake the loop through an eventfd watched with ``loop.add_reader`` -- once
per batch: only the append that finds no wake-up pending writes the eventfd
(``signalled``), so a worker's turn of many messages costs one wake-up, and
never a ``call_soon_threadsafe`` per message.

On the loop's thread each coroutine is started eagerly (``coro.send(None)``,
as Python 3.12's eager tasks do, by hand so 3.10 and 3.11 behave the same):
one that finishes without suspending costs no Task; one that suspends is
wrapped in a Task that continues it from where it stopped.  Per connection,
one at a time and in order: while a connection's coroutine is suspended its
later events wait in that connection's own deque.  A close cancels the
pending coroutine and drops the messages queued behind it; on_close runs
after it.
"""
import asyncio
import inspect
import logging
import os
import types
from collections import deque
from functools import partial

log = logging.getLogger("iocport")

_MSG, _OPEN, _EOF, _CLOSE = 0, 1, 2, 3
_WHAT = ("handler", "on_connect", "on_eof", "on_close")


def is_async(fn):
    """True for an ``async def`` function (or a method or partial of one)."""
    return fn is not None and inspect.iscoroutinefunction(fn)


@types.coroutine
def _resume(coro, value):
    """Continue `coro`, which yielded `value` when it was started eagerly:
    pass on what it yields, and what its Task sends or throws back."""
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:   # CancelledError included: passed on
            try:
                value = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            value = coro.send(sent)
        except StopIteration as stop:
            return stop.value


async def _continue(coro, value):
    return await _resume(coro, value)


class _Busy:
    """A connection whose coroutine is suspended: the Task, and the events
    that came for that connection since."""

    __slots__ = ("task", "queue")

    def __init__(self):
        self.task = None
        self.queue = deque()


class _Bridge:
    """The worker-to-loop handoff of one Server."""

    def __init__(self, handler, on_connect, on_close, on_eof):
        for name, fn in (("handler", handler), ("on_connect", on_connect),
                         ("on_close", on_close), ("on_eof", on_eof)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, "
                                f"got {type(fn).__name__}")
        self.fns = (handler, on_connect, on_eof, on_close)
        self.queue = deque()
        self.signalled = False
        self.draining = False
        self.fd = -1
        self.loop = None
        self.busy = {}        # conn -> _Busy
        self.aborted = set()  # conns whose coroutine raised, until their close
        self.tasks = set()    # the Tasks of suspended coroutines

    # -- on the workers (GIL held) ----------------------------------------
    def callbacks(self):
        """(handler, on_connect, on_close, on_eof) for the native core."""
        bridge = self
        queue = self.queue
        append = queue.append
        write = os.eventfd_write
        busy = self.busy
        aborted = self.aborted
        handler, on_connect, on_eof, on_close = self.fns

        def wake():
            bridge.signalled = True
            write(bridge.fd, 1)

        def message(conn, msg):
            append((_MSG, conn, msg))
            if not bridge.signalled:
                wake()

        def connected(conn):
            append((_OPEN, conn, None))
            if not bridge.signalled:
                wake()

        def pending(conn):
            # Anything of this connection's still to run on the loop?  Its
            # events are all in `queue` (this worker put them there), being
            # drained, or behind a suspended coroutine (`busy`).
            return queue or bridge.draining or conn in busy or conn in aborted

        def eof(conn):
            # The peer half-closed and the core has handed over every
            # message: keep the connection open until the loop has handled
            # them (then on_eof's answer, or close()).
            if on_eof is None and not pending(conn):
                return False     # nothing owed: the core closes it ('eof')
            append((_EOF, conn, None))
            if not bridge.signalled:
                wake()
            return True

        def closed(conn):
            if on_close is None and not pending(conn):
                return
            append((_CLOSE, conn, None))
            if not bridge.signalled:
                wake()

        return (message if handler is not None else None,
                connected if on_connect is not None else None,
                closed, eof)

    # -- on the loop ------------------------------------------------------
    def attach(self, loop):
        """Watch a fresh eventfd on `loop` (before the core starts)."""
        if self.fd >= 0:
            self.finish()
        self.loop = loop
        self.signalled = False
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            loop.add_reader(self.fd, self._wake)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    def finish(self):
        """Once the core has stopped (its workers joined): handle what they
        left (closes: pending coroutines cancelled), stop watching."""
        if self.fd < 0:
            return
        self._drain()
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1

    def stopped(self):
        """The core has stopped (called from any thread): finish() on the
        loop's thread, now if this is it."""
        loop = self.loop
        if loop is None or self.fd < 0:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            self.finish()
        else:
            try:
                loop.call_soon_threadsafe(self.finish)
            except RuntimeError:   # that loop is closed
                pass

    async def settle(self):
        """Wait for the Tasks still running (cancelled ones end, on_close
        coroutines they were holding back run)."""
        while self.tasks:
            await asyncio.wait(list(self.tasks))

    def _wake(self):
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        # Cleared after the read: a worker that signals from here on wakes
        # the loop again, and what it appended before is drained below.
        self.signalled = False
        self._drain()

    def _drain(self):
        queue = self.queue
        popleft = queue.popleft
        busy = self.busy
        self.draining = True
        try:
            while queue:
                kind, conn, arg = popleft()
                b = busy.get(conn)
                if b is None:
                    self._run(conn, kind, arg, None)
                elif kind == _CLOSE:
                    # Closed: cancel what is pending, drop what is queued.
                    b.queue.clear()
                    b.queue.append((_CLOSE, None))
                    b.task.cancel()
                else:
                    b.queue.append((kind, arg))
        finally:
            self.draining = False

    def _run(self, conn, kind, arg, b):
        """Run the events of a connection from (kind, arg) on, in order,
        until one suspends (then its Task goes on later) or none is left."""
        while True:
            task = self._start(conn, kind, arg)
            if task is not None:
                if b is None:
                    b = self.busy[conn] = _Busy()
                b.task = task
                self.tasks.add(task)
                task.add_done_callback(partial(self._done, conn, kind))
                return
            if b is None or not b.queue:
                if b is not None:
                    del self.busy[conn]
                return
            kind, arg = b.queue.popleft()

    def _start(self, conn, kind, arg):
        """Start one event's callback; its Task if it suspended, else None."""
        if kind == _CLOSE:
            self.aborted.discard(conn)
        elif conn in self.aborted:
            return None   # a coroutine of this connection raised: dropped
        fn = self.fns[kind]
        try:
            if kind == _MSG:
                result = fn(conn, arg)
            elif fn is not None:
                result = fn(conn)
            else:
                result = None
            if type(result) is not types.CoroutineType:
                if kind == _EOF and not result:
                    conn.close()   # every message handled: close it now
                return None
            value = result.send(None)
        except StopIteration as stop:
            if kind == _EOF and not stop.value:
                conn.close()
            return None
        except (Exception, asyncio.CancelledError) as exc:
            self._failed(conn, kind, exc)
            return None
        return self.loop.create_task(_continue(result, value))

    def _done(self, conn, kind, task):
        self.tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self._failed(conn, kind, exc)
            elif kind == _EOF and not task.result():
                conn.close()
        b = self.busy.get(conn)
        if b is None or b.task is not task:
            return
        if not b.queue:
            del self.busy[conn]
            return
        kind, arg = b.queue.popleft()
        self._run(conn, kind, arg, b)

    def _failed(self, conn, kind, exc):
        if kind == _CLOSE:
            log.error("on_close raised (connection %d)", conn.id, exc_info=exc)
            return
        log.error("%s raised; closing connection %d", _WHAT[kind], conn.id,
                  exc_info=exc)
        self.aborted.add(conn)
        conn._abort_handler()   # (close_reason "handler", as for a sync handler)
