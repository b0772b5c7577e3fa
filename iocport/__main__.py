"""Command line: ``python -m iocport echo`` (the demo server),
``python -m iocport http`` (an HTTP/1.1 server: hello, world, or static
files), ``python -m iocport demo`` (that server under a short load, with figures)
and ``python -m iocport bench`` (iocport against its rivals).

User errors are one line on stderr: exit status 2 for a usage error, 1 for
a failure such as a port in use (see iocport/_cli.py)."""
from __future__ import annotations

import argparse
from collections import deque
import os
import sys
from typing import TYPE_CHECKING

from . import Framer, Server, __version__
from ._cli import (MAX_WORKERS, PROG, Failure, Parser, UsageError, int_in,
                   log_to_stderr, positive_float, resolve_backend, why)
from .framing import DEFAULT_MAX, Framing, parse_framing

if TYPE_CHECKING:
    import ssl   # (imported when --tls-cert asks for it)

STORE_HELP = (
    "append every message to PATH, framed as on the wire (--framing), and "
    "echo it once written: with len4 each message is stored as a 4-byte "
    "big-endian length and the message, with line as the message and a "
    "newline; read the file back with "
    "iocport.Framer(iocport.parse_framing(FRAMING)).feed(data)")


def _framing(text: str) -> Framing:
    try:
        return parse_framing(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _backend_arg(p):
    p.add_argument("--backend", choices=("auto", "uring", "epoll"), default=None,
                   help="default: $IOCPORT_BACKEND or auto")


def _echo_args(p):
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_in(0, 65535), default=9000,
                   help="0 picks a free port (default 9000)")
    p.add_argument("--framing", type=_framing, default="len4",
                   help="len4 (default), len1/len2/len8, line, fixed:N")
    _backend_arg(p)
    p.add_argument("--workers", type=int_in(1, MAX_WORKERS), default=1)
    p.add_argument("--native", action="store_true",
                   help="echo in C without calling Python (the ceiling)")
    p.add_argument("--store", metavar="PATH", default=None, help=STORE_HELP)
    p.add_argument("--async", dest="use_async", action="store_true",
                   help="the handler as a coroutine (async def), served from "
                        "an asyncio loop")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="with --async: the event loop (default asyncio)")
    p.add_argument("--tls-cert", metavar="PEM", default=None,
                   help="serve over TLS with this certificate chain (PEM); "
                        "needs --tls-key unless the key is in the same file")
    p.add_argument("--tls-key", metavar="PEM", default=None,
                   help="the private key of --tls-cert (PEM)")


class _Store:
    """``echo --store PATH``: echo each message once it has been appended to
    PATH, framed as on the wire, so that the file reads back as the
    messages.  Appends land in the order issued; their writes may complete
    out of order, so each connection keeps its replies in a queue and sends
    the written prefix of it."""

    def __init__(self, path, framing):
        self.path = path
        self.framer = Framer(framing)
        self.log = None

    def open(self, server):
        self.log = server.open_file(self.path, "a")

    def on_message(self, conn, msg):
        queue = conn.state
        if queue is None:
            queue = conn.state = deque()
        entry = [msg, False]
        queue.append(entry)

        def written(n, err):
            if err is not None:
                conn.abort()
                return
            entry[1] = True
            while queue and queue[0][1]:
                conn.send(queue.popleft()[0])

        self.log.write(self.framer.wrap(msg), callback=written)


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server-side ssl.SSLContext of --tls-cert/--tls-key, or None."""
    if args.tls_cert is None:
        if args.tls_key is not None:
            raise UsageError("--tls-key needs --tls-cert")
        return None
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except ssl.SSLError as exc:   # (an OSError too)
        raise Failure(f"cannot use {args.tls_cert} and {args.tls_key or args.tls_cert} "
                      f"as a certificate and its key: {exc.reason or exc}") from None
    except OSError as exc:
        raise Failure(f"cannot read the TLS certificate or key: {why(exc)}: "
                      f"{exc.filename or args.tls_cert}") from None
    return ctx


def _listen_and_start(server: Server, args: argparse.Namespace,
                      backend: str) -> tuple[str, int]:
    """Listen on --host/--port and start: the address, or a Failure with
    one line saying why not."""
    try:
        host, port = server.listen(args.host, args.port)
    except OSError as exc:   # in use, no such address, unknown host
        where = f"[{args.host}]" if ":" in args.host else args.host
        raise Failure(f"cannot listen on {where}:{args.port}: {why(exc)}") from None
    try:
        server.start()
    except OSError as exc:
        raise Failure(f"cannot start the server ({backend} backend): {why(exc)}") from None
    return host, port


def echo(args: argparse.Namespace) -> int:
    """The echo command: serve until Ctrl-C or SIGTERM."""
    if args.native and args.store:
        raise UsageError("--native and --store do not go together")
    if args.use_async and (args.native or args.store):
        raise UsageError("--async does not go with --native or --store")
    if args.loop != "asyncio" and not args.use_async:
        raise UsageError("--loop needs --async")
    backend = resolve_backend(args.backend)
    tls = _tls_context(args)
    if args.use_async:
        return _echo_async(args, backend, tls)

    def on_message(conn, msg):
        conn.send(msg)

    store = _Store(args.store, args.framing) if args.store else None
    handler = None if args.native else store.on_message if store else on_message
    server = Server(handler, framing=args.framing, workers=args.workers,
                    backend=backend, native_echo=args.native, ssl=tls)
    what = "native echo" if args.native else "python echo"
    if store:
        try:
            store.open(server)
        except (OSError, ValueError) as exc:   # ValueError: not a regular file
            raise Failure(f"cannot open the --store file {args.store}: "
                          f"{why(exc) if isinstance(exc, OSError) else exc}") from None
        what = f"python echo after storing to {args.store}"
    host, port = _listen_and_start(server, args, backend)
    server.serve_forever(ready=lambda: print(
        f"listening on {host}:{port} (backend {server.backend}, {what}"
        f"{', TLS' if tls else ''})", flush=True))
    return 0


def _echo_async(args: argparse.Namespace, backend: str,
                tls: ssl.SSLContext | None) -> int:
    """echo --async: the echo handler as a coroutine, served from an
    asyncio loop (uvloop's with --loop uvloop) until Ctrl-C or SIGTERM."""
    import asyncio
    import signal
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise Failure("--loop uvloop: uvloop is not installed "
                          "(pip install uvloop)") from None
        new_loop = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop

    async def on_message(conn, msg):
        conn.send(msg)

    async def main() -> None:
        server = Server(on_message, framing=args.framing, workers=args.workers,
                        backend=backend, ssl=tls)
        async with server:
            host, port = _listen_and_start(server, args, backend)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, server.stop)
            print(f"listening on {host}:{port} (backend {server.backend}, "
                  f"python echo, async on {args.loop}{', TLS' if tls else ''})",
                  flush=True)
            await server.serve()

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    return 0


