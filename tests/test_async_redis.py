"""A real asyncio library in a coroutine handler (issue 16, part 4): the
handlers await redis-py's asyncio client (``redis.asyncio``) against a real
``redis-server`` this module starts (127.0.0.1, a free port, no persistence,
in a temporary directory; stopped at the end), on both backends and on both
loops (asyncio's and uvloop's).

Each test runs twice: with the handler's first redis-py call made at once
("direct", as the issue's example does) and after one ``await
asyncio.sleep(0)``.  "Direct" is the case that needs the handler's eager
start to run inside a Task: from Python 3.11.3 on redis-py enters
``asyncio.timeout()`` around its connect and its reads, which raises
"Timeout should be used inside a task" where ``asyncio.current_task()`` is
None (it did, before the bridge's host Task).

Skips when ``redis-server`` (Debian: ``apt-get install redis-server``) or
the ``redis`` package (the ``test`` extra) is missing; ``.ci/run`` installs
both.  No test measures time: every wait is for a condition, bounded by
DEADLINE.
"""
import asyncio
import os
import shutil
import socket
import struct

import pytest

import iocport
from conftest import DEADLINE
from test_async import arun, exchange, frame, loop_kind, read_msg, until  # noqa: F401

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed "
                              "(apt-get install redis-server)"),
]
redis = pytest.importorskip("redis", reason="redis-py is not installed "
                                            "(pip install redis, or the test extra)")
aioredis = pytest.importorskip("redis.asyncio")


@pytest.fixture(params=["direct", "after sleep(0)"])
def first_await(request):
    """What a handler does before its first redis-py call (see above)."""
    async def before():
        if request.param != "direct":
            await asyncio.sleep(0)
    return before


@pytest.fixture
def redis_url(redis_port):
    """The server's URL, its data flushed before the test."""
    with redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=DEADLINE) as db:
        db.flushall()
    return f"redis://127.0.0.1:{redis_port}/0"


def test_each_message_sets_and_gets_through_redis_in_order(backend, arun, redis_url,
                                                           first_await):
    """Each message: INCR of its connection's counter, SET of the message
    under that number, GET of it back, the reply built from what Redis
    returned.  Ten connections, 100 pipelined messages each: every reply
    arrives, in order, numbered 1, 2, 3... (one handler at a time per
    connection), and Redis holds every message once."""
    async def main():
        db = aioredis.Redis.from_url(redis_url, socket_timeout=DEADLINE)
        ids = set()

        async def on_message(conn, msg):
            ids.add(conn.id)
            await first_await()
            n = await db.incr(f"count:{conn.id}")
            await db.set(f"msg:{conn.id}:{n}", msg)
            conn.send(b"%d " % n + await db.get(f"msg:{conn.id}:{n}"))

        try:
            async with iocport.Server(on_message, backend=backend) as srv:
                address = srv.listen()
                srv.start()
                msgs = [[b"c%d-m%d" % (c, i) for i in range(100)] for c in range(10)]
                replies = await asyncio.gather(*(exchange(address, m) for m in msgs))
                for sent, got in zip(msgs, replies):
                    assert got == [b"%d %s" % (i + 1, m) for i, m in enumerate(sent)]
            assert len(ids) == 10
            assert sorted([int(await db.get(f"count:{i}")) for i in ids]) == [100] * 10
            keys = [k async for k in db.scan_iter(match="msg:*", count=1000)]
            assert len(keys) == 1000
            # the client spread the handlers' commands over several sockets
            # of its pool (a suspended handler holds one)
            pool = db.connection_pool
            assert len(pool._available_connections) + len(pool._in_use_connections) > 1
        finally:
            await db.aclose()
    arun(main())


def test_handlers_wait_on_redis_lists_and_a_close_cancels_one(backend, arun, redis_url,
                                                               first_await):
    """A handler blocks in BLPOP until the test pushes its answer, on
    several connections at once; a connection closed while its handler
    waits cancels that handler (the CancelledError reaches the coroutine
    inside redis-py), and the client goes on serving the others."""
    async def main():
        db = aioredis.Redis.from_url(redis_url, socket_timeout=None)
        pusher = aioredis.Redis.from_url(redis_url, socket_timeout=DEADLINE)
        waiting, cancelled, closed, errors = set(), [], [], []

        async def on_message(conn, msg):
            await first_await()
            waiting.add(msg)
            try:
                _, value = await db.blpop([b"q:" + msg], timeout=0)   # no timeout
            except asyncio.CancelledError:
                cancelled.append(msg)
                raise
            except Exception as exc:      # (logged by the server): fail now
                errors.append(exc)
                raise
            finally:
                waiting.discard(msg)
            conn.send(value)

        def on_close(conn):
            closed.append(conn.close_reason)

        try:
            async with iocport.Server(on_message, on_close=on_close,
                                      backend=backend) as srv:
                address = srv.listen()
                srv.start()
                streams = [await asyncio.open_connection(*address) for _ in range(4)]
                for i, (_, writer) in enumerate(streams):
                    writer.write(frame(b"k%d" % i))
                await until(lambda: errors or len(waiting) == 4, "four handlers in BLPOP")
                assert not errors, errors
                # the last connection goes away while its handler waits (a
                # reset: after a FIN alone the server would wait for the reply)
                gone = streams[3][1]
                gone.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                gone.transport.abort()
                await until(lambda: cancelled == [b"k3"], "the handler cancelled")
                for i in (2, 0, 1):
                    await pusher.rpush(b"q:k%d" % i, b"answer %d" % i)
                    assert await read_msg(streams[i][0]) == b"answer %d" % i
                # the pool still works after the cancelled command
                streams[0][1].write(frame(b"again"))
                await until(lambda: waiting == {b"again"}, "a new BLPOP")
                await pusher.rpush(b"q:again", b"once more")
                assert await read_msg(streams[0][0]) == b"once more"
                for _, writer in streams[:3]:
                    writer.close()
                await until(lambda: len(closed) == 4, "every connection closed")
            assert cancelled == [b"k3"]
            assert await pusher.llen(b"q:k3") == 0      # nothing was popped for it
        finally:
            await db.aclose()
            await pusher.aclose()
    arun(main())


def test_stop_cancels_handlers_waiting_on_redis(backend, arun, redis_url, first_await):
    """Leaving `async with` while handlers wait in redis-py cancels them and
    returns; the client still answers afterwards."""
    async def main():
        db = aioredis.Redis.from_url(redis_url, socket_timeout=None)
        waiting, cancelled = [], []

        async def on_message(conn, msg):
            await first_await()
            waiting.append(msg)
            try:
                await db.blpop([b"never"], timeout=0)
            except asyncio.CancelledError:
                cancelled.append(msg)
                raise

        try:
            async with iocport.Server(on_message, backend=backend) as srv:
                address = srv.listen()
                srv.start()
                streams = [await asyncio.open_connection(*address) for _ in range(5)]
                for i, (_, writer) in enumerate(streams):
                    writer.write(frame(b"m%d" % i))
                await until(lambda: len(waiting) == 5, "five handlers in BLPOP")
            assert sorted(cancelled) == [b"m%d" % i for i in range(5)]
            for _, writer in streams:
                writer.close()
            assert await db.ping()
        finally:
            await db.aclose()
    arun(main())
