"""Coroutine handlers and serving from an asyncio loop (issue 16, first
slice): ``async with Server``, ``await server.serve()``, ``async def``
handler / on_connect / on_close, on both backends and on both loops
(asyncio's and uvloop's; uvloop's tests skip when it is not installed).

The clients are asyncio streams on the same loop as the handlers (the
server's socket work is native, on its workers).  No test measures time:
every wait is for a condition, bounded by DEADLINE.
"""
import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest

import iocport
from conftest import CHILD_CWD, DEADLINE, child_env

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request):
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return request.param


@pytest.fixture
def arun(loop_kind):
    """arun(coro): run it to completion on a fresh loop of the test's kind,
    within DEADLINE."""
    def run(coro):
        if loop_kind == "uvloop":
            import uvloop
            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, DEADLINE))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
    return run


def frame(msg):
    return struct.pack(">I", len(msg)) + msg


async def read_msg(reader):
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(n)


async def exchange(address, msgs):
    """Send every message at once (pipelined) on a new connection; return
    the replies, one per message."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"".join(frame(m) for m in msgs))
        return [await read_msg(reader) for _ in msgs]
    finally:
        writer.close()


async def until(predicate, what):
    for _ in range(int(DEADLINE / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"timed out waiting for {what}")


def server(backend, handler, **kwargs):
    return iocport.Server(handler, backend=backend, **kwargs)


# ---- handlers -------------------------------------------------------------------

def test_echo_through_a_coroutine_handler(backend, arun):
    suspended = []

    async def on_message(conn, msg):
        if msg.endswith(b"7"):          # some suspend, most do not
            suspended.append(msg)
            await asyncio.sleep(0)
        conn.send(msg)

    async def main():
        async with server(backend, on_message) as srv:
            address = srv.listen()
            srv.start()
            msgs = [[b"c%d-m%d" % (c, i) for i in range(300)] for c in range(8)]
            replies = await asyncio.gather(*(exchange(address, m) for m in msgs))
            for sent, got in zip(msgs, replies):
                assert got == sent          # every message, in order
            assert suspended
            assert srv.stats()["messages_in"] == 8 * 300
    arun(main())


def test_handlers_awaiting_on_1000_connections_at_once(backend, arun):
    n = 1000
    waiting = set()

    async def on_message(conn, msg):
        waiting.add(conn)
        if len(waiting) == n:
            everyone.set()   # all 1,000 handlers are suspended at once
        await everyone.wait()
        await asyncio.sleep(0.01)
        conn.send(msg[::-1])

    async def main():
        nonlocal everyone
        everyone = asyncio.Event()
        async with server(backend, on_message) as srv:
            address = srv.listen()
            srv.start()
            replies = await asyncio.gather(
                *(exchange(address, [b"abc%d" % i]) for i in range(n)))
            assert replies == [[(b"abc%d" % i)[::-1]] for i in range(n)]
        assert len(waiting) == n
    everyone = None
    arun(main())


def test_order_per_connection_when_handlers_suspend_for_varying_times(backend, arun):
    async def on_message(conn, msg):
        n = int(msg.split(b"-")[1])
        if n % 3:
            await asyncio.sleep((n % 5) / 1000)
        conn.send(msg)

    async def main():
        async with server(backend, on_message) as srv:
            address = srv.listen()
            srv.start()
            msgs = [[b"%d-%d" % (c, i) for i in range(60)] for c in range(10)]
            replies = await asyncio.gather(*(exchange(address, m) for m in msgs))
            assert replies == msgs
    arun(main())


def test_on_connect_and_on_close_coroutines_run_in_order_with_messages(backend, arun):
    events = []

    async def on_connect(conn):
        await asyncio.sleep(0.01)     # its messages wait behind it
        events.append(("open", conn.id))

    async def on_message(conn, msg):
        events.append((msg, conn.id))
        conn.send(msg)

    async def on_close(conn):
        await asyncio.sleep(0)
        events.append(("close", conn.id))

    async def main():
        async with server(backend, on_message, on_connect=on_connect,
                          on_close=on_close) as srv:
            address = srv.listen()
            srv.start()
            assert await exchange(address, [b"a", b"b"]) == [b"a", b"b"]
            await until(lambda: len(events) == 4, "on_close")
            (_, cid), = {(None, e[1]) for e in events}
            assert [e[0] for e in events] == ["open", b"a", b"b", "close"]
    arun(main())


def test_mixed_sync_callbacks_run_on_the_loop_in_order(backend, arun):
    events = []
    loop_thread = []

    def on_connect(conn):
        events.append("open")
        loop_thread.append(threading.current_thread())

    async def on_message(conn, msg):
        await asyncio.sleep(0)
        events.append(msg)
        conn.send(msg)

    def on_close(conn):
        events.append("close")
        loop_thread.append(threading.current_thread())

    async def main():
        async with server(backend, on_message, on_connect=on_connect,
                          on_close=on_close) as srv:
            address = srv.listen()
            srv.start()
            assert await exchange(address, [b"x"]) == [b"x"]
            await until(lambda: "close" in events, "on_close")
        assert events == ["open", b"x", "close"]
        assert loop_thread == [threading.current_thread()] * 2
    arun(main())


def test_an_exception_is_logged_and_aborts_that_connection_only(backend, arun, caplog):
    async def on_message(conn, msg):
        if msg == b"boom":
            await asyncio.sleep(0)
            raise ValueError("boom in a coroutine")
        conn.send(msg)

    reasons = []

    async def main():
        async with server(backend, on_message,
                          on_close=lambda conn: reasons.append(conn.close_reason)) as srv:
            address = srv.listen()
            srv.start()
            other_r, other_w = await asyncio.open_connection(*address)
            r, w = await asyncio.open_connection(*address)
            w.write(frame(b"before") + frame(b"boom") + frame(b"after"))
            assert await read_msg(r) == b"before"
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await read_msg(r)           # aborted: no reply to "after"
            w.close()
            other_w.write(frame(b"still here"))
            assert await read_msg(other_r) == b"still here"
            await until(lambda: reasons, "on_close of the aborted connection")
            assert reasons == ["handler"]   # (the other one is still open)
            other_w.close()

    with caplog.at_level(logging.ERROR, logger="iocport"):
        arun(main())
    failed = [r for r in caplog.records if "handler raised" in r.getMessage()]
    assert len(failed) == 1, caplog.text
    assert failed[0].exc_info and "boom in a coroutine" in str(failed[0].exc_info[1])
    assert "Traceback" in caplog.text


def test_an_exception_before_suspending_is_handled_the_same(backend, arun, caplog):
    async def on_message(conn, msg):
        if msg == b"boom":
            raise KeyError(msg)
        conn.send(msg)

    async def main():
        async with server(backend, on_message) as srv:
            address = srv.listen()
            srv.start()
            r, w = await asyncio.open_connection(*address)
            w.write(frame(b"boom") + frame(b"after"))
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await read_msg(r)
            w.close()
            assert await exchange(address, [b"ok"]) == [b"ok"]

    with caplog.at_level(logging.ERROR, logger="iocport"):
        arun(main())
    assert "handler raised" in caplog.text and "KeyError" in caplog.text


def test_close_cancels_the_pending_handler(backend, arun):
    events = []

    async def on_message(conn, msg):
        if msg == b"wait":
            try:
                await asyncio.Event().wait()       # forever
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
        events.append(msg)       # queued behind "wait": dropped at the close
        conn.send(msg)

    async def on_close(conn):
        events.append("on_close")

    async def main():
        async with server(backend, on_message, on_close=on_close) as srv:
            address = srv.listen()
            srv.start()
            r, w = await asyncio.open_connection(*address)
            w.write(frame(b"first") + frame(b"wait") + frame(b"queued"))
            assert await read_msg(r) == b"first"
            await until(lambda: srv.stats()["messages_in"] == 3, "the messages")
            await asyncio.sleep(0.01)
            # the peer goes away (a reset: after a FIN alone the server
            # would wait for the pending reply, up to half_close_timeout)
            w.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
            await until(lambda: "on_close" in events, "on_close")
            assert events == [b"first", "cancelled", "on_close"]
    arun(main())


def test_stop_cancels_suspended_handlers(backend, arun):
    events = []

    async def on_message(conn, msg):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append(("cancelled", msg))
            raise

    async def main():
        srv = server(backend, on_message)
        async with srv:
            address = srv.listen()
            srv.start()
            writers = []
            for i in range(5):
                _, w = await asyncio.open_connection(*address)
                w.write(frame(b"%d" % i))
                writers.append(w)
            await until(lambda: srv.stats()["messages_in"] == 5, "the messages")
            await asyncio.sleep(0.01)
        # __aexit__ returned: every suspended handler was cancelled and ended
        assert sorted(events) == [("cancelled", b"%d" % i) for i in range(5)]
        assert not srv.running
        for w in writers:
            w.close()
    arun(main())


def test_half_close_gets_every_reply_of_suspended_handlers(backend, arun):
    async def on_message(conn, msg):
        await asyncio.sleep(0.002)
        conn.send(msg)

    async def main():
        async with server(backend, on_message) as srv:
            address = srv.listen()
            srv.start()
            r, w = await asyncio.open_connection(*address)
            msgs = [b"m%d" % i for i in range(20)]
            w.write(b"".join(map(frame, msgs)))
            w.write_eof()                    # FIN right behind them
            assert [await read_msg(r) for _ in msgs] == msgs
            assert await r.read() == b""     # then the server's FIN
            w.close()
    arun(main())


# ---- serving --------------------------------------------------------------------

def test_async_with_stops_the_server(backend, arun):
    async def on_message(conn, msg):
        conn.send(msg)

    async def main():
        srv = server(backend, on_message)
        async with srv as entered:
            assert entered is srv
            address = srv.listen()
            srv.start()
            r, w = await asyncio.open_connection(*address)
            w.write(frame(b"hi"))
            assert await read_msg(r) == b"hi"
        assert not srv.running
        assert await r.read() == b""       # closed by the stop
        w.close()
        with pytest.raises(OSError):
            await asyncio.open_connection(*address)
    arun(main())


@pytest.mark.parametrize("handler_kind", ["async", "sync"])
def test_serve_returns_on_stop_from_a_thread(backend, arun, handler_kind):
    if handler_kind == "async":
        async def on_message(conn, msg):
            conn.send(msg)
    else:
        def on_message(conn, msg):
            conn.send(msg)

    async def main():
        srv = server(backend, on_message)
        address = srv.listen()
        serving = asyncio.ensure_future(srv.serve())
        await until(lambda: srv.running, "the server to start")
        assert await exchange(address, [b"one", b"two"]) == [b"one", b"two"]
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        await serving                     # returns, no exception
        stopper.join(DEADLINE)
        assert not srv.running
    arun(main())


def test_cancelling_serve_stops_the_server(backend, arun):
    async def on_message(conn, msg):
        conn.send(msg)

    async def main():
        srv = server(backend, on_message)
        address = srv.listen()
        serving = asyncio.ensure_future(srv.serve())
        await until(lambda: srv.running, "the server to start")
        assert await exchange(address, [b"x"]) == [b"x"]
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not srv.running
    arun(main())


def test_start_outside_a_loop_raises(backend):
    async def on_message(conn, msg):
        conn.send(msg)

    srv = iocport.Server(on_message, backend=backend)
    srv.listen()
    with pytest.raises(RuntimeError, match="running asyncio loop"):
        srv.start()
    assert not srv.running
    srv.stop()
    # the same for async callbacks other than the handler
    async def on_connect(conn):
        pass
    srv = iocport.Server(lambda conn, msg: None, backend=backend, on_connect=on_connect)
    with pytest.raises(RuntimeError, match="serve"):
        srv.start()


def test_async_on_eof_or_on_drain_is_refused():
    async def cb(conn):
        return None
    for name in ("on_eof", "on_drain"):
        with pytest.raises(TypeError, match="plain functions"):
            iocport.Server(lambda conn, msg: None, **{name: cb})


def test_cli_echo_async_answers(backend):
    proc = subprocess.Popen(
        [sys.executable, "-m", "iocport", "echo", "--async", "--port", "0",
         "--backend", backend],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(IOCPORT_BACKEND=None), cwd=CHILD_CWD)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), (line, proc.stderr.read())
        assert "async" in line
        host, port = line.split()[2].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as s:
            msgs = [b"hello %d" % i for i in range(50)]
            s.sendall(b"".join(map(frame, msgs)))
            got = b""
            want = sum(4 + len(m) for m in msgs)
            while len(got) < want:
                data = s.recv(65536)
                assert data, "EOF"
                got += data
            assert got == b"".join(map(frame, msgs))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- backpressure, several at once, stop from a handler ---------------------

def test_unhandled_messages_pause_receiving(backend, arun):
    """While a coroutine lags, its connection's unhandled messages count
    toward max_unsent: receiving stops, so what the server holds stays
    bounded however much the peer sends; then every message is handled,
    in order."""
    size, count, max_unsent = 1024, 16384, 64 * 1024   # 16 MiB sent
    handled = []

    async def on_message(conn, msg):
        await release.wait()
        handled.append(msg[:8])
        conn.send(msg[:8])

    async def main():
        nonlocal release
        release = asyncio.Event()
        async with server(backend, on_message, max_unsent=max_unsent) as srv:
            address = srv.listen()
            srv.start()
            reader, writer = await asyncio.open_connection(*address)
            msgs = [struct.pack(">Q", i) + bytes(size - 8) for i in range(count)]
            writer.write(b"".join(frame(m) for m in msgs))
            await until(lambda: srv.stats()["pauses"] >= 1, "a pause")
            held = srv.stats()["messages_in"]
            # max_unsent's worth of messages, give or take a turn's worth
            # (a turn frames what one receive brought): not 16 MiB.
            assert held <= 4 * max_unsent // size, held
            assert writer.transport.get_write_buffer_size() > 0
            release.set()
            replies = [await read_msg(reader) for _ in range(count)]
            assert replies == [struct.pack(">Q", i) for i in range(count)]
            writer.close()
        assert handled == [struct.pack(">Q", i) for i in range(count)]
    release = None
    arun(main())


def test_several_messages_of_a_connection_at_once(backend, arun):
    limit = 4
    running, starts, peak = set(), [], [0]

    async def on_connect(conn):
        await asyncio.sleep(0)
        starts.append("open")

    async def on_message(conn, msg):
        n = int(msg)
        starts.append(n)
        running.add(n)
        peak[0] = max(peak[0], len(running))
        try:
            if n == 0:
                await third_done.wait()   # 0 and 3 run at once
            else:
                await asyncio.sleep(0)
        finally:
            running.discard(n)
        conn.send(msg)
        if n == limit - 1:
            third_done.set()

    async def on_close(conn):
        assert not running   # on_close waits for every handler of conn
        starts.append("close")

    async def main():
        nonlocal third_done
        third_done = asyncio.Event()
        async with server(backend, on_message, on_connect=on_connect,
                          on_close=on_close,
                          handlers_per_connection=limit) as srv:
            address = srv.listen()
            srv.start()
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"".join(frame(b"%d" % i) for i in range(40)))
            replies = [int(await read_msg(reader)) for _ in range(40)]
            assert replies.index(limit - 1) < replies.index(0)
            assert sorted(replies) == list(range(40))
            writer.close()
            await until(lambda: starts[-1:] == ["close"], "on_close")
        # started in order, on_connect first; never more than the limit
        assert starts == ["open"] + list(range(40)) + ["close"]
        assert 2 <= peak[0] <= limit
    third_done = None
    arun(main())


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError),
                                          ("2", TypeError), (2.0, TypeError),
                                          (True, TypeError)])
def test_handlers_per_connection_is_checked(value, error):
    async def on_message(conn, msg):
        pass
    with pytest.raises(error, match="handlers_per_connection"):
        iocport.Server(on_message, handlers_per_connection=value)


def test_handlers_per_connection_needs_a_coroutine_handler():
    with pytest.raises(ValueError, match="coroutine handler"):
        iocport.Server(lambda conn, msg: None, handlers_per_connection=2)


@pytest.mark.parametrize("suspend", [False, True])
def test_stop_from_a_coroutine_handler(backend, arun, suspend, caplog):
    closed, events = [], []

    async def on_message(conn, msg):
        if suspend:
            await asyncio.sleep(0)
        conn.send(msg)
        if msg == b"stop":
            srv.stop()
            events.append("handler returns")

    async def on_close(conn):
        closed.append(conn.close_reason)
        events.append("on_close")

    async def main():
        nonlocal srv
        srv = server(backend, on_message, on_close=on_close)
        address = srv.listen()
        others = []
        async with srv:
            serving = asyncio.ensure_future(srv.serve())
            await until(lambda: srv.running, "the server to run")
            for _ in range(3):
                others.append(await asyncio.open_connection(*address))
            for _, w in others:
                w.write(frame(b"hello"))
            for r, _ in others:
                assert await read_msg(r) == b"hello"
            assert await exchange(address, [b"stop"]) == [b"stop"]
            await asyncio.wait_for(serving, DEADLINE)   # serve() returns
        assert not srv.running
        assert len(closed) == 4
        # the stopping handler finished before any on_close ran
        assert events == ["handler returns"] + ["on_close"] * 4
        for _, w in others:
            w.close()
    srv = None
    with caplog.at_level(logging.ERROR, logger="iocport"):
        arun(main())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_native_bridge_refuses_what_is_not_an_event():
    """The bridge runs messages in C: it lets in a Connection and bytes
    only (anything else would be read as one), and push() only the other
    events' kinds."""
    async def on_message(conn, msg):
        pass
    srv = iocport.Server(on_message)
    native = srv._bridge.native
    with pytest.raises(TypeError, match="Connection and bytes"):
        native(object(), b"x")
    with pytest.raises(TypeError, match="Connection and bytes"):
        native(None, b"x")
    with pytest.raises(ValueError, match="open, eof and close"):
        native.push(iocport._iocport._EV_MSG, None, b"x")
    with pytest.raises(TypeError, match="must be a Connection"):
        native.push(iocport._iocport._EV_CLOSE, object(), None)
    assert native.idle


