"""Helpers for the dashboard tests: Debian's Chromium driven by Playwright, and a toy
trainer that reports through the real HTTP API."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np

#: flags that keep Chromium quiet and offline (no updater, sync or first-run traffic)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def find_chromium() -> str | None:
    """Debian's chromium (apt-get install chromium), never a browser Playwright downloads."""
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    return None


def spec(name: str, sampler: Any = "dump_ucb", weighting: Any = "hypervolume",
         batch_size: int = 16) -> dict[str, Any]:
    return {
        "name": name, "batch_size": batch_size, "seed": 7,
        "layout": {"distributions": [{"name": "easy", "size": 60},
                                     {"name": "medium", "size": 40},
                                     {"name": "hard", "size": 30}]},
        "objectives": ["accuracy", {"name": "length", "direction": "minimize",
                                    "bounds": [0, 100]}],
        "sampler": sampler, "weighting": weighting,
    }


PASS_RATE = np.array([0.85, 0.45, 0.0])
BOUNDS = np.cumsum([60, 40, 30])


class Trainer:
    """One run of a toy trainer: served batch -> rewards by difficulty -> report."""

    def __init__(self, http: httpx.Client, curriculum: str, run_id: str) -> None:
        self.http, self.curriculum, self.run_id = http, curriculum, run_id
        self.step = 0
        self.rng = np.random.default_rng(abs(hash((curriculum, run_id))) % 2**32)
        answer = http.post(f"/v1/curricula/{curriculum}/runs",
                           json={"run_id": run_id, "metadata": {"trainer": "toy"}})
        assert answer.status_code == 201, answer.text

    def train(self, steps: int) -> None:
        for _ in range(steps):
            path = f"/v1/curricula/{self.curriculum}"
            batch = self.http.post(f"{path}/batches",
                                   json={"run_id": self.run_id, "step": self.step}).json()
            owner = np.searchsorted(BOUNDS, np.asarray(batch["indices"]), side="right")
            n = owner.size
            accuracy = (self.rng.random((n, 4)) < PASS_RATE[owner][:, None]).astype(float)
            length = self.rng.integers(20, 90, size=(n, 4)).astype(float)
            answer = self.http.post(
                f"{path}/reports", headers={"Idempotency-Key": f"{self.run_id}/{self.step}"},
                json={"run_id": self.run_id, "step": self.step, "indices": batch["indices"],
                      "rewards": np.stack([accuracy, length], axis=-1).tolist()})
            assert answer.status_code == 200, answer.text
            self.step += 1


class Page:
    """A browser page that records console errors, uncaught exceptions and requests."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.requests: list[tuple[str, str]] = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: self.requests.append((r.method, r.url)))

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready]", timeout=15_000)
