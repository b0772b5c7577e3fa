"""Coroutine handlers: iocport inside an asyncio loop.

When a Server's handler, on_connect or on_close is an ``async def``
function, the native workers do not call it: its messages go to a native
hand-off (``_iocport._Bridge``, src/py/bridge.c), which queues them and
wakes the loop through an eventfd watched with ``loop.add_reader`` -- once
per batch: only the event that finds no wake-up pending writes the eventfd,
so a worker's turn of many messages costs one wake-up, and never a
``call_soon_threadsafe`` per message.  on_connect, on_eof and on_close
events come through the small trampolines below into the same queue.

On the loop's thread each coroutine is started eagerly (as Python 3.12's
eager tasks do, by hand so 3.10 and 3.11 behave the same): one that
finishes without suspending costs no Task; one that suspends is wrapped in
a Task that continues it from where it stopped.  The bridge runs a message
of a connection with nothing suspended itself, in C; everything else comes
here.  Per connection, in order, one at a time (or up to
handlers_per_connection messages at once): while a connection's coroutine
is suspended its later events wait in that connection's own deque.  A
close cancels what is pending and drops the messages queued behind it;
on_close runs after it.  A message counts toward the connection's
backpressure until its coroutine ends.
"""
import asyncio
import inspect
import logging
import os
import sys
import types
from asyncio.tasks import _enter_task, _leave_task
from collections import deque
from functools import partial

log = logging.getLogger("iocport")

from ._iocport import _Bridge as _Native
from ._iocport import _EV_CLOSE as _CLOSE
from ._iocport import _EV_EOF as _EOF
from ._iocport import _EV_MSG as _MSG
from ._iocport import _EV_OPEN as _OPEN
_WHAT = ("handler", "on_connect", "on_eof", "on_close")


def is_async(fn):
    """True for an ``async def`` function (or a method or partial of one)."""
    return fn is not None and inspect.iscoroutinefunction(fn)


@types.coroutine
def _resume(coro, value, exc=None):
    """Continue `coro`, which yielded `value` when it was started eagerly
    (or, with `exc`, throw that into it first): pass on what it yields,
    and what its Task sends or throws back."""
    while True:
        if exc is None:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as caught:   # CancelledError included
                exc = caught
                continue
            try:
                value = coro.send(sent)
            except StopIteration as stop:
                return stop.value
        else:
            passed_on, exc = exc, None
            try:
                value = coro.throw(passed_on)
            except StopIteration as stop:
                return stop.value


class _Host:
    """A Task for coroutine handlers to run as.  A handler is started
    eagerly on the loop's thread, outside any Task -- but what it awaits
    may ask for its Task (``asyncio.timeout()``, ``current_task()``,
    anyio's cancel scopes), so while it runs the current task is a host:
    a real Task parked on `ready`.  If the handler finishes without
    suspending, the host stays parked for the next one (no Task made); if
    it suspends, the host takes it over (`coro`, `value`) and goes on with
    it -- the same Task from its first step to its last -- and a new host
    is parked for the next handler."""

    __slots__ = ("task", "ready", "coro", "value")

    def __init__(self, loop):
        self.ready = loop.create_future()
        self.coro = self.value = None
        self.task = loop.create_task(self._run())

    async def _run(self):
        try:
            await self.ready
        except asyncio.CancelledError as exc:
            if self.coro is None:
                raise          # cancelled while parked: nothing to go on with
            # cancelled by the handler it was taking over (its first steps
            # ran as this Task): that handler gets it
            return await _resume(self.coro, None, exc)
        if self.coro is None:
            return None        # retired while parked
        return await _resume(self.coro, self.value)

    def take(self, coro, value):
        """Go on with `coro`, suspended on `value`; the Task."""
        self.coro, self.value = coro, value
        if not self.ready.done():
            self.ready.set_result(None)
        return self.task

    def retire(self):
        """End parked (the Task returns None)."""
        if not self.ready.done():
            self.ready.set_result(None)


class _Busy:
    """A connection with a coroutine suspended: the Tasks running its
    events, and the events that came since and wait their turn."""

    __slots__ = ("running", "barrier", "queue")

    def __init__(self):
        self.running = set()
        self.barrier = False   # what runs is on_connect, on_eof or on_close
        self.queue = deque()