# ---- the Task a handler runs as -------------------------------------------------

def test_a_handler_runs_as_one_task_from_its_first_step(backend, arun):
    """What a handler awaits may ask for its Task before it first suspends
    (asyncio.timeout(), redis-py, anyio): it has one, not done, and the
    same one after it suspends, to its end."""
    ran = []

    async def on_message(conn, msg):
        first = asyncio.current_task()
        assert first is not None and not first.done()
        if msg == b"suspend":
            await asyncio.sleep(0)
            assert asyncio.current_task() is first
            await asyncio.sleep(0.001)
            assert asyncio.current_task() is first
        ran.append(msg)
        conn.send(msg)

    async def main():
        async with server(backend, on_message) as srv:
            address = srv.listen()
            srv.start()
            msgs = [b"a", b"suspend", b"b", b"suspend", b"c"]
            assert await exchange(address, msgs) == msgs
        assert ran == msgs
    arun(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_in_a_handler_before_it_suspends(backend, arun):
    async def on_message(conn, msg):
        try:
            async with asyncio.timeout(0.01 if msg == b"late" else 30):
                if msg == b"late":
                    await asyncio.Event().wait()     # never set: times out
                await asyncio.sleep(0)
            conn.send(b"in time")
        except TimeoutError:
            conn.send(b"timed out")

    async def main():
        async with server(backend, on_message) as srv:
            address = srv.listen()
            srv.start()
            replies = await asyncio.gather(exchange(address, [b"late"]),
                                           exchange(address, [b"soon"]))
            assert replies == [[b"timed out"], [b"in time"]]
    arun(main())


def test_a_task_kept_by_a_handler_that_ended_is_its_own(backend, arun):
    """A handler that ends without suspending but keeps current_task()
    (a library's registry, say) keeps a Task that then ends; the next
    handler runs as another."""
    kept = []

    async def on_message(conn, msg):
        if msg == b"keep":
            kept.append(asyncio.current_task())
        else:
            assert asyncio.current_task() not in kept
        conn.send(msg)

    async def main():
        async with server(backend, on_message) as srv:
            address = srv.listen()
            srv.start()
            assert await exchange(address, [b"keep", b"next"]) == [b"keep", b"next"]
            await until(lambda: kept[0].done(), "the kept Task to end")
            assert kept[0].result() is None
    arun(main())
