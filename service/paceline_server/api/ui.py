"""The built-in dashboard at /ui: a page shell, its static assets and one summary call.

Read-only by construction: every route here is a GET, and the page reads the same /v1
endpoints a client reads (curriculum, state, history, runs) with the bearer token the
user gives it, so auth, scopes and error codes are those of the API. The shell and the
assets hold no data and need no token. Everything ships in the package (uPlot, MIT,
vendored with its licence in ui/vendor/): the dashboard works without internet access.
"""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from paceline_server.api.deps import Ops, ReadScope
from paceline_server.app.overview import MAX_LISTED, Overview
from paceline_server.domain.errors import NotFound, RateLimited
from paceline_server.transport.ratelimit import RateLimiter

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".LICENSE": "text/plain; charset=utf-8"}
#: the assets, read once: a fixed table, so no request path reaches the file system
ASSETS: dict[str, tuple[bytes, str]] = {
    path.relative_to(UI_DIR).as_posix(): (path.read_bytes(), _TYPES[path.suffix])
    for path in sorted(UI_DIR.rglob("*")) if path.is_file() and path.suffix in _TYPES
    and path.name != "index.html"
}
#: no script, style or connection leaves the service (nothing from a CDN)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}

router = APIRouter(prefix="/ui", include_in_schema=False)


def _shell(request: Request) -> Response:
    """The page: the same shell for every dashboard path; its script picks the view from
    the URL. `<base>` makes every asset and API URL relative to where /ui is mounted."""
    root = request.scope.get("root_path", "").rstrip("/")
    page = (UI_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{BASE}}", html.escape(f"{root}/ui/", quote=True))
    return Response(page, media_type="text/html; charset=utf-8",
                    headers={**HEADERS, "Cache-Control": "no-cache"})


@router.get("")
def ui_root(request: Request) -> Response:
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/", status_code=307)


@router.get("/")
def ui_list(request: Request) -> Response:
    return _shell(request)


@router.get("/c/{name:path}")
def ui_curriculum(name: str, request: Request, ops: Ops) -> Response:
    # The history is read, and the engine /state needs loaded, while the browser loads
    # the scripts that will ask for them (on a cold server these are the page's slowest
    # requests; nothing is sent back here, and an unknown name is reported by the page).
    # Not with authentication on: the shell needs no token, and anyone could then have
    # engines loaded (and trainers' evicted) by asking for pages.
    if not request.app.state.settings.auth_enabled and _within_rate_limit(request):
        ops.prefetch(name)
    return _shell(request)


def _within_rate_limit(request: Request) -> bool:
    """Whether the caller's rate limit allows the prefetch (one call of its budget): the
    page is served either way, but the work it starts (history read, engine load) is an
    API call's, which a client over its limit must not get by asking for pages."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return True
    try:
        limiter.check(request.headers.get("authorization"),
                      request.client.host if request.client else None)
    except RateLimited:
        return False
    return True


@router.get("/static/{path:path}")
def ui_asset(path: str) -> Response:
    found = ASSETS.get(path)
    if found is None:
        raise NotFound(f"no dashboard asset {path!r}", {"path": path})
    content, media_type = found
    return Response(content, media_type=media_type,
                    headers={**HEADERS, "Cache-Control": "public, max-age=3600"})


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@router.get("/api/overview")
def ui_overview(request: Request, _: ReadScope) -> Response:
    """The first `MAX_LISTED` curricula by name with their strategy, reports, runs and
    health flags; `truncated` when there are more."""
    overview: Overview = request.app.state.overview
    listing = overview.listing()
    rows: list[dict[str, Any]] = [{
        "name": s.name, "sampler": s.sampler, "weighting": s.weighting,
        "created_at": _time(s.created_at), "reports": s.reports,
        "distributions": s.distributions, "runs": s.runs, "stale_runs": s.stale_runs,
        "last_heartbeat": _time(s.last_heartbeat), "flagged": s.flagged}
        for s in listing.curricula]
    return Response(orjson.dumps({"curricula": rows, "truncated": listing.truncated,
                                  "limit": MAX_LISTED}),
                    media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/{rest:path}")
def ui_other(rest: str, request: Request) -> Response:
    """Any other dashboard path: the page itself says there is no such view."""
    return _shell(request)
