"""Connection.send_file: a range of a File streamed natively to a peer, with
messages sent meanwhile following the file, on both backends."""
import hashlib
import os
import queue
import random
import socket
import struct
import threading

import pytest

import iocport

from conftest import DEADLINE, wait_for

pytestmark = pytest.mark.timeout(60)

CHUNK = 256 * 1024          # the core reads this much at a time


class Sent:
    """send_file completions: (nbytes, error) and an event."""

    def __init__(self):
        self.calls = []
        self.done = threading.Event()

    def __call__(self, n, err):
        self.calls.append((n, err))
        self.done.set()

    def wait(self, timeout=DEADLINE):
        assert self.done.wait(timeout), "send_file callback never ran"
        return self.calls


@pytest.fixture
def conns(backend):
    """conns(handler=None, **kw) -> (server, accept) where accept() connects a
    plain client socket and returns (sock, server-side Connection)."""
    made, socks = [], []

    def make(handler=None, **kw):
        q = queue.Queue()
        srv = iocport.Server(handler or (lambda c, m: None), backend=backend,
                             on_connect=q.put, **kw)
        made.append(srv)
        address = srv.listen()
        srv.start()
        assert srv.backend == backend

        def accept():
            s = socket.create_connection(address, timeout=DEADLINE)
            socks.append(s)
            return s, q.get(timeout=DEADLINE)

        return srv, accept

    yield make
    for s in socks:
        s.close()
    for srv in made:
        srv.stop()


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(n - len(buf), 1 << 20))
        if not data:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def assert_nothing_more(sock):
    sock.setblocking(False)
    try:
        extra = sock.recv(1 << 16)
    except BlockingIOError:
        extra = None
    finally:
        sock.settimeout(DEADLINE)
    assert extra is None, f"unexpected extra bytes {extra[:40]!r}"


def framed(payload):
    return struct.pack(">I", len(payload)) + payload


def make_file(path, size, seed=1):
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("size", [0, 1, 1000, CHUNK, 3 * CHUNK + 12345])
@pytest.mark.parametrize("where", ["handler", "thread"])
def test_send_file_then_message(conns, tmp_path, size, where):
    content = make_file(tmp_path / "blob", size)
    holder = {}
    sent = Sent()

    def serve(conn):
        f = holder["f"]
        assert conn.send_raw(struct.pack(">I", size))
        assert conn.send_file(f, callback=sent) is None
        assert conn.send(b"after")

    def handler(conn, msg):
        if msg == b"get":
            serve(conn)

    srv, accept = conns(handler)
    holder["f"] = srv.open_file(tmp_path / "blob", "r")
    sock, conn = accept()
    if where == "handler":
        sock.sendall(framed(b"get"))         # served on the worker thread
    else:
        serve(conn)                          # served from this thread
    got = recv_exact(sock, 4 + size + 4 + 5)
    assert got[:4] == struct.pack(">I", size)
    assert got[4:4 + size] == content
    assert got[4 + size:] == framed(b"after")
    assert sent.wait() == [(size, None)]
    assert_nothing_more(sock)
    # The connection goes on working, and a second send_file may follow.
    sent2 = Sent()
    conn.send_file(holder["f"], callback=sent2)
    conn.send(b"again")
    assert recv_exact(sock, size + 9) == content + framed(b"again")
    assert sent2.wait() == [(size, None)]
    holder["f"].close()


@pytest.mark.parametrize("offset,count", [
    (0, 10), (1000, 5000), (CHUNK - 1, CHUNK + 2), (12345, None),
    (700000, 0), (700000, None), (699999, 1), (0, None)])
def test_send_file_range(conns, tmp_path, offset, count):
    size = 700000
    content = make_file(tmp_path / "blob", size, seed=3)
    srv, accept = conns()
    f = srv.open_file(tmp_path / "blob", "r")
    sock, conn = accept()
    sent = Sent()
    conn.send_file(f, offset, count, sent)
    conn.send(b"end")
    want = content[offset:] if count is None else content[offset:offset + count]
    assert recv_exact(sock, len(want) + 7) == want + framed(b"end")
    assert sent.wait() == [(len(want), None)]
    # Keyword form.
    sent = Sent()
    conn.send_file(f, offset=offset, count=count, callback=sent)
    assert recv_exact(sock, len(want)) == want
    assert sent.wait() == [(len(want), None)]
    f.close()


