"""The Python rivals for the iocport benchmark: the same work per message
(frame the stream in Python, call a Python function with the whole message,
send back what it returns, framed the same way).

    python benchmarks/rivals.py asyncio  [--loop asyncio|uvloop|rloop] [opts]
    python benchmarks/rivals.py threads  [opts]      # socketserver, a thread per connection

    opts: --host 127.0.0.1 --port 9000 --framing len4|line

Prints ``listening on HOST:PORT`` when ready; SIGINT/SIGTERM exit 0.

Both variants share one framer.  Replies produced from one receive are joined
and written with one call (the same batching iocport does), so the rivals
are not handicapped by a write per message.
"""
import argparse
import asyncio
import signal
import socket
import socketserver
import sys

MAX_FRAME = 16 << 20


def on_message(msg):
    """The per-message Python function: the echo handler."""
    return msg


class Framer:
    """Cuts a byte stream into whole messages; ``feed`` returns the framed
    replies for every whole message received (b"" if none), or None on a
    bad frame."""

    __slots__ = ("buf", "line")

    def __init__(self, framing):
        self.buf = b""
        self.line = framing == "line"

    def feed(self, data):
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        end = len(buf)
        if self.line:
            find = buf.find
            while True:
                nl = find(b"\n", pos)
                if nl < 0:
                    break
                out.append(on_message(buf[pos:nl]))
                out.append(b"\n")
                pos = nl + 1
            if end - pos > MAX_FRAME:
                return None
        else:
            from_bytes = int.from_bytes
            while end - pos >= 4:
                n = from_bytes(buf[pos:pos + 4], "big")
                if n > MAX_FRAME:
                    return None
                if end - pos - 4 < n:
                    break
                reply = on_message(buf[pos + 4:pos + 4 + n])
                out.append(len(reply).to_bytes(4, "big"))
                out.append(reply)
                pos += 4 + n
        self.buf = buf[pos:] if pos < end else b""
        return b"".join(out)


class EchoProtocol(asyncio.Protocol):
    framing = "len4"

    def connection_made(self, transport):
        self.transport = transport
        self.framer = Framer(self.framing)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data):
        out = self.framer.feed(data)
        if out is None:
            self.transport.close()
        elif out:
            self.transport.write(out)


def _new_loop(name):
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "rloop":
        import rloop
        return rloop.new_event_loop()
    return asyncio.new_event_loop()


def run_asyncio(args):
    EchoProtocol.framing = args.framing
    loop = _new_loop(args.loop)
    asyncio.set_event_loop(loop)
    stop = loop.create_future()

    def request_stop(*_):
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, request_stop)
        except (NotImplementedError, RuntimeError, AttributeError):
            # a loop without signal support: wake it from the Python handler
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(request_stop))

    async def main():
        server = await loop.create_server(EchoProtocol, args.host, args.port,
                                          backlog=1024, reuse_address=True)
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {host}:{port} ({args.loop} loop)", flush=True)
        await stop
        server.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0


class ThreadHandler(socketserver.BaseRequestHandler):
    framing = "len4"

    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framer = Framer(self.framing)
        recv, sendall = sock.recv, sock.sendall
        try:
            while True:
                data = recv(262144)
                if not data:
                    return
                out = framer.feed(data)
                if out is None:
                    return
                if out:
                    sendall(out)
        except OSError:
            return


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    block_on_close = False


def run_threads(args):
    ThreadHandler.framing = args.framing

    def on_signal(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = _ThreadingServer((args.host, args.port), ThreadHandler)
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port} (thread per connection)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("asyncio", "threads"))
    p.add_argument("--loop", choices=("asyncio", "uvloop", "rloop"), default="asyncio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--framing", choices=("len4", "line"), default="len4")
    args = p.parse_args(argv)
    if args.kind == "threads":
        return run_threads(args)
    return run_asyncio(args)


if __name__ == "__main__":
    sys.exit(main())
