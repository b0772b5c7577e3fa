"""Framing specs: how a byte stream is cut into messages.

A spec is a small immutable value passed to the server (or to
``iocport._iocport.Framer``); the native layer reads it through ``_spec()``.

- ``LengthPrefixed(4)``: each message starts with its length (1, 2, 4 or 8
  bytes, big endian by default).
- ``Delimited(b"\\n")``: each message ends with a delimiter of 1 to 8 bytes.
- ``FixedSize(n)``: every message is exactly n bytes.
- ``HTTP()``: whole HTTP/1.1 requests, parsed natively; the handler gets
  an ``iocport.Request`` and answers with ``respond()``.
- ``RESP()``: whole Redis commands; the handler gets a list of bytes and
  answers with ``conn.reply(value)``.

``parse_framing("len4")`` builds one from a command-line string.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX",
    "Delimited",
    "FixedSize",
    "Framing",
    "HTTP",
    "LengthPrefixed",
    "RESP",
    "parse_framing",
]

#: Default largest payload accepted: 16 MiB.
DEFAULT_MAX = 16 * 1024 * 1024

_U64_MAX = (1 << 64) - 1


def _positive_int(value, name):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if value > _U64_MAX:
        raise ValueError(f"{name} is too large: {value}")
    return value


class Framing:
    """Base class of the framing specs (immutable; compare by value)."""

    __slots__ = ()

    def _key(self):
        raise NotImplementedError

    def _spec(self):
        """A dict for the native layer: "kind" (a name from FRAMING_KINDS in
        src/lib/framing.h) and the fields that kind uses."""
        raise NotImplementedError

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash((type(self), self._key()))

    def __reduce__(self):
        return (_rebuild, (type(self), self._key()))


def _rebuild(cls, key):
    obj = object.__new__(cls)
    for name, value in zip(cls.__slots__, key):
        object.__setattr__(obj, name, value)
    return obj


class LengthPrefixed(Framing):
    """Each message is preceded by its length in `size` bytes (1, 2, 4 or 8).

    `includes_header`: the length counts the header bytes too.  `max_size`
    is the largest payload accepted (header excluded); a bigger one is
    refused as soon as its header arrives.
    """

    # (a dict: the values are the attributes' docstrings)
    __slots__ = {
        "size": "Bytes in the length header: 1, 2, 4 or 8.",
        "byteorder": "The header's byte order: 'big' or 'little'.",
        "includes_header": "True when the length counts the header too.",
        "max_size": "The largest payload accepted, in bytes (header excluded).",
    }

    def __init__(self, size=4, *, byteorder="big", includes_header=False,
                 max_size=DEFAULT_MAX):
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, got {type(size).__name__}")
        if size not in (1, 2, 4, 8):
            raise ValueError(f"size must be 1, 2, 4 or 8, got {size}")
        if not isinstance(byteorder, str):
            raise TypeError(
                f"byteorder must be a str, got {type(byteorder).__name__}")
        if byteorder not in ("big", "little"):
            raise ValueError(
                f"byteorder must be 'big' or 'little', got {byteorder!r}")
        if not isinstance(includes_header, bool):
            raise TypeError("includes_header must be a bool, got "
                            f"{type(includes_header).__name__}")
        _positive_int(max_size, "max_size")
        set_ = object.__setattr__
        set_(self, "size", size)
        set_(self, "byteorder", byteorder)
        set_(self, "includes_header", includes_header)
        set_(self, "max_size", max_size)

    def _key(self):
        return (self.size, self.byteorder, self.includes_header, self.max_size)

    def _spec(self):
        return {"kind": "length", "hdr_size": self.size,
                "big_endian": self.byteorder == "big",
                "hdr_included": self.includes_header, "max_size": self.max_size}

    def __repr__(self):
        args = [repr(self.size)]
        if self.byteorder != "big":
            args.append(f"byteorder={self.byteorder!r}")
        if self.includes_header:
            args.append("includes_header=True")
        if self.max_size != DEFAULT_MAX:
            args.append(f"max_size={self.max_size}")
        return f"LengthPrefixed({', '.join(args)})"


class Delimited(Framing):
    """Each message ends with `delimiter` (1 to 8 bytes, not included in the
    message).  `max_size` is the largest payload accepted."""

    __slots__ = {
        "delimiter": "The bytes that end each message (1 to 8).",
        "max_size": "The largest payload accepted, in bytes (delimiter excluded).",
    }

    def __init__(self, delimiter=b"\n", *, max_size=DEFAULT_MAX):
        if not isinstance(delimiter, (bytes, bytearray, memoryview)):
            raise TypeError("delimiter must be bytes, got "
                            f"{type(delimiter).__name__}")
        delimiter = bytes(delimiter)
        if not 1 <= len(delimiter) <= 8:
            raise ValueError("delimiter must be 1 to 8 bytes, got "
                             f"{len(delimiter)}")
        _positive_int(max_size, "max_size")
        object.__setattr__(self, "delimiter", delimiter)
        object.__setattr__(self, "max_size", max_size)

    def _key(self):
        return (self.delimiter, self.max_size)

    def _spec(self):
        return {"kind": "delimited", "delim": self.delimiter,
                "max_size": self.max_size}

    def __repr__(self):
        if self.max_size != DEFAULT_MAX:
            return f"Delimited({self.delimiter!r}, max_size={self.max_size})"
        return f"Delimited({self.delimiter!r})"


class FixedSize(Framing):
    """Every message is exactly `size` bytes.  `max_size` (default: `size`)
    must not be smaller than `size`."""

    __slots__ = {
        "size": "Bytes in every message.",
        "max_size": "The largest payload accepted, in bytes (at least size).",
    }

    def __init__(self, size, *, max_size=None):
        _positive_int(size, "size")
        if max_size is None:
            max_size = size
        _positive_int(max_size, "max_size")
        if max_size < size:
            raise ValueError(
                f"max_size ({max_size}) must not be smaller than size ({size})")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "max_size", max_size)

    def _key(self):
        return (self.size, self.max_size)

    def _spec(self):
        return {"kind": "fixed", "size": self.size, "max_size": self.max_size}

    def __repr__(self):
        if self.max_size != self.size:
            return f"FixedSize({self.size}, max_size={self.max_size})"
        return f"FixedSize({self.size})"


class HTTP(Framing):
    """Whole HTTP/1.1 requests (RFC 9112), parsed and framed natively: the
    handler is called as ``handler(conn, request)`` once per request, body
    included, and answers with ``request.respond()`` or ``conn.respond()``.
    Answers leave in the order of the requests.  A request past a limit or
    malformed is answered natively (400, 413, 414, 431, 501, 505) and the
    connection closed.

    The limits (bytes, or a count): `max_body` (the body, de-chunked: 413),
    `max_request_line` (414), `max_header_line`, `max_headers` and
    `max_header_bytes` (431), `max_chunk_line` (400); and
    `header_timeout`, seconds from a request's first byte until its header
    section must be whole (408; None: no limit).
    """

    __slots__ = {
        "max_body": "The largest body accepted, de-chunked (413 past it).",
        "max_request_line": "The longest request line (414 past it).",
        "max_header_line": "The longest header or trailer field line (431).",
        "max_headers": "The most header plus trailer fields (431).",
        "max_header_bytes": "The largest header section; trailer section (431).",
        "max_chunk_line": "The longest chunk-size line (400).",
        "header_timeout": "Seconds a request's header section may take (408), or None.",
    }

    _DEFAULTS = {"max_body": 1 << 20, "max_request_line": 8192,
                 "max_header_line": 8192, "max_headers": 100,
                 "max_header_bytes": 65536, "max_chunk_line": 4096,
                 "header_timeout": 30.0}

    def __init__(self, *, max_body=1 << 20, max_request_line=8192,
                 max_header_line=8192, max_headers=100,
                 max_header_bytes=65536, max_chunk_line=4096,
                 header_timeout=30.0):
        values = {"max_body": max_body, "max_request_line": max_request_line,
                  "max_header_line": max_header_line,
                  "max_headers": max_headers,
                  "max_header_bytes": max_header_bytes,
                  "max_chunk_line": max_chunk_line}
        for name, value in values.items():
            _positive_int(value, name)
            object.__setattr__(self, name, value)
        if header_timeout is not None:
            if isinstance(header_timeout, bool) or not isinstance(
                    header_timeout, (int, float)):
                raise TypeError("header_timeout must be a number of seconds "
                                f"or None, got {type(header_timeout).__name__}")
            if not header_timeout > 0:
                raise ValueError("header_timeout must be positive, got "
                                 f"{header_timeout}")
        object.__setattr__(self, "header_timeout", header_timeout)

    @property
    def max_size(self):
        """The largest body accepted (as max_body)."""
        return self.max_body

    def _key(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def _spec(self):
        spec = {name: getattr(self, name) for name in self.__slots__
                if name != "header_timeout"}
        spec["kind"] = "http"
        if self.header_timeout is not None:
            spec["header_timeout_ms"] = max(1, round(self.header_timeout * 1000))
        return spec

    def __repr__(self):
        args = [f"{name}={getattr(self, name)}" for name in self.__slots__
                if getattr(self, name) != self._DEFAULTS[name]]
        return f"HTTP({', '.join(args)})"


class RESP(Framing):
    """Whole Redis commands (RESP2/RESP3 arrays of bulk strings, and inline
    commands as redis-cli and telnet send them), framed natively: the
    handler is called as ``handler(conn, args)`` with the arguments as a
    list of bytes (``[b"SET", b"k", b"v"]``) and answers with
    ``conn.reply(value)`` (or ``conn.defer()`` to answer later).  Replies
    leave in command order.  A protocol error gets Redis's error reply,
    then the connection closes.

    The limits, as Redis's: `max_bulk` (512 MiB, proto-max-bulk-len),
    `max_args` (1024*1024 arguments), `max_inline` (64 KiB: an inline
    command, or a count line).

    `client=True` frames the other way, for a server used to connect() to
    a Redis server: ``conn.command(b"SET", b"k", b"v", callback=cb)``
    sends a command and ``cb(conn, reply)`` gets its reply, decoded, on a
    worker (pipelined: replies match commands in order); a push (RESP3)
    goes to the handler.
    """

    __slots__ = {
        "max_bulk": "The longest bulk string (argument) accepted, in bytes.",
        "max_args": "The most arguments in one command.",
        "max_inline": "The longest inline command (or count line), in bytes.",
        "client": "True: replies are framed (a client), not commands.",
    }

    _DEFAULTS = {"max_bulk": 512 * 1024 * 1024, "max_args": 1024 * 1024,
                 "max_inline": 64 * 1024, "client": False}

    def __init__(self, *, max_bulk=512 * 1024 * 1024, max_args=1024 * 1024,
                 max_inline=64 * 1024, client=False):
        for name, value in (("max_bulk", max_bulk), ("max_args", max_args),
                            ("max_inline", max_inline)):
            _positive_int(value, name)
            object.__setattr__(self, name, value)
        if not isinstance(client, bool):
            raise TypeError(f"client must be a bool, got {type(client).__name__}")
        object.__setattr__(self, "client", client)

    @property
    def max_size(self):
        """The longest bulk string accepted (as max_bulk)."""
        return self.max_bulk

    def _key(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def _spec(self):
        spec = {name: getattr(self, name) for name in self.__slots__}
        spec["kind"] = "resp"
        return spec

    def __repr__(self):
        args = [f"{name}={getattr(self, name)}" for name in self.__slots__
                if getattr(self, name) != self._DEFAULTS[name]]
        return f"RESP({', '.join(args)})"


_FORMS = "'len1', 'len2', 'len4', 'len8' (suffix 'le' for little endian), " \
         "'line' or 'fixed:N'"


def parse_framing(text):
    """Framing spec from a command-line string: 'len4' (also len1, len2,
    len8; 'len4le' for little endian), 'line' or 'fixed:N'."""
    if not isinstance(text, str):
        raise TypeError(f"framing must be a str, got {type(text).__name__}")
    s = text.strip().lower()
    if s == "line":
        return Delimited(b"\n")
    if s.startswith("fixed:"):
        n = s[len("fixed:"):]
        if n.isdigit() and n.isascii():
            return FixedSize(int(n))
    elif s.startswith("len"):
        rest = s[3:]
        byteorder = "big"
        if rest.endswith(("le", "be")):
            byteorder = "little" if rest.endswith("le") else "big"
            rest = rest[:-2]
        if rest in ("1", "2", "4", "8"):
            return LengthPrefixed(int(rest), byteorder=byteorder)
    raise ValueError(f"unknown framing {text!r}: expected {_FORMS}")