def test_send_file_past_the_end_raises_at_once(conns, tmp_path):
    make_file(tmp_path / "blob", 1000)
    srv, accept = conns()
    f = srv.open_file(tmp_path / "blob", "r")
    sock, conn = accept()
    called = Sent()
    with pytest.raises(ValueError):
        conn.send_file(f, 1001, callback=called)
    with pytest.raises(ValueError):
        conn.send_file(f, 1 << 40, callback=called)
    with pytest.raises(ValueError):
        conn.send_file(f, 0, 1001, callback=called)
    with pytest.raises(ValueError):
        conn.send_file(f, 999, 2, callback=called)
    with pytest.raises(ValueError):
        conn.send_file(f, 1000, 1, callback=called)
    with pytest.raises(ValueError):
        conn.send_file(f, -1)
    with pytest.raises(ValueError):
        conn.send_file(f, 0, -1)
    with pytest.raises(TypeError):
        conn.send_file(f, "0")
    with pytest.raises(TypeError):
        conn.send_file(f, 0, 1.5)
    with pytest.raises(TypeError):
        conn.send_file(b"not a file")
    with pytest.raises(TypeError):
        conn.send_file(f, callback=5)
    assert f.pending == 0
    assert not called.done.is_set()
    # None of those started a transfer: a valid one now runs.
    ok = Sent()
    conn.send_file(f, 1000, callback=ok)      # the end itself: 0 bytes
    conn.send(b"x")
    assert recv_exact(sock, 5) == framed(b"x")
    assert ok.wait() == [(0, None)]
    f.close()
    with pytest.raises(ValueError):
        conn.send_file(f)                     # a closed file


def statm_resident():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sparse_file(tmp_path, size, markers=None):
    """A file of `size` bytes, holes but for `markers` {offset: bytes}."""
    path = tmp_path / "sparse"
    with open(path, "wb") as fh:
        fh.truncate(size)
        for off, m in (markers or {}).items():
            fh.seek(off)
            fh.write(m)
    return path


def test_send_large_sparse_file_bounded_memory(conns, tmp_path, threads):
    size = 1 << 30
    markers = {0: b"first", 12345: b"marker-a", 300 * 1024 * 1024 + 7: b"marker-b",
               (1 << 29) - 3: b"across-a-chunk-edge", size - 4: b"last"}
    path = sparse_file(tmp_path, size, markers)
    assert os.path.getsize(path) == size
    # The expected hash, read back in chunks (never the whole file in memory).
    want = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(4 << 20)
            if not block:
                break
            want.update(block)
    want = want.hexdigest()

    srv, accept = conns()
    f = srv.open_file(path, "r")
    sock, conn = accept()
    baseline = statm_resident()
    peak = [baseline]
    result = {}

    def reader():
        h = hashlib.sha256()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        left = size
        n_reads = 0
        while left:
            n = sock.recv_into(view[:min(left, len(buf))])
            if n == 0:
                result["error"] = f"EOF with {left} bytes to go"
                return
            h.update(view[:n])
            left -= n
            n_reads += 1
            if n_reads % 64 == 0:
                peak[0] = max(peak[0], statm_resident())
        result["digest"] = h.hexdigest()
        result["tail"] = recv_exact(sock, 9)

    sent = Sent()
    t = threads(reader)
    conn.send_file(f, callback=sent)
    conn.send(b"done!")
    t.join(50)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["digest"] == want
    assert result["tail"] == framed(b"done!")
    assert sent.wait() == [(size, None)]
    growth = peak[0] - baseline
    assert growth < 64 * 1024 * 1024, f"resident memory grew {growth >> 20} MiB"
    f.close()


