"""``python -m iocport http``'s handlers: a fixed ``hello, world`` and a
static file server (GET and HEAD, single byte ranges) whose bodies the
workers stream with send_file."""
from __future__ import annotations

import mimetypes
import os
from typing import TYPE_CHECKING, Callable
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from . import Connection, File, Request, Server

HELLO = b"hello, world"
_TEXT = (b"content-type", b"text/plain")


def hello(conn: Connection, req: Request) -> None:
    """Answer every request with ``hello, world``."""
    req.respond(200, [_TEXT], HELLO)


def parse_range(value: bytes, size: int) -> tuple[int, int] | None:
    """(offset, count) of a single ``bytes=`` range of a `size`-byte file,
    or None when it cannot be satisfied.  Raises ValueError when the field
    is not a single byte range (then the whole file is sent, as RFC 9110
    section 14.2 lets a server ignore what it does not understand)."""
    unit, _, spec = value.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        raise ValueError("not a single byte range")
    first, dash, last = spec.strip().partition(b"-")
    if not dash or not (first or last):
        raise ValueError("not a byte range")
    if not first:   # the last N bytes
        if not last.isdigit():
            raise ValueError("not a byte range")
        n = min(int(last), size)
        return (size - n, n) if n > 0 else None
    if not first.isdigit() or (last and not last.isdigit()):
        raise ValueError("not a byte range")
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end - start + 1


class StaticFiles:
    """Serve the files under `root`: 404 for what is missing (or not a
    regular file), 403 for a path that leads outside root, 405 for other
    methods; ``/hello`` answers ``hello, world``."""

    server: Server   # (set once the server exists: it opens the files)

    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def __call__(self, conn: Connection, req: Request) -> None:
        if req.path == b"/hello":
            req.respond(200, [_TEXT], HELLO)
            return
        if req.method not in (b"GET", b"HEAD"):
            req.respond(405, [(b"allow", b"GET, HEAD")])
            return
        rel = unquote_to_bytes(req.path).lstrip(b"/")
        if b"\0" in rel:
            req.respond(400, [_TEXT], b"bad path\n")
            return
        path = os.path.realpath(os.path.join(os.fsencode(self.root), rel))
        if path != os.fsencode(self.root) and not path.startswith(
                os.fsencode(self.root) + b"/"):
            req.respond(403, [_TEXT], b"forbidden\n")
            return
        if os.path.isdir(path):
            path = os.path.join(path, b"index.html")
        try:
            f = self.server.open_file(path, "r")
        except (OSError, ValueError):   # missing, unreadable, not a file
            req.respond(404, [_TEXT], b"not found\n")
            return
        self._send(req, f, os.fsdecode(path))

    def _send(self, req: Request, f: File, path: str) -> None:
        size = os.fstat(f.fd).st_size
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        headers = [(b"content-type", kind.encode()), (b"accept-ranges", b"bytes")]
        status, offset, count = 200, 0, size
        wanted = req.header(b"range")
        if wanted is not None:
            try:
                got = parse_range(wanted, size)
            except ValueError:
                got = (0, size)
            if got is None:
                headers.append((b"content-range", b"bytes */%d" % size))
                req.respond(416, headers)
                f.close()
                return
            if got != (0, size) or b"-" in wanted:
                status, (offset, count) = 206, got
                headers.append((b"content-range", b"bytes %d-%d/%d" % (
                    offset, offset + count - 1, size)))
        closed: Callable[[int, OSError | None], None] = lambda n, err: f.close()
        req.respond_file(f, status, headers, offset=offset, count=count,
                         callback=closed)
