"""The Python rivals for the iocport benchmark: the same work per message
(frame the stream in Python, call a Python function with the whole message,
send back what it returns, framed the same way).

    python benchmarks/rivals.py asyncio  [--loop asyncio|uvloop|rloop] [--store PATH]
                                         [--tls-cert PEM --tls-key PEM] [--streams] [opts]
    python benchmarks/rivals.py threads  [opts]      # socketserver, a thread per connection

    opts: --host 127.0.0.1 --port 9000 --framing len4|line

Prints ``listening on HOST:PORT`` when ready; SIGINT/SIGTERM exit 0.

With --tls-cert/--tls-key the asyncio server speaks TLS: the loop's own
TLS (``create_server(ssl=ctx)``) over the same kind of context as ``python
-m iocport echo --tls-cert`` makes (``ssl.create_default_context(
Purpose.CLIENT_AUTH)`` with the chain loaded), the same Protocol above it.

With --streams the asyncio server is the idiomatic streams one instead of a
Protocol: ``asyncio.start_server``, a coroutine per connection that reads
each message with ``await reader.readexactly`` (len4: the 4-byte header,
then the payload; line: ``await reader.readuntil``), calls the same
per-message function, then ``writer.write`` of the framed reply and
``await writer.drain()``: a write per message, the way asyncio's
documentation writes a server.

The Protocol and the thread-per-connection variants share one framer.  Replies produced from one receive are joined
and written with one call (the same batching iocport does), so the rivals
are not handicapped by a write per message.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import socket
import socketserver
import sys
from typing import TYPE_CHECKING, Any, Callable, cast

if TYPE_CHECKING:
    import ssl

MAX_FRAME = 16 << 20


def on_message(msg: bytes) -> bytes | None:
    """The per-message Python function: the echo handler."""
    return msg


class Framer:
    """Cuts a byte stream into whole messages; ``feed`` calls ``handle`` on
    each whole message received and returns the framed replies it returned
    (b"" if none; a handle returning None replies later itself), or None on
    a bad frame."""

    __slots__ = ("buf", "line")

    def __init__(self, framing: str) -> None:
        self.buf: bytes = b""
        self.line: bool = framing == "line"

    def feed(self, data: bytes,
             handle: Callable[[bytes], bytes | None] = on_message) -> bytes | None:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        if self.line:
            find = buf.find
            while True:
                nl = find(b"\n", pos)
                if nl < 0:
                    break
                reply = handle(buf[pos:nl])
                if reply is not None:
                    out.append(reply)
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
                reply = handle(buf[pos + 4:pos + 4 + n])
                if reply is not None:
                    out.append(len(reply).to_bytes(4, "big"))
                    out.append(reply)
                pos += 4 + n
        self.buf = buf[pos:] if pos < end else b""
        return b"".join(out)


def nodelay(transport: asyncio.BaseTransport | asyncio.StreamWriter) -> None:
    """TCP_NODELAY on the socket of a transport (or a stream's writer), as
    iocport and the C server set it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class EchoProtocol(asyncio.Protocol):
    """The asyncio rival: echo every whole message."""
    framing: str = "len4"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = cast(asyncio.Transport, transport)
        self.framer: Framer = Framer(self.framing)
        nodelay(transport)

    def data_received(self, data: bytes) -> None:
        out = self.framer.feed(data)
        if out is None:
            self.transport.close()
        elif out:
            self.transport.write(out)


class StoreProtocol(EchoProtocol):
    """Echo each message once os.write has appended it to the store file, the
    write run by the loop's default executor (run_in_executor).  Each is
    stored framed as on the wire, as ``iocport echo --store`` does.  Writes
    can finish out of order, so replies wait in a queue and the written
    prefix of it goes out in one write."""
    store_fd: int = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        # [message, written] in arrival order
        self.queue: collections.deque[list[Any]] = collections.deque()

    def data_received(self, data: bytes) -> None:
        if self.framer.feed(data, self.store) is None:
            self.transport.close()

    def store(self, msg: bytes) -> None:
        entry: list[Any] = [msg, False]
        self.queue.append(entry)
        record = msg + b"\n" if self.framer.line else len(msg).to_bytes(4, "big") + msg
        fut = self.loop.run_in_executor(None, os.write, self.store_fd, record)
        fut.add_done_callback(lambda f: self.written(f, entry))
        return None

    def written(self, fut: asyncio.Future[int], entry: list[Any]) -> None:
        if fut.exception() is not None:
            self.transport.abort()
            return
        entry[1] = True
        queue: collections.deque[list[Any]] = self.queue
        out: list[bytes] = []
        while queue and queue[0][1]:
            msg = queue.popleft()[0]
            if self.framer.line:
                out += (msg, b"\n")
            else:
                out += (len(msg).to_bytes(4, "big"), msg)
        if out:
            self.transport.write(b"".join(out))


async def streams_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       framing: str, tasks: set[asyncio.Task[Any]]) -> None:
    """The streams rival's connection: one whole message read at a time
    (``readexactly`` of the header, then of the payload), echoed with
    ``write`` and ``drain``, until the peer closes; its Task is in `tasks`
    meanwhile (what a stop cancels)."""
    task = asyncio.current_task()
    if task is not None:
        tasks.add(task)
    nodelay(writer)
    line = framing == "line"
    try:
        while True:
            if line:
                msg = (await reader.readuntil(b"\n"))[:-1]
            else:
                n = int.from_bytes(await reader.readexactly(4), "big")
                if n > MAX_FRAME:
                    break
                msg = await reader.readexactly(n)
            reply = on_message(msg)
            if reply is not None:
                writer.write(reply + b"\n" if line
                             else len(reply).to_bytes(4, "big") + reply)
                await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass            # the peer closed (or reset), or a line past the 64 KiB limit
    finally:
        writer.close()
        if task is not None:
            tasks.discard(task)


