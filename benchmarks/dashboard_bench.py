"""How fast the dashboard's pages render in a real browser (Debian's Chromium through
Playwright), and the screenshots docs/dashboard.md shows.

Starts `paceline-server serve` on a fresh SQLite file, runs a toy trainer against it
(`math`: dump_ucb + hypervolume, 3 distributions, two runs, one left to go stale; `code`:
spard + gradient), then opens the pages in a fresh browser context each time and reads
the page's own figure: milliseconds from the start of navigation to the first complete
render (`document.body.dataset.readyMs`). Prints one JSON object per case.

With `--long N`, a curriculum `long` of N reports (history_bench's toy trainer, its rows
recorded as the service's report path records them) is written before the server starts,
and its page is opened first on the cold server; the page's resource timings say where
the time went (the history request, the scripts, the charts after them).

    python benchmarks/dashboard_bench.py [--reports 150] [--long 10000] [--screenshots docs]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_service import local_service

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
LAYOUT = {"distributions": [{"name": "gsm8k-easy", "size": 600},
                            {"name": "math-medium", "size": 400},
                            {"name": "aime-hard", "size": 90}]}
OBJECTIVES = ["accuracy", {"name": "length", "direction": "minimize", "bounds": [0, 1]}]
EDGES = np.cumsum([600, 400, 90])


def train(http: httpx.Client, name: str, run_id: str, steps: int, start: int = 0) -> None:
    """A toy trainer whose pass rate grows on the medium distribution and stays at zero
    on the hard one, reporting through the REST API."""
    rng = np.random.default_rng(hash(run_id) % 2**32)
    http.post(f"/v1/curricula/{name}/runs", json={"run_id": run_id,
                                                  "metadata": {"host": "node-1"}})
    for step in range(start, start + steps):
        batch = http.post(f"/v1/curricula/{name}/batches",
                          json={"run_id": run_id, "step": step}).json()
        owner = np.searchsorted(EDGES, np.asarray(batch["indices"]), side="right")
        rate = np.array([0.85, min(0.8, 0.2 + step / 200), 0.0])[owner]
        accuracy = (rng.random((owner.size, 8)) < rate[:, None]).astype(float)
        length = np.clip(rng.normal(0.5 - 0.002 * step, 0.1, (owner.size, 8)), 0, 1).round(3)
        http.post(f"/v1/curricula/{name}/reports",
                  headers={"Idempotency-Key": f"{run_id}/{step}"},
                  json={"run_id": run_id, "step": step, "indices": batch["indices"],
                        "rewards": np.stack([accuracy, length], -1).tolist()}
                  ).raise_for_status()


#: the page's own timings, read once it is ready (milliseconds from navigation start)
TIMINGS = """() => {
  const entries = performance.getEntriesByType("resource");
  const end = (part) => Math.max(0, ...entries.filter((e) => e.name.includes(part))
                                            .map((e) => e.responseEnd));
  const took = (part) => Math.max(0, ...entries.filter((e) => e.name.includes(part))
                                             .map((e) => e.responseEnd - e.requestStart));
  const nav = performance.getEntriesByType("navigation")[0];
  return {ready: Number(document.body.dataset.readyMs),
          data_and_scripts: Number(document.body.dataset.dataMs || 0),
          state_done: end("/state"), runs_done: end("/runs"),
          html_done: nav.responseEnd, dom_content_loaded: nav.domContentLoadedEventEnd,
          app_js_done: end("app.js"), uplot_done: end("uPlot.iife"),
          history_request: took("/history"), history_done: end("/history"),
          history_bytes: Math.max(0, ...entries.filter((e) => e.name.includes("/history"))
                                               .map((e) => e.encodedBodySize))};
}"""


def timings(browser: Any, url: str, viewport: dict[str, int]) -> dict[str, float]:
    """The page's ready time and where it went, in a fresh browser context."""
    context = browser.new_context(viewport=viewport)
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-ready]", timeout=60_000)
        return {k: round(float(v), 1) for k, v in page.evaluate(TIMINGS).items()}
    finally:
        context.close()


