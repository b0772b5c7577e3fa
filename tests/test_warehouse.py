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
import struct
import subprocess
import sys
import zlib

import pytest

import iocport

from conftest import CHILD_CWD, DEADLINE, TREE, child_env, needs_tree

pytestmark = [pytest.mark.timeout(60), needs_tree("examples")]

EXAMPLES = os.path.join(TREE, "examples")
RECORDS, CONNECTIONS, BLOB_SIZE = 2000, 20, 5 * 1024 * 1024
ID = struct.Struct(">Q")


def load_example(name):
    spec = importlib.util.spec_from_file_location(
        f"_iocport_example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        capture_output=True, text=True, timeout=timeout, env=child_env(),
        cwd=CHILD_CWD)
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
        # The server's side: every record is on disk once, behind its
        # header, where the index says, and the records are exactly those
        # the client shipped.
        assert len(w.index) == RECORDS
        closed = []
        w.file.close(lambda *args: closed.append(args))
        w.blob.close()
        srv.stop()
        assert closed == [(None, None)]
        check_data_file(wh, data, w.index, client_records())
    finally:
        srv.stop()


def check_data_file(wh, path, index, records):
    """The data file read back by its documented format: one whole record
    per id of the index, where it says, each right behind its header, end to
    end with no overlap or hole; the records those shipped."""
    content = path.read_bytes()
    found = wh.read_records(path)
    assert sorted(found) == [(rid, *where) for rid, where in enumerate(index)]
    pos = 0
    for rid, off, n in found:              # in file order
        assert off == pos + wh.HEADER.size, "records overlap or leave a hole"
        magic, hid, hn, crc = wh.HEADER.unpack_from(content, pos)
        assert (magic, hid, hn) == (wh.MAGIC, rid, n)
        assert crc == zlib.crc32(content[off:off + n])
        pos = off + n
    assert pos == len(content)
    assert sorted(content[off:off + n] for _, off, n in found) == sorted(records)


class RawClient:
    """A blocking len4 client for the warehouse's commands."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.framer = iocport.Framer(iocport.LengthPrefixed(4))
        self.got = []

    def ask(self, requests):
        """Send every request, return as many replies (in arrival order)."""
        self.sock.sendall(b"".join(self.framer.wrap(r) for r in requests))
        while len(self.got) < len(requests):
            data = self.sock.recv(1 << 20)
            assert data, "the warehouse closed the connection"
            self.got += self.framer.feed(data)
        replies, self.got = self.got[:len(requests)], self.got[len(requests):]
        return replies

    def store(self, records):
        """{id: record} for records stored."""
        replies = self.ask([b"S" + ID.pack(tag) + r for tag, r in enumerate(records)])
        assert all(r[:1] == b"K" for r in replies), replies[:3]
        return {ID.unpack(r[9:17])[0]: records[ID.unpack(r[1:9])[0]] for r in replies}

    def fetch(self, ids):
        """{id: record} for the ids fetched."""
        replies = self.ask([b"F" + ID.pack(rid) for rid in ids])
        assert all(r[:1] == b"D" for r in replies), replies[:3]
        return {ID.unpack(r[1:9])[0]: r[9:] for r in replies}

    def close(self):
        self.sock.close()


def serve_warehouse(wh, backend, data, durable=False):
    """A started server with a Warehouse on `data`: (server, warehouse, port)."""
    holder = {}
    srv = iocport.Server(lambda c, m: holder["w"].on_message(c, m),
                         framing=iocport.LengthPrefixed(4), backend=backend)
    w = holder["w"] = wh.Warehouse(srv, str(data), durable)
    port = srv.listen("127.0.0.1", 0)[1]
    srv.start()
    return srv, w, port


@pytest.mark.parametrize("durable", [False, True], ids=["fast", "durable"])
def test_warehouse_keeps_its_stock_across_restarts(backend, tmp_path, durable):
    """Stop the warehouse and start another on the same data file: the
    index is rebuilt from the file, every id fetches its record, new ids
    follow the old ones, and a third start sees both generations."""
    wh = load_example("warehouse")
    data = tmp_path / "warehouse.dat"
    rng = random.Random(7)
    first = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(300)]
    second = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(50)]
    stock = {}
    for generation, records in enumerate((first, second, [])):
        srv, w, port = serve_warehouse(wh, backend, data, durable)
        try:
            assert w.recovered == len(stock) and len(w.index) == len(stock)
            client = RawClient(port)
            assert client.fetch(sorted(stock)) == stock
            new = client.store(records)
            assert sorted(new) == list(range(len(stock), len(stock) + len(records)))
            stock.update(new)
            client.close()
        finally:
            srv.stop()
    check_data_file(wh, data, w.index, first + second)


def test_warehouse_scan_skips_what_a_crash_leaves(backend, tmp_path):
    """A hole (a record still being written when the process died, with a
    later one written) and a record cut short at the end: the scan finds
    the whole records around them, a lost id answers "no such record", and
    new records go after the damage."""
    wh = load_example("warehouse")
    data = tmp_path / "warehouse.dat"

    def record(rid, payload):
        return wh.HEADER.pack(wh.MAGIC, rid, len(payload), zlib.crc32(payload)) + payload

    lost = record(1, b"never fully written")
    data.write_bytes(record(0, b"first") + bytes(len(lost)) + record(2, b"third WHR1") +
                     record(3, b"cut short at the end")[:-5])
    assert [rid for rid, _, _ in wh.read_records(data)] == [0, 2]
    srv, w, port = serve_warehouse(wh, backend, data)
    try:
        assert w.recovered == 2
        client = RawClient(port)
        assert client.fetch([0, 2]) == {0: b"first", 2: b"third WHR1"}
        assert client.ask([b"F" + ID.pack(1)]) == [b"Eno such record"]
        assert client.store([b"after the damage"]) == {3: b"after the damage"}
        assert client.fetch([3]) == {3: b"after the damage"}
        client.close()
    finally:
        srv.stop()
    assert [rid for rid, _, _ in wh.read_records(data)] == [0, 2, 3]


def test_warehouse_missing_blob_is_one_line(tmp_path):
    missing = tmp_path / "no-such.blob"
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "warehouse.py"), "--port", "0",
         "--data", str(tmp_path / "w.dat"), "--blob", str(missing)],
        capture_output=True, text=True, timeout=DEADLINE, env=child_env())
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--blob {missing}" in lines[0] and "No such file or directory" in lines[0]


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
                                  stderr=subprocess.PIPE, text=True, env=child_env(),
                                  cwd=CHILD_CWD)
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
    wh = load_example("warehouse")
    records = client_records()
    found = wh.read_records(data)
    assert len(found) == RECORDS
    assert data.stat().st_size == sum(wh.HEADER.size + len(r) for r in records)
    content = data.read_bytes()
    assert sorted(content[off:off + n] for _, off, n in found) == sorted(records)
