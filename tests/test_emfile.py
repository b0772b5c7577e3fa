"""Out of file descriptors: the accept loop pauses instead of spinning, the
server keeps serving the connections it has, and accepts again once
descriptors are free.  Runs in a subprocess that uses up its descriptors."""
import subprocess
import sys
import textwrap

import pytest

from conftest import CHILD_CWD, child_env

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent(r'''
    import os, resource, socket, struct, sys, time
    import iocport

    backend = sys.argv[1]
    # io_uring reads the limit when the accept is armed: set it first.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
    srv = iocport.Server(lambda c, m: c.send(m), backend=backend)
    addr = srv.listen()
    srv.start()
    frame = struct.pack(">I", 2) + b"hi"

    def deadline_wait(pred, what, limit=20.0):
        end = time.monotonic() + limit
        while not pred():
            if time.monotonic() > end:
                raise SystemExit("timed out waiting for " + what)
            time.sleep(0.01)

    first = socket.create_connection(addr, timeout=10)
    first.sendall(frame)
    assert first.recv(100) == frame
    # Sockets made now, connected later: connect() needs no new descriptor.
    waiting = [socket.socket() for _ in range(10)]
    for s in waiting:
        s.settimeout(10)
    # Use up every descriptor this process may have.
    filler = []
    try:
        while True:
            filler.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    for s in waiting:
        s.connect(addr)            # completes in the kernel's backlog
    deadline_wait(lambda: srv.stats()["accept_errors"] > 0, "an EMFILE from accept")
    accepted = srv.stats()["accepted"]
    # Accepting is paused; the connection it has is still served.
    first.sendall(frame)
    assert first.recv(100) == frame
    for fd in filler:
        os.close(fd)
    deadline_wait(lambda: srv.stats()["accepted"] == accepted + len(waiting),
                  "the backlog to be accepted")
    for s in waiting:
        s.sendall(frame)
        assert s.recv(100) == frame
    clients = [first] + waiting
    errors = srv.stats()["accept_errors"]
    print("accept_errors", errors)
    for s in clients:
        s.close()
    srv.stop()
    print("ok")
''')


def test_emfile_pauses_accept_and_recovers(backend):
    out = subprocess.run([sys.executable, "-c", SCRIPT, backend], env=child_env(),
                         capture_output=True, text=True, timeout=50, cwd=CHILD_CWD)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "ok"
