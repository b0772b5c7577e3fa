"""iocport: an I/O completion port for Python on Linux.

Socket work runs in native threads on io_uring or epoll with the GIL
released; handlers receive whole messages.

    import iocport

    def on_message(conn, msg):
        conn.send(msg)

    server = iocport.Server(on_message, framing=iocport.LengthPrefixed(4))
    server.listen("127.0.0.1", 9000)
    server.serve_forever()
"""
from ._iocport import (
    CLOSE_REASONS, Connection, File, Framer, FramingError, Packet, Port,
    PortClosedError,
)
from .framing import Delimited, FixedSize, LengthPrefixed, parse_framing
from .server import Server, backends, default_backend

__all__ = [
    "Server", "Connection", "File", "Port", "Packet", "PortClosedError", "Framer",
    "FramingError",
    "LengthPrefixed", "Delimited", "FixedSize", "parse_framing",
    "backends", "default_backend", "CLOSE_REASONS",
]
__version__ = "0.1.0"
