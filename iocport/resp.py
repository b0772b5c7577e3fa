"""RESP values for ``conn.reply()`` on a server with ``RESP()`` framing.

- ``SimpleString(b"OK")``: bytes sent as a simple string (``+OK``) rather
  than a bulk string; ``OK``, ``PONG`` and ``QUEUED`` are ready-made.
- ``Error("ERR unknown command")``: an error reply (``-ERR ...``); the same
  type that a client's decoder gives for an error reply.
- Everything else maps as Redis's replies do: bytes and str are bulk
  strings, int an integer, None a null, float a double, bool a boolean,
  list and tuple arrays, dict a map (a flat array on RESP2), set a set.
"""
from __future__ import annotations

from ._iocport import RESPError as Error
from ._iocport import SimpleString

__all__ = ["Error", "OK", "PONG", "QUEUED", "SimpleString"]

OK: SimpleString = SimpleString(b"OK")
PONG: SimpleString = SimpleString(b"PONG")
QUEUED: SimpleString = SimpleString(b"QUEUED")
