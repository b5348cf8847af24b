"""Named arrays <-> a stream of bytes, written and read piece by piece.

An `.npz` must be built whole before it can be stored (the zip directory comes last and
members are sized up front), so encoding a large state that way holds a second copy of
it. This format can be produced and consumed incrementally instead: a fixed magic, the
length of a JSON header, the header (each array's key, dtype and shape, in order), then
each array's raw C-order bytes back to back. `encode_arrays` yields views of the arrays
themselves (no copy) and `decode_arrays` fills freshly allocated arrays straight from the
incoming chunks, so neither side ever holds the encoded whole; `chunked` cuts the views
into store-sized pieces of bounded size.

Like the `.npz` codec it replaces for snapshots, it never executes code: dtypes are
plain numpy type strings and object dtypes are refused both ways. Encoding is
deterministic (equal arrays give equal bytes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from paceline_server.domain.errors import StateCorrupt

#: First bytes of the format; an `.npz` (zip) starts with b"PK" instead.
MAGIC = b"\x89PACELINE-ARRAYS\x01\n"
_LENGTH_BYTES = 8
#: A header describes arrays, not data: anything larger is not one of ours.
MAX_HEADER_BYTES = 64 << 20
MAX_DIMENSIONS = 64


def is_array_stream(prefix: bytes | memoryview) -> bool:
    """Whether bytes beginning with `prefix` are in this format."""
    return bytes(prefix[:len(MAGIC)]) == MAGIC


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> Iterator[memoryview]:
    """The encoding of `arrays`, as pieces: the header, then a view of each array's bytes
    (a copy only for an array that is not C-contiguous). Pieces can be of any size;
    consume each before asking for the next when memory matters."""
    entries: list[tuple[str, np.ndarray]] = []
    for key, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"array {key!r} has an object dtype; not serialisable")
        entries.append((key, array))
    header = json.dumps([[key, a.dtype.str, list(a.shape)] for key, a in entries],
                        separators=(",", ":")).encode()
    yield memoryview(MAGIC + len(header).to_bytes(_LENGTH_BYTES, "little") + header)
    for _, array in entries:
        if array.size:
            yield np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def chunked(pieces: Iterable[bytes | memoryview], size: int) -> Iterator[bytes]:
    """`pieces` re-cut into chunks of exactly `size` bytes (the last one shorter), holding
    at most one chunk besides the piece being cut."""
    if size < 1:
        raise ValueError("chunk size must be at least 1 byte")
    buffer = bytearray()
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while len(view):
            if not buffer and len(view) >= size:
                yield bytes(view[:size])
                view = view[size:]
                continue
            take = min(size - len(buffer), len(view))
            buffer += view[:take]
            view = view[take:]
            if len(buffer) == size:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)


class _Reader:
    """Reads exact byte counts off an iterator of chunks of any sizes."""

    def __init__(self, chunks: Iterable[bytes | memoryview], what: str) -> None:
        self._chunks = iter(chunks)
        self._current = memoryview(b"")
        self._what = what

    def _refill(self) -> bool:
        for chunk in self._chunks:
            view = memoryview(chunk).cast("B")
            if len(view):
                self._current = view
                return True
        return False

    def read_into(self, target: memoryview) -> None:
        filled = 0
        while filled < len(target):
            if not len(self._current) and not self._refill():
                raise StateCorrupt(f"cannot decode {self._what}: it ends early")
            take = min(len(target) - filled, len(self._current))
            target[filled:filled + take] = self._current[:take]
            self._current = self._current[take:]
            filled += take

    def read(self, count: int) -> bytes:
        out = bytearray(count)
        self.read_into(memoryview(out))
        return bytes(out)

    def at_end(self) -> bool:
        return not len(self._current) and not self._refill()


def decode_arrays(chunks: Iterable[bytes | memoryview],
                  what: str = "array stream") -> dict[str, np.ndarray]:
    """The arrays encoded in `chunks` (consumed in order, each dropped once copied into
    its array); raises StateCorrupt for anything that is not a complete, well-formed
    encoding."""
    reader = _Reader(chunks, what)
    if reader.read(len(MAGIC)) != MAGIC:
        raise StateCorrupt(f"cannot decode {what}: not a Paceline array stream")
    length = int.from_bytes(reader.read(_LENGTH_BYTES), "little")
    if length > MAX_HEADER_BYTES:
        raise StateCorrupt(f"cannot decode {what}: header of {length} bytes")
    try:
        header = json.loads(reader.read(length))
        specs = [_entry(item) for item in header]
    except (ValueError, TypeError) as exc:
        raise StateCorrupt(f"cannot decode {what}: bad header ({exc})") from exc
    arrays: dict[str, np.ndarray] = {}
    for key, dtype, shape in specs:
        if key in arrays:
            raise StateCorrupt(f"cannot decode {what}: array {key!r} appears twice")
        array = np.empty(shape, dtype=dtype)
        if array.size:
            reader.read_into(array.reshape(-1).view(np.uint8).data)
        arrays[key] = array
    if not reader.at_end():
        raise StateCorrupt(f"cannot decode {what}: bytes after the last array")
    return arrays


def _entry(item: object) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
            and isinstance(item[1], str) and isinstance(item[2], list)):
        raise ValueError("an entry is not [key, dtype, shape]")
    key, code, shape = item
    dtype = np.dtype(code)
    if dtype.hasobject:
        raise ValueError(f"array {key!r} has an object dtype")
    if len(shape) > MAX_DIMENSIONS or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**62 for n in shape):
        raise ValueError(f"array {key!r} has a bad shape {shape!r}")
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize >= 2**62:
        raise ValueError(f"array {key!r} is too large")
    return key, dtype, tuple(shape)
