"""File objects (Server.open_file / adopt_file): overlapped reads, writes,
appends, syncs and close, run by the workers, on both backends."""
import errno
import gc
import hashlib
import json
import logging
import os
import random
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

import iocport

from conftest import CHILD_CWD, DEADLINE, Codec, child_env, recv_messages

pytestmark = pytest.mark.timeout(60)


def ignore(conn, msg):
    pass


class Calls:
    """Thread-safe record of callback invocations, with an event once `want`
    of them arrived."""

    def __init__(self, want=1):
        self.want = want
        self.lock = threading.Lock()
        self.calls = []
        self.done = threading.Event()
        if want == 0:
            self.done.set()

    def __call__(self, *args):
        with self.lock:
            self.calls.append(args)
            if len(self.calls) >= self.want:
                self.done.set()

    def wait(self, timeout=DEADLINE):
        assert self.done.wait(timeout), \
            f"{len(self.calls)} of {self.want} callbacks after {timeout}s"
        return self.calls


@pytest.fixture
def servers(backend):
    made = []

    def make(handler=ignore, *, listen=False, start=True, **kw):
        srv = iocport.Server(handler, backend=backend, **kw)
        made.append(srv)
        if listen:
            srv.listen()
        if start:
            srv.start()
            assert srv.backend == backend
        return srv

    yield make
    for srv in made:
        srv.stop()


def read_sync(f, offset, size):
    """Issue f.read and wait for its completion: (data, error)."""
    got = Calls(1)
    assert f.read(offset, size, got) == offset
    (result,) = got.wait()
    return result


# ---- writes and reads -----------------------------------------------------------

def test_write_at_offsets_then_read_back(servers, tmp_path):
    srv = servers()
    path = tmp_path / "offsets.dat"
    f = srv.open_file(path, "w+")
    rng = random.Random(1)
    # Non-overlapping pieces at scattered offsets, issued out of order, with
    # holes between them (holes read back as zeros).
    pieces = []
    off = 0
    for i in range(64):
        off += rng.randrange(0, 3000)             # a hole
        data = rng.randbytes(rng.randrange(1, 5000))
        pieces.append((off, data))
        off += len(data)
    rng.shuffle(pieces)
    done = Calls(len(pieces))
    for off, data in pieces:
        assert f.write(data, off, done) == off
    calls = done.wait()
    assert sorted(calls, key=lambda c: c[0]) == \
        sorted(((len(d), None) for _, d in pieces), key=lambda c: c[0])
    assert f.pending == 0

    expect = bytearray(max(o + len(d) for o, d in pieces))
    for o, d in pieces:
        expect[o:o + len(d)] = d
    # Each piece read back through the File, and the whole file at once.
    reads = Calls(len(pieces))
    for o, d in pieces:
        f.read(o, len(d), lambda data, err, o=o: reads(o, data, err))
    by_off = {o: (data, err) for o, data, err in reads.wait()}
    for o, d in pieces:
        assert by_off[o] == (d, None)
    assert read_sync(f, 0, len(expect)) == (bytes(expect), None)
    # And independently of iocport.
    assert path.read_bytes() == bytes(expect)
    # Explicit offsets never move the append offset (still 0 for "w+").
    assert f.append_offset == 0
    closed = Calls(1)
    f.close(closed)
    assert closed.wait() == [(None, None)]
    assert f.closed and f.fd == -1


def test_write_accepts_buffers_and_large_writes(servers, tmp_path):
    srv = servers()
    f = srv.open_file(tmp_path / "buf.dat", "w+")
    big = random.Random(2).randbytes(8 * 1024 * 1024 + 7)
    done = Calls(4)
    assert f.write(b"abc", callback=done) == 0
    assert f.write(bytearray(b"defg"), callback=done) == 3
    assert f.write(memoryview(b"..hij..")[2:5], callback=done) == 7
    assert f.write(big, callback=done) == 10
    assert sorted(done.wait()) == sorted([(3, None), (4, None), (3, None),
                                          (len(big), None)])
    assert f.append_offset == 10 + len(big)
    data, err = read_sync(f, 0, 10 + len(big))
    assert err is None and data == b"abcdefghij" + big
    f.close()


