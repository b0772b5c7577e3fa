"""Type stubs for the native core, iocport._iocport."""
import ssl as _ssl
import sys
from typing import Any, Callable, Coroutine, Final, Generator, Sequence, final

from iocport.framing import Framing

CLOSE_REASONS: Final[tuple[str, ...]]
"""Every value Connection.close_reason can take, and stats()['errors'] keys."""

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self

_Bytes = bytes | bytearray | memoryview

def backends() -> tuple[str, ...]: ...
def uring_status() -> int: ...
def tls_check(ctx: object, server_side: bool, /) -> None: ...

class Error(Exception):
    """The base class of iocport's own exceptions: PortClosedError (also a
    RuntimeError) and FramingError (also a ValueError).  Errors from the
    system are OSError, and bad arguments TypeError or ValueError."""

class PortClosedError(Error, RuntimeError):
    """Raised by Port.get()/post() once the port is closed."""

@final
class Packet(tuple[int, int, Any]):
    """A completion packet: (key, nbytes, value)."""
    __match_args__: Final = ("key", "nbytes", "value")
    n_fields: Final[int]
    n_sequence_fields: Final[int]
    n_unnamed_fields: Final[int]
    @property
    def key(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def value(self) -> Any: ...

@final
class Port:
    """A completion port: threads post packets and wait for them (LIFO).

    At most ``concurrency`` threads run between two waits; a thread that got
    a packet runs until its next get(), its leave(), or its exit (which frees
    its slot, as on Windows).
    """
    def __new__(cls, concurrency: int = 0) -> Port:
        """concurrency=0 (the default) means os.cpu_count(), or 1 if unknown."""
    def post(self, key: int = 0, nbytes: int = 0, value: object = None) -> None: ...
    def get(self, timeout: float | None = None) -> Packet:
        """One packet; raises TimeoutError when the timeout expires and
        PortClosedError once the port is closed."""
    def get_many(self, max: int, timeout: float | None = None) -> list[Packet]:
        """1 to max packets; [] (not TimeoutError) when the timeout expires."""
    def get_async(self, timeout: float | None = None) -> Coroutine[Any, Any, Packet]:
        """Coroutine: one packet, awaited without blocking the loop."""
    def close(self) -> None: ...
    def leave(self) -> None:
        """The calling thread stops counting as running; its slot goes to the
        most recent waiter if packets are queued.  A thread that exits leaves
        by itself."""
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None:
        """Close the port."""
    @property
    def concurrency(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def waiters(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def closed(self) -> bool: ...

class FramingError(Error, ValueError):
    """Raised by Framer.feed() on a framing error (a message over max_size,
    a bad length header)."""
    messages: list[bytes]
    """The whole messages that feed() call framed before the bad frame, in
    order ([] when the Framer had already failed)."""

@final
class Framer:
    """Incremental message framer for an iocport framing spec."""
    def __new__(cls, spec: Framing) -> Framer: ...
    def feed(self, data: _Bytes, /) -> list[bytes]:
        """Whole messages now complete.  On a bad frame: FramingError, its
        messages those framed before it; later calls raise it again."""
        ...
    def wrap(self, payload: _Bytes, /) -> bytes: ...
    @property
    def pending(self) -> int: ...
    @property
    def spec(self) -> Framing: ...

class HTTPParseError(Error, ValueError):
    """Raised by HTTPParser.feed() on a request it rejects."""
    status: int
    """What a server answers: 400, 413, 414, 431, 501 or 505."""
    reason: str
    requests: list[dict[str, Any]]
    """The whole requests that feed() call parsed before the rejected one."""

@final
class HTTPParser:
    """The native HTTP/1.1 request parser, for tests (private)."""
    def __new__(cls, *, max_request_line: int = 8192,
                max_header_line: int = 8192, max_headers: int = 100,
                max_header_bytes: int = 65536, max_body: int = 1048576,
                max_chunk_line: int = 4096) -> HTTPParser: ...
    def feed(self, data: _Bytes, /) -> list[dict[str, Any]]:
        """The requests now whole; after an Upgrade or CONNECT request the
        rest stays in buffered.  A rejection raises HTTPParseError, and
        again on every later call."""
        ...
    @property
    def buffered(self) -> bytes: ...
    @property
    def need(self) -> int: ...
    @property
    def expect_continue(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    @property
    def work(self) -> int: ...

class RESPProtocolError(Error, ValueError):
    """Raised by RESPParser.feed() on a protocol error; its text is
    Redis's."""
    messages: list[Any]
    """What that feed() call framed before the error."""
    reply: bytes | None
    """What a Redis server sends before closing (None for reply errors)."""

class RESPError(Exception):
    """An error reply (-ERR ..., !...) as a value: args[0] is its text."""

@final
class RESPParser:
    """A private test hook over the native RESP framer."""
    def __new__(cls, *, client: bool = False, max_bulk: int = 536870912,
                max_args: int = 1048576, max_inline: int = 65536,
                max_depth: int = 64) -> RESPParser: ...
    def feed(self, data: _Bytes, /) -> list[Any]: ...
    @classmethod
    def encode(cls, value: object, protocol: int = 2) -> bytes: ...
    @property
    def pending(self) -> int: ...

@final
class File:
    """An open file whose operations run natively on a server's workers."""
    def read(self, offset: int, size: int,
             callback: Callable[[bytes | None, OSError | None], object]) -> int: ...
    def write(self, data: _Bytes, offset: int | None = None,
              callback: Callable[[int | None, OSError | None], object] | None = None) -> int: ...
    def sync(self, callback: Callable[[None, OSError | None], object] | None = None, *,
             data_only: bool = False) -> int: ...
    def close(self, callback: Callable[[None, OSError | None], object]
              | None = None) -> None: ...
    def read_async(self, offset: int, size: int) -> Coroutine[Any, Any, bytes]: ...
    def write_async(self, data: _Bytes,
                    offset: int | None = None) -> Coroutine[Any, Any, int]: ...
    def sync_async(self, *, data_only: bool = False) -> Coroutine[Any, Any, None]: ...
    def close_async(self) -> Coroutine[Any, Any, None]: ...
    @property
    def fd(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def pending(self) -> int: ...
    @property
    def append_offset(self) -> int: ...

@final
class Request:
    """A whole HTTP request (HTTP() framing); cannot be created directly."""
    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def path(self) -> bytes: ...
    @property
    def query(self) -> bytes: ...
    @property
    def version(self) -> bytes: ...
    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]: ...
    @property
    def trailers(self) -> tuple[tuple[bytes, bytes], ...]: ...
    @property
    def body(self) -> bytes: ...
    @property
    def keep_alive(self) -> bool: ...
    @property
    def conn(self) -> Connection: ...
    def header(self, name: bytes | str, default: Any = None, /) -> Any: ...
    def respond(self, status: int,
                headers: Sequence[tuple[bytes | str, bytes | str]] | None = (),
                body: _Bytes | None = b"") -> bool: ...
    def respond_file(self, file: File, status: int = 200,
                     headers: Sequence[tuple[bytes | str, bytes | str]] | None = (),
                     *, offset: int = 0, count: int | None = None,
                     callback: Callable[[int, OSError | None], object] | None = None
                     ) -> bool: ...

@final
class Connection:
    """A connection: passed to handlers; cannot be created directly."""
    def respond(self, status: int,
                headers: Sequence[tuple[bytes | str, bytes | str]] | None = (),
                body: _Bytes | None = b"") -> bool: ...
    def send(self, data: _Bytes, /) -> bool: ...
    def send_raw(self, data: _Bytes, /) -> bool: ...
    def send_file(self, file: File, offset: int = 0, count: int | None = None,
                  callback: Callable[[int, OSError | None], object] | None = None) -> None: ...
    def send_file_async(self, file: File, offset: int = 0,
                        count: int | None = None) -> Coroutine[Any, Any, int]: ...
    def drain(self) -> Coroutine[Any, Any, None]: ...
    def __await__(self) -> Generator[Any, None, Connection]:
        """``await server.connect(...)``: the connection once connected."""
    def close(self) -> None: ...
    def abort(self) -> None: ...
    @property
    def id(self) -> int: ...
    @property
    def peer(self) -> tuple[Any, ...] | str | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def close_reason(self) -> str | None: ...
    @property
    def unsent(self) -> int: ...
    @property
    def writable(self) -> bool: ...
    @property
    def tls_version(self) -> str | None: ...
    @property
    def tls_cipher(self) -> tuple[str, str, int] | None: ...
    @property
    def alpn_protocol(self) -> str | None: ...
    @property
    def peer_certificate(self) -> bytes | None: ...
    state: Any

@final
class Server:
    """The native engine behind iocport.Server, which is the one to use."""
    def __new__(
        cls,
        handler: Callable[[Connection, bytes], object] | None,
        framing: Framing,
        *,
        workers: int = 1,
        backend: str = "uring",
        on_connect: Callable[[Connection], object] | None = None,
        on_close: Callable[[Connection], object] | None = None,
        max_unsent: int = ...,
        max_connections: int = ...,
        idle_timeout: float | None = None,
        native_echo: bool = False,
        fallback: bool = True,
        bufsize: int = 16384,
        on_eof: Callable[[Connection], object] | None = None,
        on_drain: Callable[[Connection], object] | None = None,
        half_close_timeout: float | None = 30.0,
        unsent_limit: int = ...,
        ssl_handshake_timeout: float = 60.0,
        hold_messages: bool = False,
    ) -> Server: ...
    def add_listener(self, sock: Any, ssl: _ssl.SSLContext | None = None) -> None: ...
    def adopt_file(self, fd: int, append_offset: int, /) -> File: ...
    def connect(self, addresses: list[tuple[int, tuple[Any, ...] | bytes]],
                callback: Callable[[Connection, OSError | None], object] | None,
                timeout: float, ssl: _ssl.SSLContext | None = None,
                server_hostname: str | None = None, /) -> Connection: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def backend(self) -> str: ...
    @property
    def fallback_errno(self) -> int: ...
    @property
    def running(self) -> bool: ...

# The asyncio layer's native hand-off (iocport/_aio.py): private.
_EV_MSG: Final[int]
_EV_OPEN: Final[int]
_EV_EOF: Final[int]
_EV_CLOSE: Final[int]

@final
class _Bridge:
    def __new__(cls, owner: Any, handler: Callable[..., object] | None,
                cancelled: type[BaseException]) -> _Bridge: ...
    def __call__(self, conn: Connection, msg: bytes, /) -> None: ...
    def push(self, kind: int, conn: Connection, arg: object, /) -> None: ...
    def drain(self) -> None: ...
    def attach(self, fd: int, loop: Any, /) -> None: ...
    def detach(self) -> None: ...
    def begin(self) -> Any: ...
    def end(self, outer: Any, /) -> None: ...
    def set_host(self, task: Any, /) -> None: ...
    @property
    def idle(self) -> bool: ...
