"""Ship records to the warehouse, fetch them all back, verify every byte.

Itself an iocport program: its connections are outgoing iocport
connections (Server.connect), so its socket work runs natively too.

    python examples/warehouse_client.py --port 9100 --records 10000 --connections 50 [--blob FILE]
"""
import argparse
import hashlib
import random
import struct
import sys
import threading
import time

import iocport

ID = struct.Struct(">Q")


class Shipper:
    """One connection: store its records, then fetch each back by id."""

    def __init__(self, client, records, done):
        self.records = records
        self.ids = {}            # id -> index of the record
        self.fetched = 0
        self.errors = []
        self.done = done
        self.conn = client.connect(ARGS.host, ARGS.port, self.connected)
        self.conn.state = self
        for tag, r in enumerate(records):       # pipelined; queued until connected
            self.conn.send(b"S" + ID.pack(tag) + r)

    def connected(self, conn, err):
        if err is not None:
            self.fail(f"connect: {err}")

    def on_message(self, msg):
        kind, body = msg[:1], msg[1:]
        if kind == b"E":
            self.fail(body.decode(errors="replace"))
        elif kind == b"K":
            tag, rid = ID.unpack(body[:8])[0], ID.unpack(body[8:16])[0]
            self.ids[rid] = tag
            if len(self.ids) == len(self.records):
                for rid in self.ids:
                    self.conn.send(b"F" + ID.pack(rid))
        elif kind == b"D":
            rid = ID.unpack(body[:8])[0]
            if body[8:] != self.records[self.ids[rid]]:
                self.fail(f"record {rid} came back different")
            self.fetched += 1
            if self.fetched == len(self.records):
                self.done(self)
        else:
            self.fail(f"unexpected reply {msg[:16]!r}")

    def fail(self, why):
        self.errors.append(why)
        self.done(self)


def run(args):
    rng = random.Random(args.seed)
    finished = []
    all_done = threading.Event()
    lock = threading.Lock()
    per_conn = [[] for _ in range(args.connections)]
    for i in range(args.records):
        size = rng.randrange(1, args.max_size)
        per_conn[i % args.connections].append(rng.randbytes(size))

    def done(shipper):
        with lock:
            finished.append(shipper)
            if len(finished) == wanted:
                all_done.set()

    def on_message(conn, msg):
        conn.state.on_message(msg)

    blob = {}
    client = iocport.Server(on_message, framing=iocport.LengthPrefixed(4, max_size=1 << 31),
                            backend=args.backend)
    client.start()
    t0 = time.monotonic()
    shippers = []
    wanted = sum(1 for recs in per_conn if recs)
    for recs in per_conn:
        if recs:
            shippers.append(Shipper(client, recs, done))
    ok = all_done.wait(args.timeout)
    elapsed = time.monotonic() - t0
    if ok and args.blob:
        got = threading.Event()

        class Blob:
            def on_message(self, msg):
                blob["digest"] = hashlib.sha256(msg).hexdigest()
                blob["size"] = len(msg)
                got.set()

        c = client.connect(args.host, args.port)
        c.state = Blob()
        c.send(b"B")
        got.wait(args.timeout)
    client.stop()
    errors = [e for s in shippers for e in s.errors]
    stored = sum(len(s.ids) for s in shippers)
    fetched = sum(s.fetched for s in shippers)
    print(f"{stored} records stored and {fetched} fetched back over "
          f"{len(shippers)} connections in {elapsed:.2f} s; {len(errors)} errors")
    for e in errors[:5]:
        print("  error:", e)
    if args.blob:
        with open(args.blob, "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()
        same = blob.get("digest") == want
        print(f"blob: {blob.get('size')} bytes, {'identical' if same else 'DIFFERENT'}")
        if not same:
            return 1
    return 0 if ok and not errors and fetched == args.records else 1


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--records", type=int, default=10000)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--max-size", type=int, default=2000)
    p.add_argument("--blob", help="the server's --blob file, to verify the B reply")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--backend", default=None)
    ARGS = p.parse_args()
    return run(ARGS)


if __name__ == "__main__":
    sys.exit(main())
