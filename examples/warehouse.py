"""The warehouse: the seed's workflow, end to end.

Clients ship records (len4 framing, first byte the command):

    S<tag:8><record> STORE: append the record to the data file; the reply
                     "K<tag:8><id:8>" goes out only once the write (and,
                     with --durable, the fsync) has completed.
    F<id:8>          FETCH: read the record back from disk; reply
                     "D<id:8><record>".

Replies go out as disk operations complete, so they need not come back in
the order of the requests: each carries the client's tag or the id.
    B                FETCH the blob (--blob FILE): the reply is one message
                     whose payload is the whole file, streamed by send_file.
    errors           "E<text>"

The floor manager (the handler) never drives to the warehouse: every disk
operation is issued and its completion arrives later, on a worker, while
other shipments are handled.

    python examples/warehouse.py --port 9100 --data /tmp/warehouse.dat [--durable]
"""
import argparse
import struct
import threading

import iocport

ID = struct.Struct(">Q")


class Warehouse:
    def __init__(self, server, path, durable, blob_path=None):
        self.file = server.open_file(path, "w+")
        self.durable = durable
        self.blob = server.open_file(blob_path, "r") if blob_path else None
        self.index = []                # id -> (offset, length)
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

        offset = self.file.write(record, callback=written)
        self.index[rid] = (offset, len(record))

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
        import os
        return os.fstat(self.blob.fd).st_size


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--data", default="/tmp/iocport-warehouse.dat")
    p.add_argument("--blob", help="a file served by the B command")
    p.add_argument("--durable", action="store_true", help="fsync before replying")
    p.add_argument("--backend", default=None)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    holder = {}
    server = iocport.Server(lambda c, m: holder["w"].on_message(c, m),
                            framing=iocport.LengthPrefixed(4),
                            backend=args.backend, workers=args.workers)
    host, port = server.listen(args.host, args.port)
    server.start()
    holder["w"] = Warehouse(server, args.data, args.durable, args.blob)
    server.serve_forever(ready=lambda: print(
        f"listening on {host}:{port} (backend {server.backend})", flush=True))


if __name__ == "__main__":
    main()
