"""The warehouse: the seed's workflow, end to end.

Clients ship records (len4 framing, first byte the command):

    S<tag:8><record> STORE: append the record to the data file; the reply
                     "K<tag:8><id:8>" goes out only once the write (and,
                     with --durable, the fsync) has completed.
    F<id:8>          FETCH: read the record back from disk; reply
                     "D<id:8><record>".
    B                FETCH the blob (--blob FILE): the reply is one message
                     whose payload is the whole file, streamed by send_file.
    errors           "E<text>"

Replies go out as disk operations complete, so they need not come back in
the order of the requests: each carries the client's tag or the id.

The floor manager (the handler) never drives to the warehouse: every disk
operation is issued and its completion arrives later, on a worker, while
other shipments are handled.

The stock is kept across restarts.  The data file (--data, by default
warehouse.dat in the current directory) is only ever appended to, each
record behind a header of its own:

    b"WHR1"  id (8 bytes)  length (4 bytes)  CRC-32 of the record (4 bytes)

all big-endian, then the record.  At start the file is read through and the
index (id -> where the record is) rebuilt from the headers, so every id
given out before fetches its record again, and new ids follow the highest.
Appends are issued in order but may complete out of order, so a crash (not
a clean stop) can leave a record cut short or a hole where one was still
being written; the scan skips whatever does not carry a whole record with
the right checksum.  With --durable a reply means the record is on disk and
it survives a crash; without it a reply means the page cache has it, and a
crash may lose it (and its id may then be given again).

    python examples/warehouse.py --port 9100 [--data warehouse.dat] [--blob FILE] [--durable]
"""
import argparse
import mmap
import os
import struct
import sys
import threading
import zlib

import iocport

ID = struct.Struct(">Q")
MAGIC = b"WHR1"
HEADER = struct.Struct(">4sQII")     # MAGIC, id, length, crc32 of the record


def read_records(path):
    """The whole records of a data file, in file order: [(id, offset of
    the record, length)].  What is not one (a hole, a record cut short) is
    skipped: the scan looks for the next header from the byte after."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            return []        # (an empty file cannot be mapped)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found, pos, end = [], 0, len(data)
            while (pos := data.find(MAGIC, pos)) >= 0:
                start = pos + HEADER.size
                if start <= end:
                    _, rid, n, crc = HEADER.unpack_from(data, pos)
                    if start + n <= end and zlib.crc32(data[start:start + n]) == crc:
                        found.append((rid, start, n))
                        pos = start + n
                        continue
                pos += 1
            return found


class Warehouse:
    def __init__(self, server, path, durable, blob_path=None):
        self.index = []                # id -> (offset, length), None if lost
        for rid, offset, n in read_records(path):
            self.index.extend([None] * (rid + 1 - len(self.index)))
            self.index[rid] = (offset, n)
        self.recovered = sum(1 for where in self.index if where is not None)
        self.blob = server.open_file(blob_path, "r") if blob_path else None
        # "a+": read and append, never truncated; appends start at its end.
        self.file = server.open_file(path, "a+")
        self.durable = durable
        self.lock = threading.Lock()   # handlers may run on several workers

    def on_message(self, conn, msg):
        cmd, body = msg[:1], msg[1:]
        if cmd == b"S" and len(body) >= ID.size:
            self.store(conn, body[:ID.size], body[ID.size:])
        elif cmd == b"F" and len(body) == ID.size:
            self.fetch(conn, ID.unpack(body)[0])
        elif cmd == b"B" and self.blob is not None:
            conn.send_raw(struct.pack(">I", self.blob_size()))
            conn.send_file(self.blob)
        else:
            conn.send(b"Eunknown command")

    def store(self, conn, tag, record):
        # The completion may run on another worker as soon as the write is
        # issued (the GIL switches between threads), so everything it uses
        # is ready before the write.
        with self.lock:
            rid = len(self.index)
            self.index.append(None)
        reply = b"K" + tag + ID.pack(rid)

        def written(n, err):
            if err is not None:
                conn.send(b"Ewrite failed: " + str(err).encode())
            elif self.durable:
                self.file.sync(lambda _, err: conn.send(
                    reply if err is None else b"Efsync failed"), data_only=True)
            else:
                conn.send(reply)

        header = HEADER.pack(MAGIC, rid, len(record), zlib.crc32(record))
        offset = self.file.write(header + record, callback=written)
        self.index[rid] = (offset + HEADER.size, len(record))

    def fetch(self, conn, rid):
        with self.lock:
            where = self.index[rid] if rid < len(self.index) else None
        if where is None:
            conn.send(b"Eno such record")
            return
        offset, length = where

        def done(data, err):
            conn.send(b"D" + ID.pack(rid) + data if err is None else b"Eread failed")

        self.file.read(offset, length, done)

    def blob_size(self):
        return os.fstat(self.blob.fd).st_size


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--data", default="warehouse.dat",
                   help="the data file, kept across restarts: records are appended "
                        "and the index rebuilt from it at start (default: "
                        "warehouse.dat in the current directory)")
    p.add_argument("--blob", help="a file served by the B command")
    p.add_argument("--durable", action="store_true", help="fsync before replying")
    p.add_argument("--backend", choices=("auto", "uring", "epoll"), default=None)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()

    def die(message):
        sys.exit(f"{p.prog}: error: {message}")   # one line, exit status 1

    if args.backend == "uring" and "uring" not in iocport.backends():
        die("--backend uring: io_uring is not available on this host; "
            "use --backend epoll or auto")
    holder = {}
    try:
        server = iocport.Server(lambda c, m: holder["w"].on_message(c, m),
                                framing=iocport.LengthPrefixed(4),
                                backend=args.backend, workers=args.workers)
    except ValueError as exc:   # --workers, $IOCPORT_BACKEND
        die(exc)
    try:
        w = holder["w"] = Warehouse(server, args.data, args.durable, args.blob)
    except OSError as exc:
        which = "--blob" if exc.filename == args.blob else "--data"
        die(f"cannot open {which} {exc.filename}: {exc.strerror}")
    except ValueError:          # a directory, a FIFO
        die(f"--blob {args.blob} is not a regular file")
    try:
        host, port = server.listen(args.host, args.port)
    except (OSError, ValueError) as exc:   # in use, no such address; --port
        why = ((exc.strerror or str(exc)).split(" (while", 1)[0]
               if isinstance(exc, OSError) else exc)
        die(f"cannot listen on {args.host}:{args.port}: {why}")
    server.serve_forever(ready=lambda: print(
        f"listening on {host}:{port} (backend {server.backend}; "
        f"{w.recovered} records in {os.path.abspath(args.data)})", flush=True))


if __name__ == "__main__":
    main()
