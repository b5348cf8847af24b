"""Request bodies for large reports: JSON or msgpack, optionally gzip-encoded, with a
size limit enforced while reading (so an oversize body is refused before it is parsed);
and the same limit on every other route's body (`BodyLimitMiddleware`)."""

from __future__ import annotations

import json
import zlib
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paceline_server.api.errors import render
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
        except RecursionError as exc:  # json's decoder recurses per nesting level
            raise MalformedBody("request body is nested too deeply") from exc
    if media in MSGPACK_TYPES:
        import msgpack

        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True,
                                   object_pairs_hook=_string_keyed)
        except (ValueError, msgpack.UnpackException) as exc:
            raise MalformedBody(f"request body is not valid msgpack: {exc}") from exc
    raise UnsupportedMediaType(
        f"unsupported content-type {media!r}; use application/json or application/msgpack")


def _string_keyed(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """A msgpack map as a dict, refusing what JSON cannot express: binary keys."""
    for key, _ in pairs:
        if not isinstance(key, str):
            raise MalformedBody(f"msgpack map keys must be strings; got {type(key).__name__}")
    return dict(pairs)


def _gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress at most `limit` bytes (a zip bomb is refused, not inflated). Every
    member of a multi-member body is read (RFC 1952 allows them, `pigz` writes them);
    a truncated member or bytes after the last one are refused rather than ignored."""
    parts: list[bytes] = []
    size = 0
    while True:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = decompressor.decompress(raw, limit + 1 - size)
        except zlib.error as exc:
            raise MalformedBody(f"request body is not valid gzip: {exc}") from exc
        size += len(data)
        if size > limit or decompressor.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes", {"limit": limit})
        if not decompressor.eof:
            raise MalformedBody("request body is truncated gzip")
        parts.append(data)
        raw = decompressor.unused_data
        if not raw:
            return b"".join(parts)


class BodyLimitMiddleware:
    """The body size limit for every route, not only reports (whose bodies `read_body`
    also limits after decompression). A declared Content-Length over the limit is refused
    before a byte is read (the server enforces that the body matches it); a chunked body
    is buffered up to the limit, which costs no more memory than the route would spend on
    it anyway."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)  # no body
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"request body exceeds {self.limit} bytes",
                                {"limit": self.limit})
        await render(error)(scope, receive, send)
