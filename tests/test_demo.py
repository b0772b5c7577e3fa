"""The command line: ``python -m iocport echo``.

Runs the demo server in a subprocess (sys.executable, importing the
iocport under test: conftest's child_env() and CHILD_CWD, so this works
in-tree and installed), waits for its "listening on HOST:PORT" line, talks
to it over 127.0.0.1 and stops it with SIGINT or SIGTERM.
"""
import signal
import socket
import subprocess
import sys

import pytest

import iocport
from conftest import CHILD_CWD, DEADLINE, Codec, child_env, recv_messages

pytestmark = pytest.mark.timeout(60)


def _env():
    return child_env(IOCPORT_BACKEND=None)


class Demo:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iocport", "echo", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
            cwd=CHILD_CWD, text=True)
        # readline blocks until the line or EOF; the test timeout bounds it.
        self.line = self.proc.stdout.readline()
        if not self.line.startswith("listening on 127.0.0.1:"):
            self.proc.kill()
            out, err = self.proc.communicate(timeout=DEADLINE)
            pytest.fail(f"no 'listening on' line: {self.line!r} {out!r} {err!r}")
        self.port = int(self.line.split()[2].rsplit(":", 1)[1])

    def stop(self, sig):
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=DEADLINE)
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=DEADLINE)


@pytest.fixture
def demo():
    started = []

    def run(*args):
        d = Demo(*args)
        started.append(d)
        return d

    yield run
    for d in started:
        d.kill()


def _talk(port, framing, payloads):
    codec = Codec(framing)
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        s.sendall(b"".join(codec.encode(p) for p in payloads))
        assert recv_messages(s, codec, len(payloads)) == payloads
        for p in payloads:   # one at a time too
            s.sendall(codec.encode(p))
            assert recv_messages(s, codec, 1) == [p]


PAYLOADS = [b"hello", b"", b"x" * 100_000, bytes(range(256))]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_echo_command(demo, backend, sig, native):
    d = demo("--backend", backend, *(["--native"] if native else []))
    assert f"backend {backend}" in d.line
    assert ("native" if native else "python") in d.line
    _talk(d.port, iocport.LengthPrefixed(4), PAYLOADS)
    rc, out, err = d.stop(sig)
    assert rc == 0, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_echo_command_line_framing(demo, backend, native):
    d = demo("--backend", backend, "--framing", "line",
             *(["--native"] if native else []))
    _talk(d.port, iocport.Delimited(b"\n"),
          [b"hello", b"", b"a line of text", b"y" * 50_000])
    rc, out, err = d.stop(signal.SIGINT)
    assert rc == 0, err


def test_echo_command_workers_and_other_framing(demo, backend):
    d = demo("--backend", backend, "--framing", "len2le", "--workers", "2")
    _talk(d.port, iocport.LengthPrefixed(2, byteorder="little"),
          [b"a", b"", b"z" * 65535])
    rc, out, err = d.stop(signal.SIGTERM)
    assert rc == 0, err


def test_echo_command_bad_framing_is_a_usage_error():
    p = subprocess.run([sys.executable, "-m", "iocport", "echo", "--port", "0",
                        "--framing", "len3"], capture_output=True, text=True,
                       env=_env(), cwd=CHILD_CWD, timeout=DEADLINE)
    assert p.returncode == 2
    assert "len3" in p.stderr


@pytest.mark.parametrize("framing", ["len4", "line"])
def test_echo_store_reads_back_as_messages(demo, backend, tmp_path, framing):
    """``echo --store PATH`` stores each message framed as on the wire: the
    file, fed to a Framer of the same framing, gives the messages back, in
    the order they came on the connection, with nothing left over."""
    path = tmp_path / "store.log"
    d = demo("--backend", backend, "--framing", framing, "--store", str(path))
    payloads = [b"hello", b"", b"z" * 100_000, b"last one"]
    spec = iocport.parse_framing(framing)
    _talk(d.port, spec, payloads)       # all at once, then one at a time
    rc, out, err = d.stop(signal.SIGTERM)
    assert rc == 0, err
    framer = iocport.Framer(spec)
    assert framer.feed(path.read_bytes()) == payloads + payloads
    assert framer.pending == 0
