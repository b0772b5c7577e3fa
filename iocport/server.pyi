"""Type stubs for iocport.server."""
from typing import Any, Awaitable, Callable

import os
import ssl as _ssl

from ._iocport import Connection, File, Request
from .framing import Framing

__all__ = ["Server", "backends", "default_backend"]

def backends() -> tuple[str, ...]: ...
def default_backend() -> str: ...

class Server:
    def __init__(
        self,
        handler: Callable[[Connection, bytes], object]
        | Callable[[Connection, bytes], Awaitable[object]]
        | Callable[[Connection, Request], object]
        | Callable[[Connection, Request], Awaitable[object]]
        | Callable[[Connection, list[bytes]], object]
        | Callable[[Connection, list[bytes]], Awaitable[object]] | None = None,
        *,
        framing: Framing | None = None,
        workers: int = 1,
        backend: str | None = None,
        on_connect: Callable[[Connection], object]
        | Callable[[Connection], Awaitable[object]] | None = None,
        on_close: Callable[[Connection], object]
        | Callable[[Connection], Awaitable[object]] | None = None,
        on_eof: Callable[[Connection], object] | None = None,
        on_drain: Callable[[Connection], object] | None = None,
        max_message: int | None = None,
        max_unsent: int = ...,
        unsent_limit: int = ...,
        max_connections: int = ...,
        idle_timeout: float | None = None,
        half_close_timeout: float | None = 30.0,
        native_echo: bool = False,
        ssl: _ssl.SSLContext | None = None,
        ssl_handshake_timeout: float | None = 60.0,
        handlers_per_connection: int = 1,
    ) -> None: ...
    def listen(self, host: str = "127.0.0.1", port: int = 0, *, backlog: int = 1024,
               reuse_port: bool = False,
               ssl: _ssl.SSLContext | None = None) -> tuple[str, int]: ...
    def listen_unix(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes], *,
                    mode: int | None = None, backlog: int = 1024,
                    ssl: _ssl.SSLContext | None = None) -> str: ...
    @property
    def addresses(self) -> list[tuple[str, int] | str]: ...
    @property
    def address(self) -> tuple[str, int] | str: ...
    @property
    def backend(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def start(self) -> Server: ...
    def connect(
        self, host: str, port: int,
        callback: Callable[[Connection, OSError | None], object] | None = None,
        *, timeout: float = 30.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Connection: ...
    def connect_unix(
        self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        callback: Callable[[Connection, OSError | None], object] | None = None,
        *, timeout: float = 30.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Connection: ...
    def open_file(self, path: str | bytes | os.PathLike[str], mode: str = "r", *,
                  perms: int = 0o644) -> File: ...
    def adopt_file(self, fd: int) -> File: ...
    def stop(self) -> None: ...
    def serve_forever(self, ready: Callable[[], object] | None = None) -> None: ...
    async def serve(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def __enter__(self) -> Server: ...
    def __exit__(self, *exc: object) -> None: ...
    async def __aenter__(self) -> Server: ...
    async def __aexit__(self, *exc: object) -> None: ...