def test_slow_reader_keeps_memory_bounded(conns, tmp_path):
    """A peer that reads nothing for a while: the transfer waits rather than
    reading the whole file into memory."""
    size = 256 * 1024 * 1024
    path = sparse_file(tmp_path, size)
    srv, accept = conns()
    f = srv.open_file(path, "r")
    sock, conn = accept()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    baseline = statm_resident()
    sent = Sent()
    conn.send_file(f, callback=sent)
    # The transfer stalls on the full socket buffers; the bytes queued stay
    # small however long we wait.
    for _ in range(50):
        assert not sent.done.wait(0.01)
        assert conn.unsent < 16 * 1024 * 1024
    assert statm_resident() - baseline < 64 * 1024 * 1024
    left = size
    buf = bytearray(1 << 20)
    while left:
        n = sock.recv_into(buf, min(left, len(buf)))
        assert n, "EOF"
        assert buf[:n].count(0) == n
        left -= n
    assert sent.wait() == [(size, None)]
    f.close()


def transfer_under_way(conns, tmp_path, size):
    """send_file of a sparse file of `size` bytes, its first MiB received:
    (file, client socket, connection, Sent callback)."""
    srv, accept = conns()
    f = srv.open_file(sparse_file(tmp_path, size), "r")
    sock, conn = accept()
    sent = Sent()
    conn.send_file(f, callback=sent)
    recv_exact(sock, 1 << 20)
    return f, sock, conn, sent


@pytest.mark.parametrize("how", ["close", "reset"])
def test_peer_closing_mid_transfer_reports_error(conns, tmp_path, how):
    size = 512 * 1024 * 1024
    f, sock, conn, sent = transfer_under_way(conns, tmp_path, size)
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()                            # unread data: the kernel resets
    ((n, err),) = sent.wait()
    assert isinstance(err, OSError), (n, err)
    assert err.errno is not None
    assert 0 < n < size
    assert f.pending == 0
    # The file is fine, and can be closed.
    closed = threading.Event()
    f.close(lambda result, err: closed.set())
    assert closed.wait(DEADLINE)


def test_second_send_file_while_one_is_under_way(conns, tmp_path):
    size = 64 * 1024 * 1024
    path = sparse_file(tmp_path, size, {size - 3: b"end"})
    srv, accept = conns()
    f = srv.open_file(path, "r")
    g = srv.open_file(path, "r")
    sock, conn = accept()
    sent = Sent()
    conn.send_file(f, callback=sent)         # the client is not reading yet
    with pytest.raises(RuntimeError):
        conn.send_file(f)
    with pytest.raises(RuntimeError):
        conn.send_file(g, 0, 10)
    assert conn.send(b"follows")
    left = size
    tail = b""
    while left:
        data = sock.recv(min(left, 1 << 20))
        assert data, "EOF"
        left -= len(data)
        tail = (tail + data)[-3:]
    assert tail == b"end"
    assert recv_exact(sock, 11) == framed(b"follows")
    assert sent.wait() == [(size, None)]
    # Once it is over, another may start.
    again = Sent()
    conn.send_file(g, size - 3, 3, again)
    assert recv_exact(sock, 3) == b"end"
    assert again.wait() == [(3, None)]
    assert_nothing_more(sock)
    f.close()
    g.close()


def test_second_send_file_from_the_handler(conns, tmp_path):
    """On the worker thread too (the first send_file has already started)."""
    content = make_file(tmp_path / "blob", 5 * CHUNK, seed=9)
    holder = {}
    outcome = {}
    sent = Sent()

    def handler(conn, msg):
        conn.send_file(holder["f"], callback=sent)
        try:
            conn.send_file(holder["f"])
        except RuntimeError as e:
            outcome["second"] = e
        conn.send(b"after")

    srv, accept = conns(handler)
    holder["f"] = srv.open_file(tmp_path / "blob", "r")
    sock, conn = accept()
    sock.sendall(framed(b"go"))
    assert recv_exact(sock, len(content) + 9) == content + framed(b"after")
    assert isinstance(outcome.get("second"), RuntimeError)
    assert sent.wait() == [(len(content), None)]
    assert_nothing_more(sock)
    holder["f"].close()


def test_close_file_during_send_file_waits_for_it(conns, tmp_path):
    content = make_file(tmp_path / "blob", 20 * CHUNK + 5, seed=4)
    srv, accept = conns()
    f = srv.open_file(tmp_path / "blob", "r")
    fd = f.fd
    sock, conn = accept()
    order = []
    closed = threading.Event()

    def on_sent(n, err):
        order.append(("sent", n, err))

    def on_close(result, err):
        try:
            os.fstat(fd)
            state = "open"
        except OSError:
            state = "closed"
        order.append(("close", (result, err), state))
        closed.set()

    conn.send_file(f, callback=on_sent)
    f.close(on_close)
    assert f.closed
    with pytest.raises(ValueError):
        conn.send_file(f)
    assert recv_exact(sock, len(content)) == content
    assert closed.wait(DEADLINE)
    assert order == [("sent", len(content), None),
                     ("close", (None, None), "closed")]