def test_sync_and_fdatasync(servers, tmp_path):
    srv = servers()
    f = srv.open_file(tmp_path / "sync.dat", "w")
    done = Calls(3)
    f.write(b"x" * 10000, callback=done)
    f.sync(done)
    f.sync(callback=done, data_only=True)
    calls = done.wait()
    assert sorted(calls, key=repr) == sorted([(10000, None), (None, None),
                                              (None, None)], key=repr)
    f.sync()            # no callback: fine too
    closed = Calls(1)
    f.close(closed)
    closed.wait()
    assert (tmp_path / "sync.dat").read_bytes() == b"x" * 10000


def test_adopt_file_appends_at_current_size(servers, tmp_path):
    srv = servers()
    path = tmp_path / "adopt.dat"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDWR)
    f = srv.adopt_file(fd)
    assert f.fd == fd and not f.closed
    assert f.append_offset == 10
    done = Calls(2)
    assert f.write(b"abc", callback=done) == 10
    assert f.write(b"def", callback=done) == 13
    done.wait()
    assert f.append_offset == 16
    closed = Calls(1)
    f.close(closed)
    closed.wait()
    with pytest.raises(OSError) as e:
        os.fstat(fd)
    assert e.value.errno == errno.EBADF
    assert path.read_bytes() == b"0123456789abcdef"


def test_open_modes(servers, tmp_path):
    srv = servers()
    path = tmp_path / "modes.dat"
    path.write_bytes(b"hello world")
    # "a" keeps the content, appends after it.
    f = srv.open_file(path, "a")
    assert f.append_offset == 11
    done = Calls(1)
    f.write(b"!", callback=done)
    done.wait()
    f.close()
    assert path.read_bytes() == b"hello world!"
    # "r" reads it; "w" truncates it; "x" refuses an existing file.
    f = srv.open_file(path, "r")
    assert read_sync(f, 6, 100) == (b"world!", None)
    f.close()
    with pytest.raises(FileExistsError):
        srv.open_file(path, "x")
    f = srv.open_file(path, "w")
    assert f.append_offset == 0
    f.close()
    assert path.read_bytes() == b""
    f = srv.open_file(tmp_path / "new.dat", "x")
    f.close()
    assert (tmp_path / "new.dat").exists()


def test_reads_past_the_end(servers, tmp_path):
    srv = servers()
    path = tmp_path / "short.dat"
    content = bytes(range(100))
    path.write_bytes(content)
    f = srv.open_file(path, "r")
    assert read_sync(f, 90, 50) == (content[90:], None)       # short
    assert read_sync(f, 0, 1000) == (content, None)           # short
    assert read_sync(f, 100, 10) == (b"", None)               # at EOF
    assert read_sync(f, 5000, 10) == (b"", None)              # beyond EOF
    assert read_sync(f, 1 << 40, 10) == (b"", None)           # far beyond
    assert read_sync(f, 10, 0) == (b"", None)                 # empty read
    assert read_sync(f, 0, 100) == (content, None)            # exact
    f.close()


# ---- concurrent appends --------------------------------------------------------

RECORD = re.compile(rb"<(\d{3}):(\d{4}):(\d{4}):([0-9a-f]*)>\n")


