"""The warehouse example end to end: examples/warehouse.py's Warehouse served
in this process (port 0), examples/warehouse_client.py (an iocport client:
outgoing iocport connections) run against it as a subprocess.  An iocport
client and an iocport server talking to each other, with file appends,
reads, fsyncs and send_file behind the replies."""
import importlib.util
import os
import random
import re
import signal
import socket
import subprocess
import sys

import pytest

import iocport

from conftest import DEADLINE

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
RECORDS, CONNECTIONS, BLOB_SIZE = 2000, 20, 5 * 1024 * 1024


def load_example(name):
    spec = importlib.util.spec_from_file_location(
        f"_iocport_example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_env():
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(iocport.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def client_records(records=RECORDS, connections=CONNECTIONS, max_size=2000, seed=1):
    """The records warehouse_client.py ships (its own generator, replayed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(records):
        size = rng.randrange(1, max_size)
        out.append(rng.randbytes(size))
    return out


def run_client(port, backend, blob, timeout=50):
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "warehouse_client.py"),
         "--port", str(port), "--records", str(RECORDS),
         "--connections", str(CONNECTIONS), "--blob", str(blob),
         "--backend", backend, "--timeout", "40"],
        capture_output=True, text=True, timeout=timeout, env=child_env())
    return proc


def check_client_output(proc):
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    out = proc.stdout
    m = re.search(r"(\d+) records stored and (\d+) fetched back over (\d+) "
                  r"connections in [\d.]+ s; (\d+) errors", out)
    assert m, out
    assert m.groups() == (str(RECORDS), str(RECORDS), str(CONNECTIONS), "0"), out
    assert f"blob: {BLOB_SIZE} bytes, identical" in out, out


@pytest.fixture
def blob(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(random.Random(42).randbytes(BLOB_SIZE))
    return path


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("durable", [False, True], ids=["fast", "durable"])
def test_warehouse_end_to_end(backend, tmp_path, blob, durable, workers):
    wh = load_example("warehouse")
    data = tmp_path / "warehouse.dat"
    holder = {}
    srv = iocport.Server(lambda c, m: holder["w"].on_message(c, m),
                         framing=iocport.LengthPrefixed(4), backend=backend,
                         workers=workers)
    try:
        host, port = srv.listen("127.0.0.1", 0)
        srv.start()
        assert srv.backend == backend
        w = holder["w"] = wh.Warehouse(srv, str(data), durable, str(blob))
        proc = run_client(port, backend, blob)
        check_client_output(proc)
        # The server's side: every record is on disk once, where the index
        # says, and the records are exactly those the client shipped.
        assert len(w.index) == RECORDS
        closed = []
        w.file.close(lambda *args: closed.append(args))
        w.blob.close()
        srv.stop()
        assert closed == [(None, None)]
        content = data.read_bytes()
        spans = sorted(w.index)
        assert sum(n for _, n in spans) == len(content)
        pos = 0
        for off, n in spans:
            assert off == pos, "records overlap or leave a hole"
            pos += n
        stored = sorted(content[off:off + n] for off, n in w.index)
        assert stored == sorted(client_records())
    finally:
        srv.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("durable", [False, True], ids=["fast", "durable"])
def test_warehouse_cli(backend, tmp_path, blob, durable):
    """The example's own command line: warehouse.py in one process and
    warehouse_client.py in another; SIGTERM stops the server cleanly."""
    data = tmp_path / "cli.dat"
    for attempt in range(5):      # the port found free may be taken meanwhile
        port = free_port()
        cmd = [sys.executable, "-u", os.path.join(EXAMPLES, "warehouse.py"),
               "--port", str(port), "--data", str(data), "--blob", str(blob),
               "--backend", backend]
        if durable:
            cmd.append("--durable")
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=child_env())
        try:
            line = server.stdout.readline()
            if not line:
                err = server.communicate(timeout=DEADLINE)[1]
                if "Address already in use" in err and attempt < 4:
                    continue
                pytest.fail(f"warehouse.py did not start: {err}")
            assert line.startswith(f"listening on 127.0.0.1:{port}"), line
            assert f"backend {backend}" in line
            proc = run_client(port, backend, blob)
            check_client_output(proc)
            server.send_signal(signal.SIGTERM)
            out, err = server.communicate(timeout=DEADLINE)
            assert server.returncode == 0, err
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
        break
    content = data.read_bytes()
    assert len(content) == sum(len(r) for r in client_records())
