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
from ._version import __version__


def _not_built():
    """The ImportError for a source checkout without the built extension:
    after `pip install .`, Python started in the checkout imports its
    iocport/ (the current directory comes first on sys.path), not the
    installed package.  None when this iocport/ is not in a checkout."""
    import importlib.machinery
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    tree = os.path.dirname(here)
    if not (os.path.isfile(os.path.join(tree, "setup.py"))
            and os.path.isdir(os.path.join(tree, "src"))):
        return None
    wanted = "_iocport" + importlib.machinery.EXTENSION_SUFFIXES[0]
    others = sorted(f for f in os.listdir(here)
                    if f.startswith("_iocport.") and f.endswith(".so"))
    found = (f" (it holds {', '.join(others)}: built for another Python)"
             if others else "")
    return ImportError(
        f"iocport is being imported from its source tree, {tree}, whose "
        f"iocport/ has no extension built for this Python ({wanted}){found}.\n"
        "If iocport was installed with `pip install .`, start Python from "
        "another directory: started here, `python -m ...` and `python -c ...` "
        "import this tree's iocport/ ahead of the installed one (`pytest` "
        "runs from here; `python -m pytest` does not).\n"
        "To work in this tree instead, build the extension in it: "
        "`pip install -e .`",
        name=__name__, path=here)


try:
    from ._iocport import (
        CLOSE_REASONS, Connection, Error, File, Framer, FramingError, Packet,
        Port, PortClosedError, Reply, Request,
    )
except ModuleNotFoundError as _exc:
    _error = _not_built() if _exc.name == __name__ + "._iocport" else None
    if _error is None:
        raise
    raise _error from None
from .framing import HTTP, RESP, Delimited, FixedSize, LengthPrefixed, parse_framing
from .server import Server, backends, default_backend

del _not_built

__all__ = [
    "Server", "Connection", "File", "Port", "Packet", "Framer",
    "Error", "PortClosedError", "FramingError",
    "LengthPrefixed", "Delimited", "FixedSize", "HTTP", "RESP", "parse_framing",
    "Request", "Reply",
    "backends", "default_backend", "CLOSE_REASONS",
]
