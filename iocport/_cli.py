"""What the commands of ``python -m iocport`` share: the parser, argument
types, the backend check and the two kinds of user error.

A mistake on the command line (a bad option value, a bad
``$IOCPORT_BACKEND``) is a usage error: one line on stderr, exit status 2,
as argparse has it.  A failure the user can fix (a port in use, an unknown
host, a file that cannot be opened, io_uring refused) is one line on stderr
and exit status 1.  Anything else is a bug and keeps its traceback.
"""
import argparse
import logging
import math
import os
from typing import NoReturn

from . import _iocport
from .server import backends, default_backend

PROG = "python -m iocport"
# The native core's bound on workers (src/py/server.c checks it again): here
# so that a bad --workers is a usage error, found before anything starts.
MAX_WORKERS = 256


class UsageError(Exception):
    """A usage error found after parsing: exit status 2."""


class Failure(Exception):
    """A failure the user can fix, in one line: exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (argparse prints the usage
    above the message; ``--help`` has it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_in(low, high=None):
    """An argument type: an integer from `low` to `high` (no bound if None)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = (f"between {low} and {high}" if high is not None
                     else "positive" if low == 1 else f"at least {low}")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def positive_float(text):
    """An argument type: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be above zero, got {text}")
    return value


def output_path(text):
    """An argument type: a file to write, whose directory must exist (found
    now, not after a run of several minutes)."""
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"{text}: no such directory {directory}")
    return text


def why(exc):
    """An OSError as the words the user needs: 'Address already in use'
    (socket.create_server() adds the address it tried to strerror, which the
    caller's message says better)."""
    text = exc.strerror or str(exc)
    return text.split(" (while attempting to bind", 1)[0]


def resolve_backend(requested):
    """The backend a command asks for: `requested` (--backend), else
    $IOCPORT_BACKEND, else 'auto'.  A bad $IOCPORT_BACKEND is a usage
    error; io_uring asked for where this host refuses it is a Failure whose
    hint is the command line's, not the Python API's."""
    if requested is None:
        try:
            backend = default_backend()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        backend = requested
    if backend == "uring" and "uring" not in backends():
        if requested:
            source, fix = "--backend uring", "use --backend epoll (or --backend auto)"
        else:
            source, fix = ("IOCPORT_BACKEND=uring",
                           "set IOCPORT_BACKEND=epoll or auto, or pass --backend epoll")
        raise Failure(f"{source}: io_uring is not available on this host "
                      f"({os.strerror(_iocport.uring_status())}); {fix}")
    return backend


def log_to_stderr():
    """iocport's own log lines (the io_uring fallback, a handler's
    exception, a connection closed for a bad frame) on stderr, INFO and up.
    The root logger is left alone: other libraries' INFO lines (matplotlib's
    font cache, say) stay out, and their warnings go through logging's
    last resort as in any program."""
    log = logging.getLogger("iocport")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
