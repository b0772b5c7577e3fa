"""Command line: ``python -m iocport echo`` (the demo server) and
``python -m iocport demo`` (that server under a short load, with figures)."""
import argparse
from collections import deque
import logging
import sys

from . import Server
from .framing import parse_framing


def _framing(text):
    try:
        return parse_framing(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _echo_args(p):
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--framing", type=_framing, default="len4",
                   help="len4 (default), len1/len2/len8, line, fixed:N")
    p.add_argument("--backend", choices=("auto", "uring", "epoll"), default=None,
                   help="default: $IOCPORT_BACKEND or auto")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--native", action="store_true",
                   help="echo in C without calling Python (the ceiling)")
    p.add_argument("--store", metavar="PATH", default=None,
                   help="append every message to PATH (overlapped writes) and "
                        "echo it once written")


class _Store:
    """``echo --store PATH``: echo each message once it has been appended to
    PATH.  Writes may complete out of order, so each connection keeps its
    replies in a queue and sends the written prefix of it."""

    def __init__(self, path):
        self.path = path
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

        self.log.write(msg, callback=written)


def echo(args):
    def on_message(conn, msg):
        conn.send(msg)

    if args.native and args.store:
        raise SystemExit("--native and --store do not go together")
    store = _Store(args.store) if args.store else None
    handler = None if args.native else store.on_message if store else on_message
    server = Server(handler, framing=args.framing, workers=args.workers,
                    backend=args.backend, native_echo=args.native)
    what = "native echo" if args.native else "python echo"
    if store:
        store.open(server)
        what = f"python echo after storing to {args.store}"
    host, port = server.listen(args.host, args.port)
    server.serve_forever(ready=lambda: print(
        f"listening on {host}:{port} (backend {server.backend}, {what})", flush=True))
    return 0


def demo(args):
    from ._demo import run_demo
    return run_demo(args)


def bench(args):
    from .bench import run
    return run(args)


def _bench_args(p, argv):
    """The bench command's options, added only when it is the command:
    iocport.bench is the whole benchmark (building C, processes, reports),
    which echo and demo have no use for.  The top-level parser takes no
    option but --help, so the command is argv's first word that is not one."""
    if next((a for a in argv if not a.startswith("-")), None) == "bench":
        from .bench import add_arguments
        add_arguments(p)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if argv is None:
        argv = sys.argv[1:]
    parser = argparse.ArgumentParser(prog="python -m iocport")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("echo", help="run the echo server")
    _echo_args(p)
    p.set_defaults(func=echo)
    p = sub.add_parser("demo", help="run the echo server under load and report")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--depth", type=int, default=16, help="messages in flight per connection")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--backend", choices=("auto", "uring", "epoll"), default=None)
    p.add_argument("--native", action="store_true")
    p.set_defaults(func=demo)
    p = sub.add_parser("bench", help="benchmark iocport against its rivals")
    _bench_args(p, argv)
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