def record(cid, seq):
    """A distinct, self-delimiting record whose payload depends on (cid, seq)
    and whose length varies, so an interleaving cannot parse."""
    n = (cid * 7919 + seq * 104729) % 400
    seed = hashlib.sha256(b"%d/%d" % (cid, seq)).hexdigest().encode()
    payload = (seed * (n // len(seed) + 1))[:n]
    return b"<%03d:%04d:%04d:%s>\n" % (cid, seq, n, payload)


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_appends_from_many_connections(servers, tmp_path, threads, workers):
    nconns, per_conn = 50, 100
    path = tmp_path / "appends.dat"
    holder = {}

    def handler(conn, msg):
        # Reply only once the append completed; the reply names the record.
        def written(n, err):
            conn.send(b"ok %d %s" % (n, msg[1:13]) if err is None
                      else b"error " + str(err).encode())
        holder["f"].write(msg, callback=written)

    srv = servers(handler, listen=True, workers=workers, start=False)
    srv.start()
    holder["f"] = srv.open_file(path, "w+")
    address = srv.address
    codec_spec = iocport.LengthPrefixed(4)
    failures = []

    def client(cid):
        try:
            with socket.create_connection(address, timeout=DEADLINE) as s:
                codec = Codec(codec_spec)
                recs = [record(cid, seq) for seq in range(per_conn)]
                s.sendall(b"".join(codec.encode(r) for r in recs))
                replies = recv_messages(s, codec, per_conn)
                want = sorted(b"ok %d %s" % (len(r), r[1:13]) for r in recs)
                if sorted(replies) != want:
                    failures.append((cid, replies[:3]))
        except Exception as e:       # reported by the main thread
            failures.append((cid, repr(e)))

    for cid in range(nconns):
        threads(client, cid)
    for t in threads.started:
        t.join(DEADLINE * 2)
        assert not t.is_alive()
    assert failures == []

    f = holder["f"]
    closed = Calls(1)
    f.close(closed)
    closed.wait()
    data = path.read_bytes()
    expected_size = sum(len(record(c, s)) for c in range(nconns) for s in range(per_conn))
    assert len(data) == expected_size
    # Parse the whole file: records back to back, nothing else.
    seen = {}
    pos = 0
    order = {c: [] for c in range(nconns)}
    while pos < len(data):
        m = RECORD.match(data, pos)
        assert m is not None, f"unparsable (interleaved?) bytes at {pos}: {data[pos:pos + 60]!r}"
        cid, seq = int(m.group(1)), int(m.group(2))
        assert len(m.group(4)) == int(m.group(3))
        assert m.group(0) == record(cid, seq), f"record {cid}/{seq} corrupted"
        assert (cid, seq) not in seen, f"record {cid}/{seq} twice"
        seen[(cid, seq)] = pos
        order[cid].append(seq)
        pos = m.end()
    assert len(seen) == nconns * per_conn
    for cid in range(nconns):
        assert order[cid] == list(range(per_conn)), f"connection {cid} out of order"


def test_appends_from_many_threads_land_in_issue_order(servers, tmp_path, threads):
    """Appends issued from several Python threads at once never overlap, and
    each thread's appends land in the order it issued them; the returned
    offsets are exactly where they landed."""
    srv = servers()
    path = tmp_path / "threads.dat"
    f = srv.open_file(path, "w")
    nthreads, per_thread = 8, 300
    done = Calls(nthreads * per_thread)
    offsets = {}

    def appender(t):
        mine = []
        for seq in range(per_thread):
            rec = record(t, seq)
            mine.append((f.write(rec, callback=done), rec))
        offsets[t] = mine

    for t in range(nthreads):
        threads(appender, t)
    for th in threads.started:
        th.join(DEADLINE)
    calls = done.wait()
    assert all(err is None for _, err in calls)
    closed = Calls(1)
    f.close(closed)
    closed.wait()
    data = path.read_bytes()
    assert len(data) == sum(len(r) for m in offsets.values() for _, r in m)
    for t, mine in offsets.items():
        offs = [o for o, _ in mine]
        assert offs == sorted(offs), f"thread {t}'s appends out of order"
        for o, rec in mine:
            assert data[o:o + len(rec)] == rec


# ---- errors ----------------------------------------------------------------------

EFBIG_SCRIPT = textwrap.dedent("""
    import errno, json, resource, signal, sys, threading
    import iocport

    backend, path = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))

    srv = iocport.Server(lambda c, m: None, backend=backend)
    srv.start()
    f = srv.open_file(path, "w")
    results = {}
    done = threading.Event()
    lock = threading.Lock()

    def cb(name):
        def call(n, err):
            with lock:
                results[name] = [n, None if err is None else
                                 [type(err).__name__, err.errno]]
                if len(results) == 4:
                    done.set()
        return call

    f.write(b"a" * 1000, 0, cb("inside"))
    f.write(b"b" * 100, 4096, cb("at_limit"))
    f.write(b"c" * 100, 1 << 20, cb("beyond"))
    f.write(b"d" * 8192, 8192 * 4, cb("far"))
    ok = done.wait(20)
    closed = threading.Event()
    f.close(lambda result, err: closed.set())
    closed.wait(20)
    # A write that crosses the limit: part fits, the rest is refused.
    f2 = srv.open_file(path + ".2", "w")
    crossing = []
    ev = threading.Event()
    f2.write(b"e" * 8192, 0, lambda n, err: (crossing.append(
        [n, None if err is None else [type(err).__name__, err.errno]]), ev.set()))
    ev.wait(20)
    f2.close()
    srv.stop()
    print(json.dumps({"ok": ok, "results": results, "crossing": crossing}))
""")


def test_write_past_rlimit_fsize_reports_efbig(backend, tmp_path):
    # RLIMIT_FSIZE is set only in a subprocess (with SIGXFSZ ignored).
    path = str(tmp_path / "efbig.dat")
    proc = subprocess.run([sys.executable, "-c", EFBIG_SCRIPT, backend, path],
                          capture_output=True, text=True, timeout=50,
                          env=child_env(), cwd=CHILD_CWD)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"], out
    res = out["results"]
    assert res["inside"] == [1000, None]
    efbig = [None, ["OSError", errno.EFBIG]]
    assert res["at_limit"] == efbig
    assert res["beyond"] == efbig
    assert res["far"] == efbig
    # Crossing the limit writes what fits, then the rest fails: the caller
    # must hear of the failure.
    assert out["crossing"] == [efbig]
    assert os.path.getsize(path) == 1000


def test_read_on_write_only_file_is_ebadf(servers, tmp_path):
    srv = servers()
    f = srv.open_file(tmp_path / "wo.dat", "w")
    got = Calls(1)
    f.write(b"data", 0, got)
    got.wait()
    data, err = read_sync(f, 0, 4)
    assert data is None
    assert isinstance(err, OSError) and err.errno == errno.EBADF
    f.close()
    # And the converse: a write on a read-only file.
    f = srv.open_file(tmp_path / "wo.dat", "r")
    got = Calls(1)
    f.write(b"more", callback=got)
    ((n, err),) = got.wait()
    assert n is None and isinstance(err, OSError) and err.errno == errno.EBADF
    assert read_sync(f, 0, 10) == (b"data", None)   # the file still works
    f.close()


def test_close_waits_for_operations_in_flight(servers, tmp_path):
    srv = servers()
    path = tmp_path / "inflight.dat"
    f = srv.open_file(path, "w+")
    fd = f.fd
    events = []
    lock = threading.Lock()
    finished = threading.Event()
    n = 200
    chunk = 4096

    def on_write(i):
        def cb(nbytes, err):
            with lock:
                events.append(("write", i, nbytes, err))
        return cb

    def on_close(*args):
        # By now the descriptor is closed.
        try:
            os.fstat(fd)
            state = "open"
        except OSError as e:
            state = e.errno
        with lock:
            events.append(("close", args, state, f.fd))
        finished.set()

    for i in range(n):
        f.write(bytes([i % 251]) * chunk, i * chunk, on_write(i))
    f.close(on_close)
    assert f.closed
    assert finished.wait(DEADLINE)
    assert len(events) == n + 1
    assert events[-1] == ("close", (None, None), errno.EBADF, -1)
    writes = events[:-1]
    assert sorted(e[1] for e in writes) == list(range(n))
    assert all(e[2] == chunk and e[3] is None for e in writes)
    assert f.pending == 0 and f.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    assert path.read_bytes() == b"".join(bytes([i % 251]) * chunk for i in range(n))


def test_close_with_nothing_in_flight_and_twice(servers, tmp_path):
    srv = servers()
    f = srv.open_file(tmp_path / "idle.dat", "w")
    closed = Calls(1)
    f.close(closed)
    assert closed.wait() == [(None, None)]
    assert f.closed and f.fd == -1
    f.close()           # idempotent
    assert f.closed
    assert "closed" in repr(f)


def test_close_callback_gets_result_and_error_like_the_others(servers,
                                                            tmp_path):
    # close's callback takes (result, error) like read, write and sync:
    # (None, None) once the operations in flight are done.
    srv = servers()
    f = srv.open_file(tmp_path / "two.dat", "w+")
    wrote = Calls(1)
    f.write(b"abc", 0, wrote)
    assert wrote.wait() == [(3, None)]
    ops = Calls(2)
    f.sync(lambda *args: ops("sync", args))
    f.read(0, 3, lambda *args: ops("read", args))
    closed = Calls(1)
    f.close(closed)
    assert closed.wait() == [(None, None)]
    assert f.pending == 0
    assert sorted(ops.wait()) == [("read", (b"abc", None)),
                                  ("sync", (None, None))]


def test_close_failure_reaches_the_callback_as_oserror(servers, tmp_path):
    # A descriptor closed behind the File's back: close(2) says EBADF, and
    # the callback gets (None, OSError) as a failed read or write would.
    # The server is not started, so no other thread here can take the
    # number between the two closes.
    srv = servers(start=False)
    fd = os.open(tmp_path / "gone.dat", os.O_RDWR | os.O_CREAT, 0o644)
    f = srv.adopt_file(fd)
    os.close(fd)
    closed = Calls(1)
    f.close(closed)
    ((result, err),) = closed.wait()
    assert result is None
    assert isinstance(err, OSError) and err.errno == errno.EBADF
    assert f.closed and f.fd == -1


def test_operations_after_close_raise_valueerror(servers, tmp_path):
    srv = servers(listen=True)
    f = srv.open_file(tmp_path / "closed.dat", "w+")
    f.close()
    with pytest.raises(ValueError):
        f.write(b"x")
    with pytest.raises(ValueError):
        f.write(b"x", 0, lambda n, e: None)
    with pytest.raises(ValueError):
        f.read(0, 1, lambda d, e: None)
    with pytest.raises(ValueError):
        f.sync()
    with pytest.raises(ValueError):
        f.sync(data_only=True)
    assert f.pending == 0


def test_operations_need_a_running_server(backend, tmp_path):
    srv = iocport.Server(ignore, backend=backend)
    try:
        f = srv.open_file(tmp_path / "idle.dat", "w+")
        with pytest.raises(RuntimeError):
            f.write(b"x")
        with pytest.raises(RuntimeError):
            f.read(0, 1, lambda d, e: None)
        with pytest.raises(RuntimeError):
            f.sync()
        assert f.pending == 0
        srv.start()
        done = Calls(1)
        f.write(b"now", callback=done)
        assert done.wait() == [(3, None)]
        srv.stop()
        with pytest.raises(RuntimeError):
            f.write(b"x")
        assert f.pending == 0
        f.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_with_operations_in_flight(backend, tmp_path, workers):
    srv = iocport.Server(ignore, backend=backend, workers=workers)
    srv.start()
    try:
        files = [srv.open_file(tmp_path / f"stop{i}.dat", "w+") for i in range(2)]
        chunk = 64 * 1024
        issued = []
        lock = threading.Lock()
        results = []

        def cb_for(kind, f, off, data):
            def cb(a, err):
                with lock:
                    results.append((kind, f, off, data, a, err))
            return cb

        for i in range(300):
            f = files[i % 2]
            data = bytes([i % 256]) * chunk
            off = (i // 2) * chunk
            f.write(data, off, cb_for("write", f, off, data))
            issued.append("write")
            if i % 10 == 0:
                f.sync(cb_for("sync", f, None, None))
                f.read(0, chunk, cb_for("read", f, 0, None))
                issued += ["sync", "read"]
        srv.stop()
        # stop() joined the workers: every completion has been delivered.
        assert len(results) == len(issued)
        for kind, f, off, data, a, err in results:
            if err is not None:
                assert isinstance(err, OSError)
                assert err.errno == errno.ECANCELED, err
                assert a is None
            elif kind == "write":
                assert a == len(data)
        for f in files:
            assert f.pending == 0
            with pytest.raises(RuntimeError):
                f.write(b"late")
        # Writes that reported success are on disk.
        for f in files:
            closed = Calls(1)
            f.close(closed)
            closed.wait()
        contents = {id(f): (tmp_path / f"stop{i}.dat").read_bytes()
                    for i, f in enumerate(files)}
        for kind, f, off, data, a, err in results:
            if kind == "write" and err is None:
                assert contents[id(f)][off:off + len(data)] == data
    finally:
        srv.stop()


def test_file_dropped_with_operations_in_flight(servers, tmp_path):
    srv = servers()
    path = tmp_path / "dropped.dat"
    f = srv.open_file(path, "w")
    done = Calls(50)
    for i in range(50):
        f.write(b"%04d" % i, callback=done)
    del f
    gc.collect()
    calls = done.wait()
    assert all(c == (4, None) for c in calls)
    gc.collect()
    assert path.read_bytes() == b"".join(b"%04d" % i for i in range(50))


def test_callback_that_raises_is_logged(servers, tmp_path, caplog):
    srv = servers()
    f = srv.open_file(tmp_path / "raise.dat", "w")
    logged = threading.Event()

    class Handler(logging.Handler):
        def emit(self, record):
            if "file callback raised" in record.getMessage():
                logged.set()

    h = Handler()
    logging.getLogger("iocport").addHandler(h)
    try:
        f.write(b"x", callback=lambda n, e: 1 / 0)
        assert logged.wait(DEADLINE)
        done = Calls(1)
        f.write(b"y", callback=done)         # the file goes on working
        assert done.wait() == [(1, None)]
    finally:
        logging.getLogger("iocport").removeHandler(h)
    f.close()


def test_wrong_arguments(servers, tmp_path):
    srv = servers()
    path = tmp_path / "args.dat"
    with pytest.raises(FileNotFoundError):
        srv.open_file(tmp_path / "missing" / "nope.dat", "r")
    with pytest.raises(FileNotFoundError):
        srv.open_file(tmp_path / "nope.dat")
    with pytest.raises(ValueError):
        srv.open_file(path, "rw")
    with pytest.raises(ValueError):
        srv.open_file(path, "rb")
    with pytest.raises(ValueError):
        srv.open_file(path, 1)
    with pytest.raises(TypeError):
        srv.open_file(1.5, "w")
    with pytest.raises(TypeError):
        srv.adopt_file("3")
    with pytest.raises(TypeError):
        srv.adopt_file(True)
    with pytest.raises(TypeError):
        srv.adopt_file(3.0)
    with pytest.raises(OSError):
        srv.adopt_file(-1)
    f = srv.open_file(path, "w+")
    cb = lambda *a: None          # noqa: E731
    with pytest.raises(TypeError):
        f.write("text")
    with pytest.raises(TypeError):
        f.write(12)
    with pytest.raises(TypeError):
        f.write(None)
    with pytest.raises(TypeError):
        f.write(b"x", "0")
    with pytest.raises(TypeError):
        f.write(b"x", 1.0)
    with pytest.raises(TypeError):
        f.write(b"x", True)
    with pytest.raises(ValueError):
        f.write(b"x", -1)
    with pytest.raises(ValueError):
        f.write(b"x", 1 << 64)
    with pytest.raises(TypeError):
        f.write(b"x", 0, 5)
    with pytest.raises(TypeError):
        f.write(b"x", callback="nope")
    with pytest.raises(TypeError):
        f.read(0, 10)                    # the callback is required
    with pytest.raises(TypeError):
        f.read(0, 10, None)
    with pytest.raises(TypeError):
        f.read("0", 10, cb)
    with pytest.raises(TypeError):
        f.read(0, "10", cb)
    with pytest.raises(ValueError):
        f.read(-1, 10, cb)
    with pytest.raises(ValueError):
        f.read(0, -1, cb)
    with pytest.raises(TypeError):
        f.sync(5)
    with pytest.raises(TypeError):
        f.sync(None, True)               # data_only is keyword-only
    with pytest.raises(TypeError):
        f.close(5)
    with pytest.raises(TypeError):
        type(f)()
    assert f.pending == 0 and not f.closed
    # Nothing was issued by the failed calls, and the file still works.
    done = Calls(1)
    f.write(b"fine", callback=done)
    assert done.wait() == [(4, None)]
    assert f.append_offset == 4
    f.close()


def test_offsets_beyond_off_t_are_einval(servers, tmp_path):
    """Offsets the kernel cannot take fail with EINVAL on both backends
    (on io_uring an offset of 2**64-1 would mean "the file position")."""
    srv = servers()
    path = tmp_path / "huge.dat"
    f = srv.open_file(path, "w+")
    for off in (2**64 - 1, 2**63, 2**63 - 1):
        got = Calls(1)
        assert f.write(b"XYZ", off, got) == off
        ((n, err),) = got.wait()
        assert n is None and isinstance(err, OSError) and err.errno == errno.EINVAL
        data, err = read_sync(f, off, 3)
        assert data is None and err.errno == errno.EINVAL
    assert f.append_offset == 0
    f.close()
    assert path.read_bytes() == b""


FIFO_SCRIPT = textwrap.dedent("""
    import json, os, sys, threading
    import iocport

    backend, path = sys.argv[1], sys.argv[2]
    os.mkfifo(path)
    srv = iocport.Server(lambda c, m: None, backend=backend)
    srv.start()
    out = {}
    try:
        f = srv.open_file(path, "r+")    # a FIFO opens at once in r+ mode
    except (OSError, ValueError) as e:
        out["open_error"] = repr(e)
    else:
        ev = threading.Event()
        res = []
        f.read(0, 10, lambda d, e: (res.append([d is None, getattr(e, "errno", None)]),
                                    ev.set()))
        out["read_done"] = ev.wait(3)
        t = threading.Thread(target=srv.stop, daemon=True)
        t.start()
        t.join(3)
        out["stop_returned"] = not t.is_alive()
        out["callbacks"] = res
    print(json.dumps(out), flush=True)
    os._exit(0)
""")


def test_non_regular_file_does_not_hang_stop(backend, tmp_path, request):
    """A File on a FIFO (open_file accepts one in r+ mode, adopt_file any
    descriptor): a read must not block stop() forever.  Found: on io_uring
    the read waits for data and stop() waits for the read; File now
    refuses descriptors that are not regular files."""
    proc = subprocess.run([sys.executable, "-c", FIFO_SCRIPT, backend,
                           str(tmp_path / "fifo")],
                          capture_output=True, text=True, timeout=40,
                          env=child_env(), cwd=CHILD_CWD)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "open_error" in out:
        return                  # refusing a non-regular file is fine too
    assert out["stop_returned"], out
    assert out["read_done"], out
    assert out["callbacks"] and out["callbacks"][0][0], out   # an error, not data
