"""The dashboard in a real browser (Chromium via Playwright) against a real service
process after a short run: pages load without console errors, the charts hold the
expected series and points, the page follows new reports, errors are shown, and nothing
the UI does can change state."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from ui_support import Page, Trainer, spec

from support import ServiceProcess, free_port, running_service

DISTRIBUTIONS = ["easy", "medium", "hard"]


def charts(page: Page) -> dict[str, dict[str, Any]]:
    """What each uPlot chart holds: series labels (without x) and points per series."""
    return page.page.evaluate("""() => Object.fromEntries(
        Object.entries(window.__paceline.charts).map(([id, u]) => [id, {
            series: u.series.slice(1).map((s) => s.label),
            points: u.data[0].length,
            x: Array.from(u.data[0]),
            columns: u.data.slice(1).map((c) => Array.from(c)),
        }]))""")


def test_list_page_shows_every_curriculum(service: ServiceProcess, page: Page) -> None:
    page.open(f"{service.url}/ui/")
    rows = page.page.locator("#curricula tbody tr")
    assert rows.count() == 2
    math = page.page.locator("tr[data-curriculum=math]")
    cells = [c.strip() for c in math.locator("td").all_inner_texts()]
    assert cells[:5] == ["math", "dump_ucb", "hypervolume", "14", "3"]
    assert cells[5].startswith("2 runs")
    assert "hopeless" in cells[7]  # `hard` never passes
    code = [c.strip() for c in page.page.locator("tr[data-curriculum=code] td").all_inner_texts()]
    assert code[:4] == ["code", "spard", "gradient", "6"]
    assert page.console_errors == []


def test_curriculum_page_charts(service: ServiceProcess, page: Page) -> None:
    page.open(f"{service.url}/ui/c/math")
    history = httpx.get(f"{service.url}/v1/curricula/math/history").json()
    held = charts(page)
    assert set(held) == {"probability", "success", "zero_variance", "advantage", "weights"}
    rows = len(history["seq"])
    assert rows == 15  # seq 0 and 14 reports
    for chart in held.values():
        assert chart["points"] == rows and chart["x"] == history["seq"]
    # stacked probabilities: drawn top first; the top of the stack is 1 everywhere
    assert held["probability"]["series"] == DISTRIBUTIONS[::-1]
    assert held["probability"]["columns"][0] == pytest.approx([1.0] * rows)
    easy = history["per_distribution"]["easy"]["probability"]
    assert held["probability"]["columns"][-1] == pytest.approx(easy)
    assert held["success"]["series"] == DISTRIBUTIONS
    assert held["success"]["columns"][2][1:] == pytest.approx(
        history["per_distribution"]["hard"]["success"][1:])
    assert held["zero_variance"]["series"] == DISTRIBUTIONS
    assert held["weights"]["series"] == ["w accuracy", "w length", "reward scale",
                                         "hypervolume"]
    assert held["weights"]["columns"][0] == pytest.approx(history["reward_weights"]["accuracy"])
    # explanations: one sentence per distribution, from /state
    items = page.page.locator("#explanations li")
    assert items.count() == 3
    state = httpx.get(f"{service.url}/v1/curricula/math/state").json()
    for i, explanation in enumerate(state["explanations"]):
        assert explanation["sentence"] in items.nth(i).inner_text()
    assert "flagged hopeless" in items.nth(2).inner_text()
    # runs with heartbeats and staleness
    runs = page.page.locator("#runs-table tbody tr")
    assert runs.count() == 2
    quiet = page.page.locator("tr[data-run=quiet]").inner_text()
    assert "ago" in quiet and ("stale" in quiet or "live" in quiet)
    assert page.console_errors == []


def test_page_follows_new_reports(service: ServiceProcess, page: Page) -> None:
    page.open(f"{service.url}/ui/c/code?refresh=200")
    before = int(page.page.evaluate("document.body.dataset.seq"))
    points = charts(page)["success"]["points"]
    with httpx.Client(base_url=service.url) as http:
        trainer = Trainer(http, "code", f"late-{before}")
        trainer.train(3)
    page.page.wait_for_function(f"() => Number(document.body.dataset.seq) === {before + 3}",
                                timeout=15_000)
    after = charts(page)
    assert after["success"]["points"] == points + 3
    assert after["probability"]["x"][-1] == before + 3
    assert page.page.locator(f"tr[data-run=late-{before}]").count() == 1
    assert page.console_errors == []


LEGEND = """() => { const u = window.__paceline.charts.probability;
    const i = u.data[0].length - 1;
    u.setCursor({left: u.valToPos(u.data[0][i], "x"), top: 10});
    return Array.from(u.root.querySelectorAll(".u-legend .u-value"), (e) => e.textContent); }"""


def test_probability_legend_follows_new_reports(service: ServiceProcess, page: Page) -> None:
    """The stacked chart's legend shows each distribution's own share under the cursor,
    also at points drawn by a refresh (the chart kept the formatter of the first
    history: '–' or another row's share for every new point)."""
    page.open(f"{service.url}/ui/c/code?refresh=200")
    before = int(page.page.evaluate("document.body.dataset.seq"))
    with httpx.Client(base_url=service.url) as http:
        Trainer(http, "code", f"legend-{before}").train(3)
    page.page.wait_for_function(f"() => Number(document.body.dataset.seq) === {before + 3}",
                                timeout=15_000)
    per = httpx.get(f"{service.url}/v1/curricula/code/history").json()["per_distribution"]
    legend = page.page.evaluate(LEGEND)
    assert legend[0] == str(before + 3)  # x: the last report
    assert legend[1:] == [f"{per[name]['probability'][-1]:.3f}" for name in DISTRIBUTIONS[::-1]]
    assert page.console_errors == []


def test_the_page_comes_back_after_an_outage(browser: Any, tmp_path: Any) -> None:
    """A service restarted while the list (no table yet) is open, or that answers 503
    when a page is first opened: the error is shown, then the page recovers by itself
    (it stayed on the error for good), without a request loop."""
    port = free_port()
    url = f"sqlite:///{tmp_path / 'outage.db'}"
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        listing = Page(context.new_page())
        with running_service(url, port=port, log=tmp_path / "s1.log") as process:
            listing.open(f"{process.url}/ui/?refresh=500")
            assert "No curricula yet" in listing.page.inner_text("#app")
        listing.page.wait_for_selector(".error[data-error-code=UNREACHABLE]", timeout=10_000)
        with running_service(url, port=port, log=tmp_path / "s2.log") as process, \
                httpx.Client(base_url=process.url) as http:
            assert http.post("/v1/curricula", json=spec("math")).status_code == 201
            Trainer(http, "math", "r1").train(2)
            listing.page.wait_for_selector("tr[data-curriculum=math]", timeout=15_000)

            page = Page(context.new_page())
            down = {"on": True, "asked": 0}

            def unavailable(route: Any) -> None:
                down["asked"] += 1
                if down["on"]:
                    route.fulfill(status=503, content_type="application/json", body=json.dumps(
                        {"error": {"code": "UNAVAILABLE", "message": "overloaded"}}))
                else:
                    route.continue_()

            page.page.route("**/v1/**", unavailable)
            page.open(f"{process.url}/ui/c/math?refresh=500")
            assert page.page.locator(".error").get_attribute("data-error-code") == "UNAVAILABLE"
            page.page.wait_for_timeout(2500)
            assert down["asked"] <= 4 * 4  # a retry every 1 s (4 requests each), no loop
            down["on"] = False
            page.page.wait_for_selector("#explanations li", timeout=10_000)
            assert charts(page)["success"]["points"] == 3
            assert not [e for e in page.console_errors + listing.console_errors
                        if e.startswith("uncaught")]
    finally:
        context.close()


def test_an_empty_refresh_parameter_is_the_default(service: ServiceProcess, page: Page) -> None:
    """`?refresh=` (empty) polls every 2 s like any value that is not a number; it read
    as 0 and stopped the polling."""
    page.open(f"{service.url}/ui/?refresh=")
    before = page.page.evaluate("window.__paceline.renders")
    page.page.wait_for_function(f"() => window.__paceline.renders > {before}", timeout=6_000)


def test_a_curriculum_created_again_while_its_page_is_open(service: ServiceProcess,
                                                           page: Page) -> None:
    """Deleted and created again (another sampler, weighting and batch size) between
    two polls: the page shows the new curriculum's spec (it kept the old one's for good:
    the spec was read once, when the page was opened)."""
    with httpx.Client(base_url=service.url) as http:
        assert http.post("/v1/curricula", json=spec("again")).status_code == 201
        Trainer(http, "again", "r1").train(2)
        page.open(f"{service.url}/ui/c/again?refresh=2000")
        assert "dump_ucb" in page.page.inner_text("#meta")
        assert http.delete("/v1/curricula/again?confirm=again").status_code == 204
        body = spec("again", sampler="uniform", weighting="fixed", batch_size=8)
        assert http.post("/v1/curricula", json=body).status_code == 201
        Trainer(http, "again", "r2").train(1)
    page.page.wait_for_function(
        "() => document.getElementById('meta')?.innerText.includes('uniform')", timeout=10_000)
    meta = page.page.inner_text("#meta")
    assert "fixed" in meta and "dump_ucb" not in meta
    assert charts(page)["success"]["points"] == 2
    assert page.page.locator("#runs-table tbody tr").count() == 1
    assert page.console_errors == []
    page.page.goto("about:blank")
    assert httpx.delete(f"{service.url}/v1/curricula/again?confirm=again").status_code == 204


def test_runs_go_stale_on_the_page(service: ServiceProcess, page: Page) -> None:
    page.open(f"{service.url}/ui/c/math?refresh=250")
    page.page.wait_for_function(
        "() => document.querySelector('tr[data-run=quiet] .badge').textContent === 'stale'",
        timeout=15_000)


@pytest.mark.parametrize(("path", "code"), [
    ("/ui/c/nope", "CURRICULUM_NOT_FOUND"),
    ("/ui/c/bad%00name", "INVALID_REQUEST"),
    ("/ui/no/such/page", "NOT_FOUND"),
])
def test_errors_are_shown_not_blank(service: ServiceProcess, page: Page, path: str,
                                    code: str) -> None:
    page.open(service.url + path)
    error = page.page.locator(".error")
    assert error.count() == 1 and error.get_attribute("data-error-code") == code
    assert code in error.inner_text()
    assert not [e for e in page.console_errors if e.startswith("uncaught")]


def test_the_ui_only_reads(service: ServiceProcess, page: Page) -> None:
    before = httpx.get(f"{service.url}/v1/curricula/math").json()
    runs = httpx.get(f"{service.url}/v1/curricula/math/runs").json()
    page.open(f"{service.url}/ui/?refresh=150")
    page.page.wait_for_function("() => window.__paceline.renders >= 3", timeout=15_000)
    page.page.click("a[href='c/math']")
    page.page.wait_for_selector("#explanations li")
    page.page.wait_for_timeout(600)  # a few refreshes
    assert page.requests, "the page made no request"
    assert {method for method, _ in page.requests} == {"GET"}
    assert all(url.startswith(service.url) for _, url in page.requests)  # nothing external
    assert httpx.get(f"{service.url}/v1/curricula/math").json() == before
    assert httpx.get(f"{service.url}/v1/curricula/math/runs").json() == runs
    # and the server offers nothing else under /ui
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/ui/", "/ui/api/overview", "/ui/c/math", "/ui/static/app.js"):
            assert httpx.request(method, service.url + path).status_code == 405


def test_read_token_when_auth_is_on(browser: Any, tmp_path: Any) -> None:
    tokens = '{"w-token": "write", "r-token": "read"}'
    with running_service(f"sqlite:///{tmp_path / 'auth.db'}", log=tmp_path / "s.log",
                         env={"PACELINE_API_TOKENS": tokens}) as process:
        with httpx.Client(base_url=process.url,
                          headers={"Authorization": "Bearer w-token"}) as http:
            assert http.post("/v1/curricula", json=spec("secret")).status_code == 201
            Trainer(http, "secret", "r1").train(2)
        context = browser.new_context()
        try:
            page = Page(context.new_page())
            page.open(f"{process.url}/ui/c/secret")
            assert page.page.locator(".error").get_attribute("data-error-code") \
                == "UNAUTHENTICATED"
            assert page.page.evaluate(  # the token field has the focus: type and Enter
                "document.activeElement.getAttribute('aria-label')") == "token"
            page.page.fill("form.token input", "r-token")
            page.page.click("form.token button")
            page.page.wait_for_selector("#explanations li")
            assert charts(page)["success"]["points"] == 3
            assert {method for method, _ in page.requests} == {"GET"}
            other = Page(context.new_page())  # the token in the fragment works too
            other.open(f"{process.url}/ui/#token=r-token")
            assert other.page.locator("tr[data-curriculum=secret]").count() == 1
        finally:
            context.close()


def test_the_page_reports_its_render_time(service: ServiceProcess, page: Page) -> None:
    """The curriculum page says when its first complete render was (ms from navigation
    start): what benchmarks/dashboard_bench.py reads. No timing is asserted here."""
    page.open(f"{service.url}/ui/c/math")
    ready = page.page.evaluate("Number(document.body.dataset.readyMs)")
    navigation = page.page.evaluate(
        "performance.getEntriesByType('navigation')[0].responseEnd")
    assert ready > 0 and ready >= navigation
    assert page.console_errors == []


def test_what_the_ui_audit_found(browser: Any, tmp_path: Any) -> None:
    """A token with a raw '%' in the fragment (it raised 'URI malformed' with no way
    out), `?refresh=abc` (NaN: setTimeout fired at once, hundreds of requests a second),
    the default sampler's explanation terms (no place to break: the page scrolled
    sideways), names that differ only in case (the legends upper-cased them) and
    integer terms (21124 showed as 2.11e+4)."""
    tokens = '{"w-token": "write", "odd%tok": "read"}'
    body = {"name": "Learn", "batch_size": 16, "seed": 7, "sampler": "learnability",
            "layout": {"distributions": [{"name": "Hard", "size": 60},
                                         {"name": "hard", "size": 40}]},
            "objectives": ["accuracy"]}
    with running_service(f"sqlite:///{tmp_path / 'audit.db'}", log=tmp_path / "s.log",
                         env={"PACELINE_API_TOKENS": tokens}) as process:
        with httpx.Client(base_url=process.url,
                          headers={"Authorization": "Bearer w-token"}) as http:
            assert http.post("/v1/curricula", json=body).status_code == 201
            assert http.post("/v1/curricula/Learn/runs", json={"run_id": "r1"}).status_code \
                == 201
            for step in range(4):
                batch = http.post("/v1/curricula/Learn/batches",
                                  json={"run_id": "r1", "step": step}).json()
                rewards = [[[float((i + j) % 2)] for j in range(4)] for i in batch["indices"]]
                assert http.post("/v1/curricula/Learn/reports", json={
                    "run_id": "r1", "step": step, "indices": batch["indices"],
                    "rewards": rewards}).status_code == 200
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            page = Page(context.new_page())
            page.open(f"{process.url}/ui/#token=odd%tok")
            assert page.page.locator("tr[data-curriculum=Learn]").count() == 1
            page.open(f"{process.url}/ui/c/Learn?refresh=abc")
            page.page.wait_for_selector("#explanations li")
            assert page.page.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth")
            legends = page.page.locator(".uplot .u-legend th").all_inner_texts()
            assert "Hard" in legends and "hard" in legends
            terms = " ".join(page.page.locator("#explanations .terms").all_inner_texts())
            assert "e+" not in terms
            # screen readers: charts are labelled images, the status line is announced
            assert page.page.locator(".chart[role=img][aria-label]").count() >= 4
            assert page.page.locator("#status").get_attribute("aria-live") == "polite"
            before = len(page.requests)
            page.page.wait_for_timeout(3000)
            assert len(page.requests) - before <= 6  # a poll every 2 s, not hundreds
            assert page.console_errors == []
        finally:
            context.close()


def test_markup_in_run_ids_and_metadata_is_shown_as_text(browser: Any, tmp_path: Any) -> None:
    """Run ids and run metadata are free text (names are letters, digits and `._:-`):
    the page shows markup in them as characters and runs none of it, and a curriculum
    of 300 distributions draws every row."""
    run_id = '<img src=x onerror="window.__xss=1">'
    metadata = {"<b>note</b>": "<script>window.__xss=2</script><img src=y onerror=window.__xss=3>"}
    many = {"name": "many", "batch_size": 32, "seed": 7, "objectives": ["accuracy"],
            "layout": {"distributions": [{"name": f"d{i:03d}", "size": 10}
                                         for i in range(300)]}}
    with running_service(f"sqlite:///{tmp_path / 'xss.db'}", log=tmp_path / "s.log") as process:
        with httpx.Client(base_url=process.url) as http:
            assert http.post("/v1/curricula", json=spec("math")).status_code == 201
            assert http.post("/v1/curricula", json=many).status_code == 201
            assert http.post("/v1/curricula/math/runs", json={
                "run_id": run_id, "metadata": metadata}).status_code == 201
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            page = Page(context.new_page())
            page.open(f"{process.url}/ui/c/math?refresh=0")
            cells = page.page.locator("#runs-table tbody td").all_inner_texts()
            assert cells[0] == run_id
            assert json.loads(cells[-1]) == metadata
            assert page.page.locator("#runs-table img, #runs-table script, #runs-table b"
                                     ).count() == 0
            assert page.page.evaluate("window.__xss") is None
            page.open(f"{process.url}/ui/c/many?refresh=0")
            assert page.page.locator("#distributions tbody tr").count() == 300
            assert page.console_errors == []
        finally:
            context.close()