def http(args: argparse.Namespace) -> int:
    """The http command: answer ``hello, world`` (or serve --root's files)
    until Ctrl-C or SIGTERM."""
    from . import HTTP
    from ._static import StaticFiles, hello
    if args.native and args.root:
        raise UsageError("--native and --root do not go together")
    if args.root is not None and not os.path.isdir(args.root):
        raise Failure(f"--root {args.root}: not a directory")
    backend = resolve_backend(args.backend)
    tls = _tls_context(args)
    files = StaticFiles(args.root) if args.root is not None else None
    handler = files or (None if args.native else hello)
    server = Server(handler, framing=HTTP(), workers=args.workers,
                    backend=backend, native_echo=args.native, ssl=tls)
    if files is not None:
        files.server = server
    what = (f"files under {args.root}" if files else
            "native hello" if args.native else "python hello")
    host, port = _listen_and_start(server, args, backend)
    scheme = "https" if tls else "http"
    server.serve_forever(ready=lambda: print(
        f"listening on {host}:{port} (backend {server.backend}, {what}, "
        f"{scheme})", flush=True))
    return 0


def demo(args: argparse.Namespace) -> int:
    """The demo command: the echo server under a short load."""
    from ._demo import run_demo
    return run_demo(args)


def bench(args: argparse.Namespace) -> int:
    """The bench command: iocport against its rivals."""
    from .bench import run
    return run(args)


def _bench_args(p, argv):
    """The bench command's options, added only when it is the command:
    iocport.bench is the whole benchmark (building C, processes, reports),
    which echo and demo have no use for.  The top-level parser's options
    (--help, --version) take no value, so the command is argv's first word
    that is not an option."""
    if next((a for a in argv if not a.startswith("-")), None) == "bench":
        from .bench import add_arguments
        add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); the exit status."""
    log_to_stderr()
    if argv is None:
        argv = sys.argv[1:]
    parser = Parser(prog=PROG)
    parser.add_argument("--version", action="version", version=f"iocport {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("echo", help="run the echo server")
    _echo_args(p)
    p.set_defaults(func=echo, parser=p)
    p = sub.add_parser("http", help="run an HTTP/1.1 server (hello, world, "
                                    "or static files with --root)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_in(0, 65535), default=8080,
                   help="0 picks a free port (default 8080)")
    p.add_argument("--root", metavar="DIR", default=None,
                   help="serve the files under DIR (GET, HEAD, byte ranges); "
                        "/hello still answers hello, world")
    _backend_arg(p)
    p.add_argument("--workers", type=int_in(1, MAX_WORKERS), default=1)
    p.add_argument("--native", action="store_true",
                   help="answer hello, world in C without calling Python "
                        "(the ceiling)")
    p.add_argument("--tls-cert", metavar="PEM", default=None,
                   help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="PEM", default=None,
                   help="the private key of --tls-cert (PEM)")
    p.set_defaults(func=http, parser=p)
    p = sub.add_parser("demo", help="run the echo server under load and report")
    p.add_argument("--seconds", type=positive_float, default=3.0)
    p.add_argument("--connections", type=int_in(1), default=50)
    p.add_argument("--depth", type=int_in(1), default=16,
                   help="messages in flight per connection")
    p.add_argument("--size", type=int_in(0, DEFAULT_MAX), default=64, help="payload bytes")
    _backend_arg(p)
    p.add_argument("--native", action="store_true")
    p.set_defaults(func=demo, parser=p)
    p = sub.add_parser("bench", help="benchmark iocport against its rivals")
    _bench_args(p, argv)
    p.set_defaults(func=bench, parser=p)
    args = parser.parse_args(argv)
    command: Parser = args.parser   # the command's own, for its name in errors
    try:
        return args.func(args)
    except UsageError as exc:
        command.error(str(exc))
    except Failure as exc:
        sys.stderr.write(f"{command.prog}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{command.prog}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