def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "rloop":
        import rloop
        return rloop.new_event_loop()
    return asyncio.new_event_loop()


def tls_context(cert: str, key: str | None) -> ssl.SSLContext:
    """The server's ssl.SSLContext: what ``iocport echo --tls-cert`` uses."""
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def run_asyncio(args: argparse.Namespace) -> int:
    """The asyncio rival (or uvloop's, rloop's: --loop), until SIGINT or SIGTERM."""
    EchoProtocol.framing = args.framing
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    loop = _new_loop(args.loop)
    asyncio.set_event_loop(loop)
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop(*_: object) -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, request_stop)
        except (NotImplementedError, RuntimeError, AttributeError):
            # a loop without signal support: wake it from the Python handler
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(request_stop))

    handlers: set[asyncio.Task[Any]] = set()     # --streams: a Task per connection

    async def main() -> None:
        protocol: type[EchoProtocol] = EchoProtocol
        if args.store:
            protocol = StoreProtocol
            protocol.store_fd = os.open(args.store, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                        0o644)
        if args.streams:
            server = await asyncio.start_server(
                lambda r, w: streams_echo(r, w, args.framing, handlers), args.host,
                args.port, backlog=1024, reuse_address=True, ssl=tls)
        else:
            server = await loop.create_server(protocol, args.host, args.port,
                                              backlog=1024, reuse_address=True, ssl=tls)
        host, port = server.sockets[0].getsockname()[:2]
        what = f", storing to {args.store} via run_in_executor" if args.store else ""
        what += ", streams: readexactly, write, drain" if args.streams else ""
        what += ", TLS" if tls else ""
        print(f"listening on {host}:{port} ({args.loop} loop{what})", flush=True)
        await stop
        server.close()
        # the streams server's connections still open: ended, not left
        # pending when the loop closes
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    try:
        loop.run_until_complete(main())
        # as asyncio.run() does: wait for the executor's writes, whose
        # completions wake the loop through its self-pipe, before close()
        # closes that pipe
        shutdown = getattr(loop, "shutdown_default_executor", None)
        if shutdown is not None:
            loop.run_until_complete(shutdown())
    finally:
        loop.close()
    return 0


class ThreadHandler(socketserver.BaseRequestHandler):
    """The thread-per-connection rival: echo every whole message."""
    framing: str = "len4"

    def handle(self) -> None:
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


def run_threads(args: argparse.Namespace) -> int:
    """The thread-per-connection rival, until SIGINT or SIGTERM."""
    ThreadHandler.framing = args.framing

    def on_signal(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = _ThreadingServer((args.host, args.port), ThreadHandler)
    host, port = server.socket.getsockname()[:2]
    print(f"listening on {host}:{port} (thread per connection)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring); the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("asyncio", "threads"))
    p.add_argument("--loop", choices=("asyncio", "uvloop", "rloop"), default="asyncio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--framing", choices=("len4", "line"), default="len4")
    p.add_argument("--store", metavar="PATH",
                   help="asyncio only: append each message to PATH, framed as "
                        "on the wire, through run_in_executor and echo it once "
                        "written")
    p.add_argument("--tls-cert", metavar="PEM",
                   help="asyncio only: serve over TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert")
    p.add_argument("--streams", action="store_true",
                   help="asyncio only: the idiomatic streams server (start_server, "
                        "await reader.readexactly, writer.write, await writer.drain) "
                        "instead of a Protocol")
    args = p.parse_args(argv)
    if args.tls_cert and args.kind != "asyncio":
        p.error("--tls-cert: asyncio only")
    if args.streams and (args.kind != "asyncio" or args.store):
        p.error("--streams: asyncio only, without --store")
    if args.kind == "threads":
        return run_threads(args)
    return run_asyncio(args)


if __name__ == "__main__":
    sys.exit(main())
