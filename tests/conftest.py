"""Shared fixtures for the iocport server tests.

- ``backend``: every I/O test runs on "epoll" and "uring" (skipped when the
  host refuses io_uring).
- ``make_server``: builds, listens (127.0.0.1, port 0) and starts a Server;
  every server made is stopped at teardown.
- ``servers``: builds a Server on the test's backend and leaves listening
  and starting to the test; every one is stopped at teardown.
- ``client``: opens blocking client sockets with a timeout; all are closed at
  teardown.
- ``wait_for``: polls a predicate until it holds, failing the test at the
  deadline (synchronisation on a condition, never sleep-and-hope).
- ``Codec``: the test's own, independent implementation of each framing, used
  to build frames and to cut the server's replies back into messages.
- ``child_env()``, ``CHILD_CWD``: how to start a child python that imports
  the iocport under test, whether it is built in this tree (an editable
  install) or installed (``pip install .``, a wheel) and this tree's
  iocport/ has no extension.
- ``needs_tree(*paths)``: skips a test when the tree holding these tests
  lacks what it reads beside them (``src``, ``examples``...).

The suite runs against an installed build as well as an editable one: it
never puts the tree holding it on sys.path (pytest's default import mode
adds tests/ only, for ``from conftest import ...``), and the header of the
run says which iocport is under test.
"""
import atexit
import os
import shutil
import site
import socket
import struct
import subprocess
import sysconfig
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

import iocport

DEADLINE = 20.0   # seconds any single condition may take before the test fails

# Python code that makes io_uring refused the way containers refuse it: a
# seccomp filter answering EPERM to io_uring_setup (425 on x86_64 and
# aarch64), as Docker's default profile does.  It holds for this process
# and every process it starts or execs.  Run it first, then the test.
REFUSE_URING_MACHINES = ("x86_64", "aarch64")
REFUSE_URING = textwrap.dedent(r'''
    import ctypes as _ctypes, errno as _errno

    class _Filter(_ctypes.Structure):
        _fields_ = [("code", _ctypes.c_ushort), ("jt", _ctypes.c_ubyte),
                    ("jf", _ctypes.c_ubyte), ("k", _ctypes.c_uint)]
    class _Prog(_ctypes.Structure):
        _fields_ = [("len", _ctypes.c_ushort), ("filter", _ctypes.POINTER(_Filter))]
    _BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06
    _insns = (_Filter * 4)(
        _Filter(_BPF_LD_W_ABS, 0, 0, 0),            # A = seccomp_data.nr
        _Filter(_BPF_JEQ_K, 0, 1, 425),             # io_uring_setup?
        _Filter(_BPF_RET_K, 0, 0, 0x00050000 | _errno.EPERM),
        _Filter(_BPF_RET_K, 0, 0, 0x7fff0000),      # allow
    )
    _prog = _Prog(4, _insns)
    _libc = _ctypes.CDLL(None, use_errno=True)
    assert _libc.prctl(38, 1, 0, 0, 0) == 0         # PR_SET_NO_NEW_PRIVS
    assert _libc.prctl(22, 2, _ctypes.byref(_prog), 0, 0) == 0, _ctypes.get_errno()
''')
# The tree holding these tests: a checkout or an unpacked sdist.
TREE = Path(__file__).resolve().parent.parent
# The directory the iocport under test was imported from: this tree (an
# editable install, or a build in place) or a site-packages directory.
IOCPORT_HOME = Path(iocport.__file__).resolve().parent.parent


def pytest_report_header(config):
    where = "this tree" if IOCPORT_HOME == TREE else "installed"
    return f"iocport {iocport.__version__} from {IOCPORT_HOME} ({where})"


def needs_tree(*paths):
    """A skip mark for a test that reads `paths` beside tests/ (in a checkout
    or an unpacked sdist), when one of them is missing."""
    missing = [p for p in paths if not (TREE / p).exists()]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"needs {', '.join(missing)} beside tests/ (a checkout or the "
               f"sdist), not found in {TREE}")


