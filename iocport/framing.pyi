"""Type stubs for iocport.framing."""

from typing import Final, Literal

__all__ = [
    "DEFAULT_MAX",
    "Delimited",
    "FixedSize",
    "Framing",
    "LengthPrefixed",
    "parse_framing",
]

DEFAULT_MAX: Final[int]

class Framing:
    def _spec(self) -> dict[str, object]: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class LengthPrefixed(Framing):
    @property
    def size(self) -> Literal[1, 2, 4, 8]: ...
    @property
    def byteorder(self) -> Literal["big", "little"]: ...
    @property
    def includes_header(self) -> bool: ...
    @property
    def max_size(self) -> int: ...
    def __init__(
        self,
        size: Literal[1, 2, 4, 8] = 4,
        *,
        byteorder: Literal["big", "little"] = "big",
        includes_header: bool = False,
        max_size: int = ...,
    ) -> None: ...

class Delimited(Framing):
    @property
    def delimiter(self) -> bytes: ...
    @property
    def max_size(self) -> int: ...
    def __init__(self, delimiter: bytes | bytearray | memoryview = b"\n", *,
                 max_size: int = ...) -> None: ...

class FixedSize(Framing):
    @property
    def size(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    def __init__(self, size: int, *, max_size: int | None = None) -> None: ...

def parse_framing(text: str) -> LengthPrefixed | Delimited | FixedSize: ...