def cold_loads(url: str, reports: int, times: int, chromium: str) -> None:
    """The long curriculum's page, each time the first request of a new server process."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=chromium, args=ARGS)
        for _ in range(times):
            with local_service(url) as service:
                print(json.dumps({"case": f"long ({reports} reports), server cold",
                                  **timings(browser, f"{service.url}/ui/c/long",
                                            {"width": 1400, "height": 900})}), flush=True)
        browser.close()


def ready_ms(browser: Any, url: str, viewport: dict[str, int],
             screenshot: Path | None = None) -> float:
    context = browser.new_context(viewport=viewport)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("body[data-ready]", timeout=30_000)
        if errors:
            raise RuntimeError(f"{url}: {errors}")
        if screenshot is not None:
            page.wait_for_timeout(300)
            page.screenshot(path=str(screenshot), full_page=True)
        return float(page.evaluate("document.body.dataset.readyMs"))
    finally:
        context.close()


def row(case: str, values: list[float]) -> None:
    print(json.dumps({"case": case, "runs": len(values),
                      "p50_ms": round(statistics.median(values)),
                      "max_ms": round(max(values)), "all_ms": [round(v) for v in values]}),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=150, help="reports of run-a on math")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--screenshots", type=Path, help="write the PNGs here (docs/)")
    parser.add_argument("--long", type=int, default=0,
                        help="also a curriculum of this many reports, written before the "
                             "server starts and opened first (cold)")
    parser.add_argument("--cold", type=int, default=0,
                        help="with --long: open its page this many more times, each on a "
                             "freshly started server")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    tmp = tempfile.mkdtemp()
    url = f"sqlite:///{Path(tmp) / 'ui.db'}"
    if args.long:
        from history_bench import build_log
        from paceline_server.app.history import HistoryService
        from paceline_server.store import open_store

        began = time.perf_counter()
        store = open_store(url, auto_migrate=True)
        build_log(store, args.long, history=HistoryService(store))
        store.close()
        print(json.dumps({"case": "long curriculum written", "reports": args.long,
                          "seconds": round(time.perf_counter() - began, 1)}), flush=True)
    with local_service(url, env={"PACELINE_RUN_STALE_AFTER_S": "20"}) as service, \
            httpx.Client(base_url=service.url, timeout=60) as http:
        began = time.perf_counter()
        for name, sampler, weighting in (("math", "dump_ucb", "hypervolume"),
                                         ("code", "spard", "gradient")):
            http.post("/v1/curricula", json={
                "name": name, "layout": LAYOUT, "objectives": OBJECTIVES, "batch_size": 32,
                "sampler": sampler, "weighting": weighting, "seed": 3}).raise_for_status()
        train(http, "math", "run-old", 10)
        train(http, "code", "run-b", max(10, args.reports // 3))
        time.sleep(21)  # run-old goes stale
        train(http, "math", "run-a", args.reports, start=0)
        print(json.dumps({"case": "setup", "seconds": round(time.perf_counter() - began, 1)}),
              flush=True)
        shots = args.screenshots
        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path=args.chromium, args=ARGS)
            wide = {"width": 1400, "height": 900}
            if args.long:
                page = f"{service.url}/ui/c/long"
                print(json.dumps({"case": f"long ({args.long} reports), first load, "
                                          "server cold", **timings(browser, page, wide)}),
                      flush=True)
                for _ in range(args.repeat):
                    print(json.dumps({"case": f"long ({args.long} reports)",
                                      **timings(browser, page, wide)}), flush=True)
            http.post("/v1/curricula/math/runs/run-a/heartbeat")  # run-a live, run-old stale
            first = ready_ms(browser, f"{service.url}/ui/", wide,
                             shots / "dashboard-list.png" if shots else None)
            row("list page, first load (server and browser cold)", [first])
            row("list page", [ready_ms(browser, f"{service.url}/ui/", wide)
                              for _ in range(args.repeat)])
            cold = ready_ms(browser, f"{service.url}/ui/c/math", wide)
            row("curriculum page, first load (its history not yet read)", [cold])
            row("curriculum page", [ready_ms(browser, f"{service.url}/ui/c/math", wide)
                                    for _ in range(args.repeat)])
            if shots:
                http.post("/v1/curricula/math/runs/run-a/heartbeat")  # a live run
                ready_ms(browser, f"{service.url}/ui/c/math", wide,
                         shots / "dashboard-curriculum.png")
                ready_ms(browser, f"{service.url}/ui/c/no-such-curriculum",
                         {"width": 1000, "height": 300}, shots / "dashboard-error.png")
            browser.close()
    if args.long and args.cold:
        cold_loads(url, args.long, args.cold, args.chromium)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