class _Bridge:
    """The worker-to-loop handoff of one Server."""

    def __init__(self, handler, on_connect, on_close, on_eof, per_connection=1):
        for name, fn in (("handler", handler), ("on_connect", on_connect),
                         ("on_close", on_close), ("on_eof", on_eof)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, "
                                f"got {type(fn).__name__}")
        self.fns = (handler, on_connect, on_eof, on_close)
        self.per_connection = per_connection
        self.fd = -1
        self.loop = None
        self.busy = {}        # conn -> _Busy
        self.aborted = set()  # conns whose coroutine raised, until their close
        self.tasks = set()    # the Tasks of suspended coroutines
        self.host = None      # the _Host handlers start as (see _Host)
        self.native = _Native(self, handler, asyncio.CancelledError)

    # -- on the workers (GIL held) ----------------------------------------
    def callbacks(self):
        """(handler, on_connect, on_close, on_eof) for the native core."""
        native = self.native
        push = native.push
        busy = self.busy
        aborted = self.aborted
        handler, on_connect, on_eof, on_close = self.fns

        def connected(conn):
            push(_OPEN, conn, None)

        def pending(conn):
            # Anything of this connection's still to run on the loop?  Its
            # events are all queued in the bridge (this worker put them
            # there), being drained, or behind a suspended coroutine.
            return not native.idle or conn in busy or conn in aborted

        def eof(conn):
            # The peer half-closed and the core has handed over every
            # message: keep the connection open until the loop has handled
            # them (then on_eof's answer, or close()).
            if on_eof is None and not pending(conn):
                return False     # nothing owed: the core closes it ('eof')
            push(_EOF, conn, None)
            return True

        def closed(conn):
            if on_close is None and not pending(conn):
                return
            push(_CLOSE, conn, None)

        return (native if handler is not None else None,
                connected if on_connect is not None else None,
                closed, eof)

    # -- on the loop ------------------------------------------------------
    def attach(self, loop):
        """Watch a fresh eventfd on `loop` (before the core starts)."""
        if self.fd >= 0:
            self.finish()
        self.loop = loop
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.native.attach(self.fd, loop)
        try:
            loop.add_reader(self.fd, self.native.drain)
        except BaseException:
            self.native.detach()
            os.close(self.fd)
            self.fd = -1
            raise

    def finish(self):
        """Once the core has stopped (its workers joined): handle what they
        left (closes: pending coroutines cancelled), stop watching."""
        if self.fd < 0:
            return
        self.native.drain()
        self.loop.remove_reader(self.fd)
        self.native.detach()
        os.close(self.fd)
        self.fd = -1
        self._retire_host(None)

    def stopped(self):
        """The core has stopped (called from any thread): finish() soon on
        the loop's thread -- never inside stop() itself, which a handler
        may be the one calling (nothing runs under its feet)."""
        loop = self.loop
        if loop is None or self.fd < 0:
            return
        try:
            loop.call_soon_threadsafe(self.finish)
        except RuntimeError:   # that loop is closed
            pass

    async def settle(self):
        """Wait for the Tasks still running (cancelled ones end, on_close
        coroutines they were holding back run)."""
        while True:
            self._retire_host(None)   # (one may have been parked since)
            if not self.tasks:
                return
            await asyncio.wait(list(self.tasks))

    # -- the native bridge's paths -------------------------------------
    def _event(self, kind, conn, arg):
        """An event the bridge did not run itself: anything but a message
        of a connection with nothing suspended."""
        busy = self.busy
        b = busy.get(conn)
        if b is None:
            task = self._start(conn, kind, arg)
            if task is not None:
                b = busy[conn] = _Busy()
                self._track(conn, b, kind, arg, task)
        elif kind == _CLOSE:
            # Closed: cancel what runs, drop what waits.
            b.queue.clear()
            b.queue.append((_CLOSE, None))
            for task in b.running:
                task.cancel()
        else:
            b.queue.append((kind, arg))
            if kind == _MSG and self.per_connection > 1:
                self._pump(conn, b)

    def _suspended(self, conn, msg, coro, value):
        """A message's coroutine, started by the bridge, awaited `value`."""
        b = self.busy[conn] = _Busy()
        self._track(conn, b, _MSG, msg, self._hand_over(coro, value))

    # -- the host: the Task a handler starts as ---------------------------
    def _new_host(self):
        self.host = _Host(self.loop)
        self.native.set_host(self.host.task)

    def _hand_over(self, coro, value):
        """The current host goes on with `coro`; a new one becomes current.
        Returns the Task that now runs `coro`."""
        task = self.host.take(coro, value)
        self._switch()
        return task

    def _retire_host(self, new=True):
        """The host was kept by what a finished handler left behind (or
        the bridge is done): let its Task end, and park a new one."""
        host = self.host
        if host is None:
            return
        host.retire()
        self.tasks.add(host.task)   # settle() waits for it to end
        host.task.add_done_callback(self.tasks.discard)
        if new is None:
            self.host = None
            self.native.set_host(None)
        else:
            self._switch()

    def _switch(self):
        """Park a new host; if the old one is current (a pass is under
        way: the native bridge's begin() .. end()), the new one is now."""
        old = self.host.task
        self._new_host()
        loop = self.loop
        if asyncio.current_task(loop) is old:
            _leave_task(loop, old)
            _enter_task(loop, self.host.task)

    def _pump(self, conn, b):
        """Start the events of a busy connection that may start now, in
        order: a message beside the messages running while fewer than
        per_connection run; anything else alone."""
        queue = b.queue
        while queue:
            kind, arg = queue[0]
            if b.running and (kind != _MSG or b.barrier or
                              len(b.running) >= self.per_connection):
                return
            queue.popleft()
            task = self._start(conn, kind, arg)
            if task is not None:
                self._track(conn, b, kind, arg, task)
        if not b.running and self.busy.get(conn) is b:
            del self.busy[conn]

    def _track(self, conn, b, kind, arg, task):
        b.running.add(task)
        b.barrier = kind != _MSG
        self.tasks.add(task)
        task.add_done_callback(partial(self._done, conn, b, kind, arg))

    def _start(self, conn, kind, arg):
        """Start one event's callback; its Task if it suspended, else None
        (a message that ends here is given back to the core's count)."""
        if kind == _CLOSE:
            self.aborted.discard(conn)
        elif conn in self.aborted:
            return None   # a coroutine of this connection raised: dropped
        fn = self.fns[kind]
        coro = None
        refs = sys.getrefcount(self.host.task)
        try:
            if kind == _MSG:
                result = fn(conn, arg)
            elif fn is not None:
                result = fn(conn)
            else:
                result = None
            if type(result) is types.CoroutineType:
                coro = result
                value = coro.send(None)
        except StopIteration as stop:   # the common case: it did not suspend
            coro, result = None, stop.value
        except (Exception, asyncio.CancelledError) as exc:
            self._failed(conn, kind, exc)
            return None
        if coro is not None:
            return self._hand_over(coro, value)
        if sys.getrefcount(self.host.task) > refs:
            self._retire_host()   # kept by what the handler left behind
        self._ended(conn, kind, arg, result)
        return None

    def _ended(self, conn, kind, arg, result):
        if kind == _MSG:
            conn._handled(arg)   # no longer counts toward backpressure
        elif kind == _EOF and not result:
            conn.close()   # every message handled: close it now

    def _done(self, conn, b, kind, arg, task):
        self.tasks.discard(task)
        b.running.discard(task)
        if task.cancelled():
            pass
        elif task.exception() is not None:
            self._failed(conn, kind, task.exception())
        else:
            self._ended(conn, kind, arg, task.result())
        if self.busy.get(conn) is b:
            outer = self.native.begin()
            try:
                self._pump(conn, b)
            finally:
                self.native.end(outer)

    def _failed(self, conn, kind, exc):
        if kind == _CLOSE:
            log.error("on_close raised (connection %d)", conn.id, exc_info=exc)
            return
        log.error("%s raised; closing connection %d", _WHAT[kind], conn.id,
                  exc_info=exc)
        self.aborted.add(conn)
        conn._abort_handler()   # (close_reason "handler", as for a sync handler)
