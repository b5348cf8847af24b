"""Request bodies for large reports: JSON or msgpack, optionally gzip-encoded, with a
size limit enforced while reading (so an oversize body is refused before it is parsed);
and the same limit on every other route's body (`BodyLimitMiddleware`)."""

from __future__ import annotations

import json
import json.scanner
import re
import zlib
from typing import Any

import anyio
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paceline_server.api.errors import render
from paceline_server.api.middleware import HttpMiddleware
from paceline_server.domain.errors import (
    MalformedBody,
    PacelineError,
    PayloadTooLarge,
    UnsupportedMediaType,
)

JSON_TYPES = ("application/json", "")
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")


#: Bodies beyond this many bytes are decoded off the event loop (far beyond any report a
#: trainer sends: 1024 prompts x 16 rollouts x 8 objectives as JSON lists are ~3 MB).
LARGE_BODY = 8 << 20
#: gzip bodies beyond this many compressed bytes are inflated off the event loop.
LARGE_GZIP = 64 << 10


async def read_body(request: Request, limit: int) -> Any:
    raw = await read_bytes(request, limit)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in JSON_TYPES:
        if len(raw) > LARGE_BODY:
            return await anyio.to_thread.run_sync(_parse_json, raw, True)
        return _parse_json(raw, False)
    if media in MSGPACK_TYPES:
        import msgpack

        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True,
                                   object_pairs_hook=_string_keyed)
        except (ValueError, msgpack.UnpackException) as exc:
            raise MalformedBody(f"request body is not valid msgpack: {exc}") from exc
    raise UnsupportedMediaType(
        f"unsupported content-type {media!r}; use application/json or application/msgpack")


async def read_bytes(request: Request, limit: int) -> bytes:
    """The request body, inflated when gzip-encoded, refused beyond `limit` bytes."""
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
    if encoding == "gzip":  # zlib lets other threads run while it inflates
        if len(raw) > LARGE_GZIP:
            return await anyio.to_thread.run_sync(_gunzip, raw, limit)
        return _gunzip(raw, limit)
    if encoding not in ("identity", ""):
        raise UnsupportedMediaType(f"unsupported content-encoding {encoding!r}; use gzip")
    return raw


def _parse_json(raw: bytes, yielding: bool) -> Any:
    """`json.loads(raw)`; with `yielding`, by json's pure-Python scanner (the same values,
    about 5x slower), run in a worker thread: the C scanner holds the GIL for the whole
    document, so a 60 MB body (malformed at its last byte) held every request of the
    process, /healthz included, for seconds; the Python one lets the event loop run
    every few milliseconds, and the large body pays for itself."""
    try:
        if not yielding:
            return json.loads(raw)
        decoder = json.JSONDecoder()
        decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
        return decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except ValueError as exc:  # syntax, encoding, or an integer over Python's 4300 digits
        raise MalformedBody(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # json's decoder recurses per nesting level
        raise MalformedBody("request body is nested too deeply") from exc


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


class BodyLimitMiddleware(HttpMiddleware):
    """The body size limit for every route, not only reports (whose bodies `read_body`
    also limits after decompression). A declared Content-Length over the limit is refused
    before a byte is read (the server enforces that the body matches it); a chunked body
    is buffered up to the limit, which costs no more memory than the route would spend on
    it anyway."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        super().__init__(app)
        self.limit = limit

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
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


#: Routes that read and decode their own body (`read_body` / `read_bytes`: msgpack, JSON
#: lines, gzip); every other route's body is JSON parsed by FastAPI.
OWN_BODY_ROUTES = re.compile(r"^/v1/(?:imports|curricula/[^/]+/reports)$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class JsonBodyMiddleware(HttpMiddleware):
    """The routes whose body FastAPI parses as JSON take what the report route takes:
    a gzip-encoded body is inflated (within the size limit) before FastAPI reads it, and
    a body that is not JSON is refused with 415 UNSUPPORTED_MEDIA_TYPE (rather than 400
    for gzip bytes read as JSON or 422 for text/plain read as a string)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        super().__init__(app)
        self.limit = limit

    def wants(self, scope: Scope) -> bool:
        return (super().wants(scope) and scope["method"] in _BODY_METHODS
                and not OWN_BODY_ROUTES.match(scope["path"]))

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length", b"")
        has_body = (declared.isdigit() and int(declared) > 0) \
            or b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if not has_body:
            await self.app(scope, receive, send)
            return
        media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0]
        media = media.strip().lower()
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1")
        encoding = encoding.strip().lower()
        error: PacelineError | None = None
        if media not in JSON_TYPES and not media.endswith("+json"):
            error = UnsupportedMediaType(
                f"unsupported content-type {media!r}; this route takes application/json")
        elif encoding not in ("identity", "", "gzip"):
            error = UnsupportedMediaType(
                f"unsupported content-encoding {encoding!r}; use gzip")
        if error is not None:
            await render(error)(scope, receive, send)
            return
        if encoding != "gzip":
            await self.app(scope, receive, send)
            return
        body = await self._inflated(receive)
        if not isinstance(body, bytes):
            if body is not None:
                await render(body)(scope, receive, send)
            return
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope.get("headers", ())
                            if k not in (b"content-encoding", b"content-length",
                                         b"transfer-encoding")]
        scope["headers"].append((b"content-length", str(len(body)).encode()))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _inflated(self, receive: Receive) -> bytes | PacelineError | None:
        """The inflated body, the error to answer, or None when the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return PayloadTooLarge(f"request body exceeds {self.limit} bytes",
                                       {"limit": self.limit})
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            if len(raw) > LARGE_GZIP:
                return await anyio.to_thread.run_sync(_gunzip, raw, self.limit)
            return _gunzip(raw, self.limit)
        except PacelineError as exc:
            return exc