# ---- child processes ----------------------------------------------------------
#
# A child python's sys.path starts with its working directory ('' for -c,
# the directory for -m), so a child started in a source tree whose iocport/
# has no built extension (after `pip install .`) would import that, not the
# installed package.  Children run in an empty directory of their own, with
# PYTHONPATH naming the directory this process imported iocport from (unless
# the child finds it by itself: a site-packages directory).

CHILD_CWD = tempfile.mkdtemp(prefix="iocport-tests-cwd-")
atexit.register(shutil.rmtree, CHILD_CWD, True)


def _site_dirs():
    dirs = set(site.getsitepackages()) | {site.getusersitepackages()}
    dirs |= {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    return {Path(d).resolve() for d in dirs if d}


def tool_env():
    """os.environ for a program nobody here wrote (curl, h2load, redis-cli,
    redis-server...): without a sanitizer's preloaded runtime, which CI's
    ASan and TSan steps put in every child to check iocport, not them
    (curl under a preloaded ASan hangs on a second request)."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def child_env(**overrides):
    """os.environ for a child python that imports the iocport under test;
    `overrides` set (a value None removes) variables."""
    env = dict(os.environ)
    if IOCPORT_HOME not in _site_dirs():
        env["PYTHONPATH"] = os.pathsep.join(
            [str(IOCPORT_HOME)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture
def in_child_cwd(monkeypatch):
    """Run the test in CHILD_CWD, for children started by iocport's own code
    (the bench harness), which inherit the working directory."""
    monkeypatch.chdir(CHILD_CWD)
    return CHILD_CWD


class Events:
    """Thread-safe record of callbacks: connections opened and closed (for
    on_connect / on_close) and messages handled (``count`` as a handler)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.opened = []
        self.closed = []
        self.handled = 0

    def on_connect(self, conn):
        with self.lock:
            self.opened.append(conn)

    def on_close(self, conn):
        with self.lock:
            self.closed.append(conn)

    def count(self, conn=None, msg=None):
        with self.lock:
            self.handled += 1

    def closed_with(self, reason):
        with self.lock:
            return [c for c in self.closed if c.close_reason == reason]


def holding_echo():
    """An echo handler that holds its worker on the message b"hold" (setting
    `entered`) until `gate` is set: the test then queues input meanwhile."""
    entered, gate = threading.Event(), threading.Event()

    def handler(conn, msg):
        if msg == b"hold":
            entered.set()
            gate.wait(DEADLINE)
        conn.send(msg)

    return handler, entered, gate


def wait_for(predicate, timeout=DEADLINE, what=None, interval=0.002):
    """Poll ``predicate`` until it returns a true value (returned); fail the
    test if it has not by ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for "
                        f"{what or getattr(predicate, '__name__', 'condition')}")
        time.sleep(interval)


@pytest.fixture(params=["epoll", "uring"])
def backend(request):
    name = request.param
    if name not in iocport.backends():
        pytest.skip(f"{name} is not available on this host "
                    f"(backends: {iocport.backends()})")
    return name


@pytest.fixture
def servers(backend):
    """servers(handler, **kw) -> a Server on the test's backend, neither
    listening nor started; every one is stopped at teardown."""
    made = []

    def make(handler, **kw):
        srv = iocport.Server(handler, backend=backend, **kw)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture
def make_server(backend):
    """make_server(handler, **kwargs) -> started Server on the test's backend."""
    servers = []

    def make(handler=None, *, start=True, host="127.0.0.1", port=0, **kwargs):
        kwargs.setdefault("backend", backend)
        srv = iocport.Server(handler, **kwargs)
        servers.append(srv)
        srv.listen(host, port)
        if start:
            srv.start()
            assert srv.backend == backend
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def client():
    """client(address) -> a connected blocking socket (timeout DEADLINE)."""
    socks = []

    def connect(address, timeout=DEADLINE):
        s = socket.create_connection(address, timeout=timeout)
        socks.append(s)
        return s

    connect.sockets = socks
    yield connect
    for s in socks:
        s.close()


# ---- the test's own framing codec ---------------------------------------------

class Codec:
    """Encode payloads into frames and decode a byte stream into payloads,
    for an iocport framing spec, written independently of the C code."""

    def __init__(self, framing):
        self.framing = framing
        self.buf = bytearray()
        if isinstance(framing, iocport.LengthPrefixed):
            self.kind = "len"
            self.fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[framing.size]
            self.fmt = (">" if framing.byteorder == "big" else "<") + self.fmt
            self.hdr = framing.size
        elif isinstance(framing, iocport.Delimited):
            self.kind = "delim"
            self.delim = framing.delimiter
        elif isinstance(framing, iocport.FixedSize):
            self.kind = "fixed"
            self.size = framing.size
        else:
            raise TypeError(framing)

    def encode(self, payload):
        if self.kind == "len":
            n = len(payload) + (self.hdr if self.framing.includes_header else 0)
            return struct.pack(self.fmt, n) + payload
        if self.kind == "delim":
            assert self.delim not in payload
            return payload + self.delim
        assert len(payload) == self.size
        return payload

    def feed(self, data):
        """Append received bytes; return the whole messages now available."""
        self.buf += data
        out = []
        while True:
            if self.kind == "len":
                if len(self.buf) < self.hdr:
                    break
                (n,) = struct.unpack_from(self.fmt, self.buf)
                if self.framing.includes_header:
                    n -= self.hdr
                if len(self.buf) < self.hdr + n:
                    break
                out.append(bytes(self.buf[self.hdr:self.hdr + n]))
                del self.buf[:self.hdr + n]
            elif self.kind == "delim":
                i = self.buf.find(self.delim)
                if i < 0:
                    break
                out.append(bytes(self.buf[:i]))
                del self.buf[:i + len(self.delim)]
            else:
                if len(self.buf) < self.size:
                    break
                out.append(bytes(self.buf[:self.size]))
                del self.buf[:self.size]
        return out


def recv_messages(sock, codec, count):
    """Read from a blocking socket until ``count`` whole messages arrived."""
    got = []
    while len(got) < count:
        data = sock.recv(1 << 20)
        if not data:
            raise AssertionError(f"EOF after {len(got)} of {count} messages")
        got += codec.feed(data)
    assert len(got) == count, f"{len(got)} messages, expected {count}"
    return got


def recv_until_eof(sock, limit=1 << 30):
    """Read a blocking socket until EOF; return everything read."""
    chunks = []
    total = 0
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        total += len(data)
        assert total <= limit


def is_closed_by_peer(sock):
    """True once the server closed the connection (EOF or reset), with
    pending data discarded.  Non-blocking: False while still open."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return True
    except (BlockingIOError, InterruptedError):
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.settimeout(DEADLINE)


@pytest.fixture
def threads():
    """Start helper threads with threads.start(fn, *args); all are joined at
    teardown (and must finish within the deadline)."""
    started = []

    def start(fn, *args, **kwargs):
        t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
        t.start()
        started.append(t)
        return t

    start.started = started
    yield start
    for t in started:
        t.join(DEADLINE)
        assert not t.is_alive(), f"helper thread {t.name} did not finish"


# ---- a real Redis ------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_pings(port):
    """Whether a redis-server answers PING on `port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(directory):
    """A redis-server on a free port of 127.0.0.1, in `directory`, that
    never writes its data: (process, port, log path).  A port taken between
    the pick and the bind makes it exit: another port is tried."""
    log = directory / "redis.log"
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
             "--save", "", "--appendonly", "no", "--dir", str(directory),
             "--daemonize", "no", "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, cwd=directory, env=tool_env())
        for _ in range(int(DEADLINE / 0.02)):
            if proc.poll() is not None or redis_pings(port):
                break
            try:
                proc.wait(0.02)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None and redis_pings(port):
            return proc, port, log
        stop_process(proc)
    pytest.fail(f"redis-server did not start: {log.read_text()[-2000:] if log.exists() else ''}")


def stop_process(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """The port of a redis-server (Debian's) for the module's tests."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    proc, port, _ = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield port
    finally:
        stop_process(proc)
