"""Request bodies for large reports: JSON or msgpack, optionally gzip-encoded, with a
size limit enforced while reading (so an oversize body is refused before it is parsed)."""

from __future__ import annotations

import json
import zlib
from typing import Any

from fastapi import Request

from paceline_server.domain.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = ("application/json", "")
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")


async def read_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes", {"limit": limit})
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes", {"limit": limit})
        chunks.append(chunk)
    raw = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        raw = _gunzip(raw, limit)
    elif encoding not in ("identity", ""):
        raise UnsupportedMediaType(f"unsupported content-encoding {encoding!r}; use gzip")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in JSON_TYPES:
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedBody(f"request body is not valid JSON: {exc}") from exc
    if media in MSGPACK_TYPES:
        import msgpack

        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as exc:
            raise MalformedBody(f"request body is not valid msgpack: {exc}") from exc
    raise UnsupportedMediaType(
        f"unsupported content-type {media!r}; use application/json or application/msgpack")


def _gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress at most `limit` bytes (a zip bomb is refused, not inflated)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise MalformedBody(f"request body is not valid gzip: {exc}") from exc
    if len(data) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes", {"limit": limit})
    return data

