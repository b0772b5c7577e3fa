"""The awaitable operations (issue 16, part 3): ``await server.connect()``,
``await conn.drain()``, ``await conn.send_file_async()``, the File's
``read_async`` / ``write_async`` / ``sync_async`` / ``close_async`` and
``await port.get_async()``: each one's result, its error path, and its
cancellation (the native operation stopped where there is a way, nothing
left held: buffers, references, waiters), on both backends and on both
loops (asyncio's and uvloop's; the Port's tests need no backend).

No test measures time: every wait is for a condition, bounded by DEADLINE
(the one fixed delay, a wait_for() on a connect the test keeps pending,
fails the test if the connect was not pending).
"""
import asyncio
import errno
import gc
import os
import socket
import struct
import sys
import threading

import pytest

import iocport
from conftest import DEADLINE
from test_async import arun, loop_kind, read_msg, until  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)


def echo(conn, msg):
    conn.send(msg)


@pytest.fixture
def tmp_file(tmp_path):
    return str(tmp_path / "data")


async def peer_server(handle):
    """An asyncio server on the loop, for outgoing connections."""
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[:2]


async def echo_peer(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


# ---- await server.connect() --------------------------------------------------

def test_await_connect_returns_the_connected_connection(backend, arun):
    got = []

    async def on_message(conn, msg):
        got.append(msg)

    async def main():
        peer, address = await peer_server(echo_peer)
        async with peer, iocport.Server(on_message, backend=backend) as srv:
            srv.start()
            conn = await srv.connect(*address)
            assert isinstance(conn, iocport.Connection) and not conn.closed
            assert await conn is conn            # awaiting again: at once
            conn.send(b"hello")
            await until(lambda: got == [b"hello"], "the echo")
            conn.close()
    arun(main())


def test_await_connect_keeps_the_callback(backend, arun):
    calls = []

    async def main():
        peer, address = await peer_server(echo_peer)
        async with peer, iocport.Server(echo, backend=backend) as srv:
            srv.start()
            conn = srv.connect(*address, lambda c, e: calls.append((c, e)))
            assert await conn is conn
            assert calls == [(conn, None)]       # before the await returned
            conn.close()
    arun(main())


def test_await_accepted_connection_returns_it(backend, arun):
    conns = asyncio.Queue()

    async def on_connect(conn):
        await conns.put(conn)

    async def main():
        async with iocport.Server(echo, backend=backend,
                                  on_connect=on_connect) as srv:
            address = srv.listen()
            srv.start()
            reader, writer = await asyncio.open_connection(*address)
            conn = await asyncio.wait_for(conns.get(), DEADLINE)
            assert await conn is conn
            writer.close()
    arun(main())


def test_await_connect_refused_raises(backend, arun):
    calls = []
    closes = []

    async def main():
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()
        probe.close()                            # nothing listens there
        async with iocport.Server(echo, backend=backend,
                                  on_close=closes.append) as srv:
            srv.start()
            conn = srv.connect(*address, lambda c, e: calls.append(e))
            with pytest.raises(ConnectionRefusedError):
                await conn
            with pytest.raises(ConnectionRefusedError):
                await conn                       # the outcome is kept
            assert isinstance(calls[0], ConnectionRefusedError)
            await until(lambda: closes, "on_close")
            assert conn.close_reason == "connect"
    arun(main())


def test_cancelled_connect_is_aborted(backend, arun):
    calls = []

    async def main():
        # A listener whose accept queue is full: SYNs go unanswered, so the
        # connect stays pending.
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        address = lsock.getsockname()
        fillers = []
        try:
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(address)
                fillers.append(s)
            async with iocport.Server(echo, backend=backend) as srv:
                srv.start()
                conn = srv.connect(*address, lambda c, e: calls.append(e))
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(conn, 0.3)
                # the native connect was stopped: the callback heard of it
                await until(lambda: calls and conn.closed, "the abort")
                assert isinstance(calls[0], OSError), calls
                assert calls[0].errno == errno.ECANCELED
                assert conn.close_reason == "connect"   # it never connected
                assert srv.stats()["connections"] == 0
                assert conn._aio.connecting == []
        finally:
            for s in fillers:
                s.close()
            lsock.close()
    arun(main())


# ---- await conn.drain() ----------------------------------------------------------

MAX_UNSENT = 64 * 1024


async def pushing_server(backend, main_body):
    """A server whose on_connect hands the accepted connection over; the
    client is an asyncio stream that reads only when told."""
    conns = asyncio.Queue()

    async def on_connect(conn):   # (on the loop's thread)
        conns.put_nowait(conn)

    async with iocport.Server(echo, backend=backend, max_unsent=MAX_UNSENT,
                              on_connect=on_connect) as srv:
        address = srv.listen()
        srv.start()
        reader, writer = await asyncio.open_connection(*address)
        try:
            conn = await asyncio.wait_for(conns.get(), DEADLINE)
            await main_body(srv, conn, reader, writer)
        finally:
            writer.close()


BIG = 1 << 20
PUSHED = 32   # 32 MiB: more than the kernel's socket buffers ever hold


async def drain_waiting(conn):
    """Queue more than the peer's and the kernel's buffers take (the
    connection stays over max_unsent until the peer reads), then start a
    drain(): its Task, once it waits."""
    for _ in range(PUSHED):
        assert conn.send(b"y" * BIG)
    assert not conn.writable
    task = asyncio.ensure_future(conn.drain())
    await until(lambda: conn._aio is not None and conn._aio.draining,
                "the drain waiting")
    return task


def test_drain_returns_at_once_when_writable(backend, arun):
    async def body(srv, conn, reader, writer):
        conn.send(b"x" * 100)
        await conn.drain()
        assert conn._aio.draining == []
    arun(pushing_server(backend, body))


def test_drain_waits_below_the_low_mark(backend, arun):
    async def body(srv, conn, reader, writer):
        drained = await drain_waiting(conn)
        assert not drained.done()                # still over max_unsent
        for _ in range(PUSHED):                  # now read it all
            assert await read_msg(reader) == b"y" * BIG
        await asyncio.wait_for(drained, DEADLINE)
        assert conn.unsent <= MAX_UNSENT // 2 and conn.writable
        assert conn._aio.draining == []
    arun(pushing_server(backend, body))


def test_drain_cancelled_leaves_no_waiter(backend, arun):
    async def body(srv, conn, reader, writer):
        task = await drain_waiting(conn)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn._aio.draining == []
        conn.abort()
    arun(pushing_server(backend, body))


def test_drain_raises_once_closed(backend, arun):
    async def body(srv, conn, reader, writer):
        task = await drain_waiting(conn)
        conn.abort()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(task, DEADLINE)
        with pytest.raises(ConnectionError):
            await conn.drain()                   # closed: at once
        assert conn._aio.draining == []
    arun(pushing_server(backend, body))


# ---- the File --------------------------------------------------------------------

def test_file_operations_awaited(backend, arun, tmp_file):
    async def main():
        async with iocport.Server(echo, backend=backend) as srv:
            srv.start()
            f = srv.open_file(tmp_file, "w+")
            assert await f.write_async(b"hello ") == 6           # appends
            assert await f.write_async(b"world") == 5
            assert await f.write_async(b"W", 6) == 1            # at an offset
            await f.sync_async()
            await f.sync_async(data_only=True)
            assert await f.read_async(0, 100) == b"hello World"
            assert await f.read_async(6, 3) == b"Wor"
            # many at once, from several tasks
            datas = await asyncio.gather(*(f.read_async(i, 1) for i in range(11)))
            assert b"".join(datas) == b"hello World"
            await f.close_async()
            assert f.closed and f.fd == -1 and f.pending == 0
            await f.close_async()                               # idempotent
        with open(tmp_file, "rb") as check:
            assert check.read() == b"hello World"
    arun(main())


def test_file_errors_raise_from_the_await(backend, arun, tmp_file):
    async def main():
        async with iocport.Server(echo, backend=backend) as srv:
            srv.start()
            f = srv.open_file(tmp_file, "w")
            with pytest.raises(OSError) as info:
                await f.read_async(0, 10)                       # write-only
            assert info.value.errno == errno.EBADF
            g = srv.open_file(tmp_file, "r")
            with pytest.raises(OSError) as info:
                await g.write_async(b"x")                       # read-only
            assert info.value.errno == errno.EBADF
            await g.close_async()
            with pytest.raises(ValueError):
                await g.read_async(0, 1)                        # closed
            await f.close_async()
    arun(main())


def test_file_awaitables_need_a_loop(backend, make_server, tmp_file):
    srv = make_server(echo)
    f = srv.open_file(tmp_file, "w+")
    try:
        coro = f.read_async(0, 1)
        with pytest.raises(RuntimeError):   # no running loop: nothing issued
            coro.send(None)
        assert f.pending == 0
    finally:
        f.close()


def test_cancelled_file_operations_release_everything(backend, arun, tmp_file):
    async def main():
        async with iocport.Server(echo, backend=backend) as srv:
            srv.start()
            f = srv.open_file(tmp_file, "w+")
            data = os.urandom(4 << 20)
            base_data, base_file = sys.getrefcount(data), sys.getrefcount(f)
            write = asyncio.ensure_future(f.write_async(data))
            read = asyncio.ensure_future(f.read_async(0, 4 << 20))
            sync = asyncio.ensure_future(f.sync_async())
            await asyncio.sleep(0)   # issued (a slow build may finish some)
            for task in (write, read, sync):
                task.cancel()
            for task in (write, read, sync):
                with pytest.raises(asyncio.CancelledError):
                    await task
            # A regular file's operation runs to its end: once it has,
            # nothing of it is held any more.
            await until(lambda: f.pending == 0, "the operations' ends")
            del write, read, sync, task
            gc.collect()
            assert sys.getrefcount(data) == base_data   # the write's buffer
            assert sys.getrefcount(f) == base_file      # the requests
            await f.close_async()
    arun(main())


# ---- send_file_async ---------------------------------------------------------------

def test_send_file_async(backend, arun, tmp_file):
    payload = os.urandom(600_000)                # several chunk reads
    with open(tmp_file, "wb") as out:
        out.write(payload)

    async def body(srv, conn, reader, writer):
        f = srv.open_file(tmp_file)
        try:
            conn.send_raw(struct.pack(">I", len(payload)))
            assert await conn.send_file_async(f) == len(payload)
            assert await read_msg(reader) == payload
            conn.send_raw(struct.pack(">I", 10))
            assert await conn.send_file_async(f, offset=5, count=10) == 10
            assert await read_msg(reader) == payload[5:15]
        finally:
            await f.close_async()
    arun(pushing_server(backend, body))


def test_send_file_async_errors(backend, arun, tmp_file):
    with open(tmp_file, "wb") as out:
        out.write(b"0123456789")

    async def body(srv, conn, reader, writer):
        wonly = srv.open_file(tmp_file, "a")     # its reads fail
        with pytest.raises(OSError) as info:
            await conn.send_file_async(wonly)
        assert info.value.errno == errno.EBADF
        await wonly.close_async()
        f = srv.open_file(tmp_file)
        with pytest.raises(ValueError):
            await conn.send_file_async(f, 0, 11)  # past the end
        conn.abort()
        await until(lambda: conn.closed, "the close")
        with pytest.raises(ConnectionError):
            await conn.send_file_async(f)
        await f.close_async()
    arun(pushing_server(backend, body))


def test_cancelled_send_file_aborts_the_connection(backend, arun, tmp_file):
    with open(tmp_file, "wb") as out:
        out.truncate(64 << 20)                   # far more than the buffers

    async def body(srv, conn, reader, writer):
        f = srv.open_file(tmp_file)
        base = sys.getrefcount(f)
        task = asyncio.ensure_future(conn.send_file_async(f))
        await until(lambda: conn.unsent > 0, "the transfer under way")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the transfer stopped with its connection: its reads and its
        # buffer are gone, its reference to the File given back (by the
        # transfer's end notice, which may come after the close's)
        await until(lambda: conn.closed and f.pending == 0, "the abort")
        assert conn.close_reason == "closed"
        del task
        gc.collect()
        await until(lambda: sys.getrefcount(f) == base, "the File given back")
        await f.close_async()
    arun(pushing_server(backend, body))


# ---- Port.get_async() -----------------------------------------------------------

def test_get_async_from_another_thread(arun):
    async def main():
        with iocport.Port() as port:
            ticks = 0
            task = asyncio.ensure_future(port.get_async())
            await until(lambda: port.waiters == 1, "the wait")
            t = threading.Thread(target=port.post, args=(7, 3, "v"))
            t.start()
            while not task.done():               # the loop is never blocked
                ticks += 1
                await asyncio.sleep(0)
            t.join()
            assert task.result() == (7, 3, "v")
            assert ticks > 0
            assert port.waiters == 0 and port.running == 0  # not counted
    arun(main())


def test_get_async_takes_a_queued_packet_at_once(arun):
    async def main():
        with iocport.Port(concurrency=1) as port:
            port.post(1)
            port.post(2)
            assert (await port.get_async()).key == 1
            assert (await port.get_async(timeout=0)).key == 2
    arun(main())


def test_get_async_is_not_held_back_by_the_bound(arun):
    async def main():
        with iocport.Port(concurrency=1) as port:
            port.post(1)
            port.get()                          # this thread now runs
            assert port.running == 1
            port.post(2)
            assert (await port.get_async(timeout=DEADLINE)).key == 2
            port.leave()
    arun(main())


def test_get_async_waits_are_lifo(arun):
    async def main():
        with iocport.Port() as port:
            first = asyncio.ensure_future(port.get_async())
            await until(lambda: port.waiters == 1, "the first wait")
            second = asyncio.ensure_future(port.get_async())
            await until(lambda: port.waiters == 2, "the second wait")
            port.post(1)
            assert (await second).key == 1
            port.post(2)
            assert (await first).key == 2
    arun(main())


def test_get_async_timeout(arun):
    async def main():
        with iocport.Port() as port:
            with pytest.raises(TimeoutError):
                await port.get_async(timeout=0)
            with pytest.raises(TimeoutError):
                await port.get_async(timeout=0.01)
            assert port.waiters == 0
            with pytest.raises(ValueError):
                await port.get_async(timeout=-1)
            with pytest.raises(TypeError):
                await port.get_async(timeout="1")
    arun(main())


def test_get_async_on_close(arun):
    async def main():
        port = iocport.Port()
        task = asyncio.ensure_future(port.get_async())
        await until(lambda: port.waiters == 1, "the wait")
        port.close()
        with pytest.raises(iocport.PortClosedError):
            await asyncio.wait_for(task, DEADLINE)
        with pytest.raises(iocport.PortClosedError):
            await port.get_async()
    arun(main())


def test_cancelled_get_async_gives_the_packet_back(arun):
    async def main():
        with iocport.Port() as port:
            value = object()
            base = sys.getrefcount(value)
            task = asyncio.ensure_future(port.get_async())
            await until(lambda: port.waiters == 1, "the wait")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert port.waiters == 0 and port.queued == 0
            # handed a packet, then cancelled before it resumed: the packet
            # goes back to the queue
            task = asyncio.ensure_future(port.get_async())
            await until(lambda: port.waiters == 1, "the wait")
            port.post(5, 0, value)
            assert port.waiters == 0 and port.queued == 0     # handed
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert port.queued == 1
            assert port.get(timeout=0).value is value
            del task
            gc.collect()
            assert sys.getrefcount(value) == base
    arun(main())


def test_get_async_closes_its_eventfds(arun):
    def fds():
        return len(os.listdir("/proc/self/fd"))

    async def main():
        with iocport.Port() as port:
            before = fds()
            for i in range(50):
                task = asyncio.ensure_future(port.get_async())
                await until(lambda: port.waiters == 1, "the wait")
                if i % 2:
                    port.post(i)
                    assert (await task).key == i
                else:
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
            del task
            gc.collect()
            assert fds() == before
    arun(main())
