"""Smoke test of the benchmark harness: the native load generator builds, runs
against the iocport echo server and the C echo server with no errors, and
catches a server whose replies are wrong.  No timing assertions."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from iocport import bench

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which(os.environ.get("CC") or "gcc") is None,
                       reason="gcc is needed to build the load generator"),
]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-bin")
    return {"loadgen": bench.build("loadgen.c", out),
            "c_echo": bench.build("c_echo_epoll.c", out)}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def _loadgen(built, host, port, *, framing="len4", pid=None, depth=4, seconds=1.0):
    argv = [str(built["loadgen"]), "--host", host, "--port", str(port),
            "--conns", "8", "--depth", str(depth), "--size", "100",
            "--framing", framing, "--seconds", str(seconds),
            "--warmup-seconds", "0.1"]
    if pid:
        argv += ["--server-pid", str(pid)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.mark.parametrize("framing", ["len4", "line"])
@pytest.mark.parametrize("server", ["iocport", "iocport-native", "c"])
def test_loadgen_against_echo_servers(built, server, framing):
    if server == "c":
        argv = [str(built["c_echo"]), "--port", "0", "--framing", framing]
    else:
        argv = [sys.executable, "-m", "iocport", "echo", "--port", "0",
                "--framing", framing] + (["--native"] if server == "iocport-native" else [])
    srv = bench.ServerProc(server, argv, env=_env())
    try:
        rc, res, err = _loadgen(built, srv.host, srv.port, framing=framing, pid=srv.pid)
    finally:
        status = srv.stop()
    assert rc == 0, err
    assert res["errors"] == 0
    assert res["msgs"] > 0
    assert res["server_cpu_s"] is not None and res["server_cpu_s"] >= 0
    for key in ("seconds", "msgs_per_sec", "p50_us", "p99_us", "p999_us"):
        assert key in res
    assert status == 0


class _BrokenEcho:
    """A len4 echo server that flips one byte of every reply payload."""

    def __init__(self):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    @staticmethod
    def _serve(s):
        buf = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    return
                buf += data
                out = []
                while len(buf) >= 4:
                    n = int.from_bytes(buf[:4], "big")
                    if len(buf) < 4 + n:
                        break
                    payload = bytearray(buf[4:4 + n])
                    if payload:
                        payload[-1] ^= 0x01
                    out.append(buf[:4] + bytes(payload))
                    buf = buf[4 + n:]
                s.sendall(b"".join(out))
        except OSError:
            return

    def close(self):
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def test_loadgen_detects_wrong_replies(built):
    srv = _BrokenEcho()
    try:
        rc, res, err = _loadgen(built, "127.0.0.1", srv.port, depth=2, seconds=0.5)
    finally:
        srv.close()
    assert res["errors"] > 0
    assert rc != 0
    assert "wrong reply" in err


def test_loadgen_detects_a_lost_connection(built):
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def accept_and_close():
        for _ in range(8):
            s, _ = lsock.accept()
            s.close()

    t = threading.Thread(target=accept_and_close, daemon=True)
    t.start()
    try:
        rc, res, _ = _loadgen(built, "127.0.0.1", port, seconds=0.5)
    finally:
        lsock.close()
    assert res["errors"] > 0 and rc != 0


def test_idle_scenario_smoke():
    """The idle-connections scenario runs for iocport with N=200 and gives a
    positive figure. No threshold: sizes are not pass/fail."""
    idle = bench.run_idle(200, only={"iocport-python"})
    assert idle["n"] == 200
    r = idle["results"]["iocport-python"]
    assert "failed" not in r, r
    assert r["conns"] == 200
    assert r["rss_before"] > 0 and r["rss_after"] > 0
    assert isinstance(r["bytes_per_conn"], float) and r["bytes_per_conn"] > 0
    assert r.get("exit", 0) == 0
    json.loads(json.dumps(idle))          # fits the JSON output
    assert "iocport-python" in bench.idle_table(idle)
