"""Requests for a host name the service does not answer to are refused (421
HOST_NOT_ALLOWED), which stops DNS rebinding.

A page of `http://evil.example:8000` whose name its owner then points at 127.0.0.1 is,
for the browser, same-origin with the service on 127.0.0.1:8000: it may read every answer
and write without tripping the cross-site check (api/origin.py). Its requests still say
`Host: evil.example:8000`, and no rebinding can change that, so the Host header is what
tells (as Django's ALLOWED_HOSTS, Jupyter and Starlette's TrustedHostMiddleware check).
Which names are allowed: `Settings.serving_hosts`. gRPC needs no such check: browsers do
not speak it (HTTP/2 without TLS, trailers), so no page can send a call.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from paceline_server.api.errors import render
from paceline_server.api.middleware import HttpMiddleware
from paceline_server.domain.errors import HostNotAllowed
from paceline_server.settings import host_name


def requested_host(header: bytes) -> str | None:
    """The host name of a Host header (`name`, `name:port`, `[v6]:port`), compared as
    `host_name` normalises; None if it is not one."""
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.endswith("]") or ":" not in text:
        name, port = text, ""
    else:
        name, _, port = text.rpartition(":")
    if port and not port.isdigit():
        return None
    if ":" in name and not name.startswith("["):
        return None  # an IPv6 address must be bracketed in a Host header
    return host_name(name)


def matches(host: str, patterns: Sequence[str]) -> bool:
    return any(host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
               for pattern in patterns)


class AllowedHosts(HttpMiddleware):
    """Installed only when the allowed hosts are not `*`, so the usual deployment pays
    nothing. Every route is covered: /v1, the dashboard and its API, the docs, /metrics
    and the probes (which a loopback-bound service only gets from this machine)."""

    def __init__(self, app: ASGIApp, patterns: Sequence[str]) -> None:
        super().__init__(app)
        self.patterns = tuple(patterns)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = [value for key, value in scope.get("headers", ()) if key == b"host"]
        hosts = [requested_host(value) for value in sent]
        if not hosts or not all(h is not None and matches(h, self.patterns) for h in hosts):
            shown = sent[0].decode("latin-1")[:255] if sent else None
            message = ("a request must name its host (it sent no Host header)"
                       if shown is None else
                       f"this service does not answer to the host {shown!r} "
                       "(PACELINE_ALLOWED_HOSTS)")
            await render(HostNotAllowed(message, {"host": shown}))(scope, receive, send)
            return
        await self.app(scope, receive, send)