def test_send_file_on_closed_connection(conns, tmp_path):
    make_file(tmp_path / "blob", 100)
    srv, accept = conns()
    f = srv.open_file(tmp_path / "blob", "r")
    sock, conn = accept()
    conn.close()
    sock.close()
    wait_for(lambda: conn.closed, what="the connection to close")
    with pytest.raises(ConnectionError):
        conn.send_file(f)
    assert f.pending == 0
    f.close()


def test_send_file_racing_close(conns, tmp_path):
    """close() from another thread is asynchronous: a send_file right after
    it either raises ConnectionError or runs to its callback, never hangs."""
    content = make_file(tmp_path / "blob", 10000, seed=8)   # fits the socket buffers
    srv, accept = conns()
    f = srv.open_file(tmp_path / "blob", "r")
    for _ in range(20):
        sock, conn = accept()
        conn.close()
        sent = Sent()
        try:
            conn.send_file(f, callback=sent)
        except ConnectionError:
            continue
        ((n, err),) = sent.wait()
        if err is None:
            # Sent in full before the (graceful) close completed.
            assert n == len(content)
            assert recv_exact(sock, n) == content
        else:
            assert isinstance(err, OSError)
    wait_for(lambda: f.pending == 0, what="no transfer left")
    f.close()


def test_connection_closed_by_server_during_send_file(conns, tmp_path):
    size = 256 * 1024 * 1024
    f, sock, conn, sent = transfer_under_way(conns, tmp_path, size)
    conn.abort()
    ((n, err),) = sent.wait()
    assert isinstance(err, OSError)
    assert n < size
    f.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_during_send_file(backend, tmp_path, workers):
    size = 256 * 1024 * 1024
    path = sparse_file(tmp_path, size)
    q = queue.Queue()
    srv = iocport.Server(lambda c, m: None, backend=backend, workers=workers,
                         on_connect=q.put)
    address = srv.listen()
    srv.start()
    socks = []
    try:
        f = srv.open_file(path, "r")
        sents = []
        for _ in range(4):
            s = socket.create_connection(address, timeout=DEADLINE)
            socks.append(s)
            conn = q.get(timeout=DEADLINE)
            sent = Sent()
            sents.append(sent)
            conn.send_file(f, callback=sent)
        recv_exact(socks[0], 1 << 20)
        srv.stop()             # must not hang on the stalled transfers
        for sent in sents:
            ((n, err),) = sent.wait()
            assert n < size
            assert isinstance(err, OSError)
        assert f.pending == 0
        f.close()
    finally:
        for s in socks:
            s.close()
        srv.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_many_connections_send_the_same_file(conns, tmp_path, threads, workers):
    content = make_file(tmp_path / "blob", 2 * CHUNK + 999, seed=5)
    holder = {}
    done = threading.Semaphore(0)

    def handler(conn, msg):
        start, count = struct.unpack(">II", msg)
        conn.send_file(holder["f"], start, count, lambda n, e: done.release())
        conn.send(msg)

    srv, accept = conns(handler, workers=workers)
    holder["f"] = srv.open_file(tmp_path / "blob", "r")
    failures = []

    def client(i):
        rng = random.Random(i)
        try:
            sock, _ = accept()
            for _ in range(5):
                start = rng.randrange(0, len(content))
                count = rng.randrange(0, len(content) - start + 1)
                req = struct.pack(">II", start, count)
                sock.sendall(framed(req))
                got = recv_exact(sock, count + 12)
                if got != content[start:start + count] + framed(req):
                    failures.append(i)
        except Exception as e:
            failures.append((i, repr(e)))

    for i in range(10):
        threads(client, i)
    for t in threads.started:
        t.join(DEADLINE)
    assert failures == []
    for _ in range(50):
        assert done.acquire(timeout=DEADLINE)
    holder["f"].close()
