"""The dashboard's routes without a browser: the shell, the vendored assets (all packaged,
nothing fetched from elsewhere), the overview call, read-only methods and auth."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server.api.ui import ASSETS, UI_DIR
from support import SPEC

ROOT = Path(__file__).resolve().parents[2]


def test_every_asset_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["paceline_server"]
    package = UI_DIR.parent
    files = [p.relative_to(package).as_posix() for p in UI_DIR.rglob("*") if p.is_file()]
    assert "ui/vendor/uPlot.iife.min.js" in files and "ui/vendor/uPlot.LICENSE" in files
    for name in files:
        assert any(fnmatch(name, g) for g in globs), f"{name} is not package data"
    assert "MIT License" in (UI_DIR / "vendor" / "uPlot.LICENSE").read_text()


def test_nothing_is_loaded_from_elsewhere() -> None:
    for name in ("index.html", "app.js", "app.css"):
        text = (UI_DIR / name).read_text()
        assert not re.search(r"https?://", text), name
    assert {"app.js", "app.css", "vendor/uPlot.iife.min.js",
            "vendor/uPlot.min.css"} <= set(ASSETS)


def test_shell_and_assets(sqlite_client: TestClient) -> None:
    client = sqlite_client
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    for path in ("/ui/", "/ui/c/math", "/ui/c/no-such", "/ui/elsewhere"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<base href="/ui/">' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    script = client.get("/ui/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/ui/static/vendor/uPlot.iife.min.js").content == \
        (UI_DIR / "vendor" / "uPlot.iife.min.js").read_bytes()
    for missing in ("/ui/static/nope.js", "/ui/static/%2e%2e/api/ui.py", "/ui/static/index.html"):
        answer = client.get(missing)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "NOT_FOUND"


def test_ui_routes_are_get_only(sqlite_client: TestClient) -> None:
    for route in sqlite_client.app.routes:  # type: ignore[attr-defined]
        path = getattr(route, "path", "")
        if path.startswith("/ui"):
            assert set(route.methods) <= {"GET", "HEAD"}, path  # type: ignore[attr-defined]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert sqlite_client.request(method, "/ui/api/overview").status_code == 405


def test_overview(sqlite_client: TestClient) -> None:
    client = sqlite_client
    assert client.get("/ui/api/overview").json() == {"curricula": [], "truncated": False,
                                                      "limit": 1000}
    assert client.post("/v1/curricula", json=SPEC).status_code == 201
    assert client.post("/v1/curricula/math/runs", json={"run_id": "r1"}).status_code == 201
    rows: list[dict[str, Any]] = client.get("/ui/api/overview").json()["curricula"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["name"], row["sampler"], row["weighting"], row["reports"], row["runs"],
            row["stale_runs"], row["distributions"]) == ("math", "uniform", "fixed", 0, 1, 0, 2)
    assert row["flagged"] == {"stalled": [], "saturated": [], "hopeless": []}
    assert row["last_heartbeat"] is not None


def test_overview_needs_a_read_token(tmp_path: Path) -> None:
    with make_client(f"sqlite:///{tmp_path / 'a.db'}", api_tokens={"r": "read"}) as client:
        answer = client.get("/ui/api/overview")
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "UNAUTHENTICATED"
        assert client.get("/ui/api/overview", headers={"Authorization": "Bearer r"}).json() \
            == {"curricula": [], "truncated": False, "limit": 1000}
        assert client.get("/ui/").status_code == 200  # the shell holds no data


def test_the_dashboards_data_calls_are_rate_limited(tmp_path: Path) -> None:
    """/ui/api/overview reads the database (a query per curriculum listed) and checks
    tokens as /v1 does: it takes from the caller's budget, so neither its cost nor token
    guessing escapes the limit. The page shell and assets stay unlimited."""
    with make_client(f"sqlite:///{tmp_path / 'rl.db'}", api_tokens={"r": "read"},
                     rate_limit_per_s=0.01, rate_limit_burst=2) as client:
        read = {"Authorization": "Bearer r"}
        assert [client.get("/ui/api/overview", headers=read).status_code
                for _ in range(3)] == [200, 200, 429]
        assert client.get("/v1/curricula", headers=read).status_code == 429  # one budget
        guesses = [client.get("/ui/api/overview",
                              headers={"Authorization": f"Bearer guess-{i}"}).status_code
                   for i in range(3)]
        assert guesses == [401, 401, 429]
        assert client.get("/ui/").status_code == 200
        assert client.get("/ui/static/app.js").status_code == 200


def test_a_page_prefetches_within_the_rate_limit(tmp_path: Path) -> None:
    """Without auth a curriculum page starts reading its history and loading its engine
    (an API call's work): only while the caller's budget allows; the page is served
    either way."""
    with make_client(f"sqlite:///{tmp_path / 'pf.db'}", rate_limit_per_s=0.01,
                     rate_limit_burst=1) as client:
        asked: list[str] = []
        client.app.state.operations.prefetch = asked.append  # type: ignore[attr-defined]
        assert [client.get(f"/ui/c/c{i}").status_code for i in range(3)] == [200] * 3
        assert asked == ["c0"]
