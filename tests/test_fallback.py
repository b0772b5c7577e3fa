"""io_uring refused the way containers refuse it (a seccomp filter answering
EPERM, as Docker's default profile does): auto falls back to epoll with one
log line, forcing uring raises a clear OSError, and the server works."""
import platform
import subprocess
import sys
import textwrap

import pytest

from conftest import CHILD_CWD, REFUSE_URING, REFUSE_URING_MACHINES, child_env

pytestmark = pytest.mark.timeout(60)

SCRIPT = REFUSE_URING + textwrap.dedent(r'''
    import errno, logging, socket, struct, sys

    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="LOG %(name)s %(levelname)s %(message)s")
    import iocport
    from iocport import _iocport
    print("backends", iocport.backends())
    print("status", _iocport.uring_status() == errno.EPERM)
    try:
        iocport.Server(lambda c, m: None, backend="uring")
    except OSError as exc:
        print("forced", exc.errno == errno.EPERM)

    def on_message(conn, msg):
        conn.send(msg)

    srv = iocport.Server(on_message, backend="auto", workers=2)
    addr = srv.listen()
    srv.start()
    print("using", srv.backend)
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(struct.pack(">I", 5) + b"hello")
        got = b""
        while len(got) < 9:
            got += s.recv(100)
    print("echo", got == struct.pack(">I", 5) + b"hello")
    srv.stop()
''')


@pytest.mark.skipif(platform.machine() not in REFUSE_URING_MACHINES,
                    reason="the filter uses the io_uring_setup number of x86_64/aarch64")
def test_refused_io_uring_falls_back_to_epoll():
    out = subprocess.run([sys.executable, "-c", SCRIPT],
                         env=child_env(IOCPORT_BACKEND=None), cwd=CHILD_CWD,
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "backends ('epoll',)" in lines
    assert "status True" in lines
    assert "forced True" in lines
    assert "using epoll" in lines
    assert "echo True" in lines
    logs = [l for l in lines if l.startswith("LOG iocport WARNING")]
    assert len(logs) == 1 and "io_uring unavailable" in logs[0], lines


def test_backend_environment_variable(monkeypatch):
    import iocport
    monkeypatch.setenv("IOCPORT_BACKEND", "epoll")
    assert iocport.default_backend() == "epoll"
    srv = iocport.Server(lambda c, m: None)
    try:
        assert srv.backend == "epoll"
    finally:
        srv.stop()
    monkeypatch.setenv("IOCPORT_BACKEND", "kqueue")
    with pytest.raises(ValueError, match="IOCPORT_BACKEND"):
        iocport.Server(lambda c, m: None)
