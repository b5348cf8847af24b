"""Writes a browser sends from another site are refused (403 FORBIDDEN).

The service answers no CORS preflight, but a browser sends a "simple" cross-site POST
without asking: one whose body has no Content-Type, which the report and import routes
read as JSON. With authentication off (`serve`'s default, on 127.0.0.1) any web page the
operator opened could thus post reports or import curricula into the local service. A
browser marks such requests (`Sec-Fetch-Site`, or at least `Origin`); trainers, the SDK,
the CLI and curl send neither, and the dashboard only reads, from its own origin.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

from paceline_server.api.errors import render
from paceline_server.api.middleware import HttpMiddleware
from paceline_server.domain.errors import Forbidden

#: methods a browser may send cross-site that change nothing here
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site(headers: dict[bytes, bytes]) -> bool:
    """Whether a browser says the request comes from a page of another origin."""
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return site.lower() not in (b"same-origin", b"none")
    origin = headers.get(b"origin")
    if origin is None:
        return False  # not from a browser (or one too old to say; it sends Origin)
    host = headers.get(b"host", b"").lower()
    try:
        return urlsplit(origin.decode("latin-1")).netloc.lower().encode("latin-1") != host
    except ValueError:  # not a URL, e.g. "null" from a sandboxed page
        return True


class CrossSiteWrites(HttpMiddleware):
    def wants(self, scope: Scope) -> bool:
        return super().wants(scope) and scope["method"] not in SAFE_METHODS

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if cross_site(dict(scope.get("headers", ()))):
            error = Forbidden("cross-site requests from a browser may not write",
                              {"reason": "cross_site"})
            await render(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)
