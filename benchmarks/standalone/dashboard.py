"""Dashboard benchmark: what one open ``GET /cache/dashboard`` page costs, by fleet size.

Run from the repository root, in the project's virtualenv, with Debian's ``chromium``::

    python -m benchmarks.standalone.dashboard                 # about 2 minutes
    python -m benchmarks.standalone.dashboard --sizes 10 100 --renders 40

One real instance on a private local server writes its report; the benchmark copies it
``N`` times (distinct origins, statuses and figures; ``reported_at`` advancing on every
read, so each refresh adds a sparkline point) and serves the page with that fleet from an
app under uvicorn on 127.0.0.1. A headless Chromium keeps the page open at
``?every=0.5`` and reads, after each refresh, the time the page spent building the table
and laying it out (its ``data-render-ms``). Measured per fleet size:

- **render**: median and maximum milliseconds per refresh (after the first 5 refreshes),
  in this machine's headless Chromium, against the baseline of the same run, measured
  right after each refresh in the same page: building, inserting and laying out as many
  plain ``<span>`` elements with text as the table has (the cost of showing that much on
  this machine, whatever the page);
- **transfer**: bytes of the ``fleet`` JSON per refresh (what one open page reads every
  2 s at the default rate), and of the page itself (once, and gzipped).

Writes ``benchmarks/results/dashboard.json``. See docs/observability.md#the-dashboard.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.integrations.dashboard import dashboard_page
from coherent_cache.testing import RedisServer
from tests.support.browser import DevToolsPipe, chromium, served

RESULTS = Path(__file__).resolve().parents[1] / "results" / "dashboard.json"
SKIP = 5
"""Refreshes left out of the figures (the page and its history warming up)."""


async def real_report(server: RedisServer) -> dict[str, Any]:
    """The report of one real instance that did some work (hits, misses, L2 reads)."""
    config = CacheConfig(redis_url=server.url, namespace="bench", fleet_report_interval=0.2)
    async with CacheManager(config) as cache:
        for i in range(200):
            await cache.set(f"k{i % 50}", {"i": i})
            await cache.get(f"k{i % 70}")
        with anyio.fail_after(10):
            while True:
                reports = await cache.fleet()
                if reports and reports[0]["l1"]["hit_rate"] > 0:
                    return dict(reports[0])
                await anyio.sleep(0.05)


class Fleet:
    """``size`` copies of a report; every read moves them on (a new sparkline point)."""

    def __init__(self, model: dict[str, Any], size: int) -> None:
        self.reports = []
        for i in range(size):
            report = copy.deepcopy(model)
            report["origin"] = f"{model['host']}-{10000 + i}-{i:06x}"
            report["pid"] = 10000 + i
            report["status"] = "healthy" if i % 10 else ("degraded" if i % 20 else "unhealthy")
            report["reasons"] = [] if i % 10 else ["invalidation bus disconnected"]
            self.reports.append(report)
        self.reads = 0
        self.bytes: list[int] = []

    def read(self) -> bytes:
        self.reads += 1
        for i, report in enumerate(self.reports):
            report["reported_at"] += 1.0
            report["l1"]["hit_rate"] = 0.5 + 0.4 * ((self.reads + i) % 7) / 7
            report["latency"]["l2"]["p99_ms"] = 1.0 + (self.reads * (i + 1)) % 5
        body = orjson.dumps(self.reports)
        self.bytes.append(len(body))
        return body


def make_app(fleet: Fleet) -> FastAPI:
    app = FastAPI()

    @app.get("/b/dashboard")
    async def page() -> HTMLResponse:
        got = dashboard_page()
        return HTMLResponse(got.html, headers=got.headers)

    @app.get("/b/fleet")
    async def listing() -> Response:
        return Response(fleet.read(), media_type="application/json")

    return app


BASELINE = """(() => {
  const n = document.querySelectorAll('#fleet-rows *').length;
  const t = performance.now();
  const box = document.createElement('div');
  for (let i = 0; i < n; i++) {
    const node = document.createElement('span');
    node.textContent = 'x' + i;
    box.appendChild(node);
  }
  document.body.appendChild(box);
  void document.body.offsetHeight;
  const ms = performance.now() - t;
  box.remove();
  return [n, ms];
})()"""
"""The same-run baseline: build, insert and lay out as many plain spans with text as the
table has elements (what any page showing that much costs on this machine)."""

READ = """(() => {
  const m = document.getElementById('dashboard');
  return [m.dataset.renders, m.dataset.renderMs, m.dataset.count];
})()"""


def measure(url: str, size: int, renders: int) -> tuple[list[float], list[float], int]:
    """Render milliseconds of refreshes ``SKIP + 1`` to ``SKIP + renders``, and after each
    one the baseline's milliseconds (interleaved), and the table's element count."""
    times: dict[int, float] = {}
    baseline: list[float] = []
    elements = 0
    with DevToolsPipe(timeout=120) as browser:
        session = browser.open(url)
        deadline = time.monotonic() + 60 + renders * (1 + size / 50)
        while len(times) < renders:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(times)} refreshes of {size} instances measured")
            count, ms, shown = (browser.evaluate(session, READ) or [None, None, None])[:3]
            if count is not None and int(count) > SKIP and int(count) not in times:
                assert int(shown) == size, (shown, size)
                times[int(count)] = float(ms)
                elements, base_ms = browser.evaluate(session, BASELINE)
                baseline.append(float(base_ms))
            time.sleep(0.05)
    return [times[k] for k in sorted(times)], baseline, int(elements)


async def main(args: argparse.Namespace) -> None:
    with RedisServer() as server:
        model = await real_report(server)
    page = dashboard_page().html.encode()
    rows: dict[str, Any] = {}
    print(
        f"{'instances':>10}{'elements':>10}{'render ms':>11}{'max':>9}"
        f"{'baseline ms':>13}{'× baseline':>12}{'fleet JSON B':>14}"
    )
    for size in args.sizes:
        fleet = Fleet(model, size)
        with served(make_app(fleet)) as web:
            url = f"{web.url}/b/dashboard?every=0.5"
            times, baseline, elements = await anyio.to_thread.run_sync(
                measure, url, size, args.renders
            )
        body = statistics.median(fleet.bytes)
        render, base = statistics.median(times), statistics.median(baseline)
        rows[str(size)] = {
            "elements": elements,
            "render_ms_median": round(render, 2),
            "render_ms_max": round(max(times), 2),
            "baseline_ms_median": round(base, 2),
            "render_over_baseline": round(render / base, 3),
            "renders": len(times),
            "fleet_json_bytes": body,
        }
        print(
            f"{size:>10}{elements:>10}{render:>11.1f}{max(times):>9.1f}"
            f"{base:>13.1f}{render / base:>12.2f}{body:>14.0f}"
        )
    result = {
        "rows": rows,
        "page_bytes": len(page),
        "page_gzip_bytes": len(gzip.compress(page)),
        "report_json_bytes": len(orjson.dumps(model)),
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "load_average": os.getloadavg()[0],
            "chromium": chromium_version(),
        },
        "refresh_s": 0.5,
        "skipped_refreshes": SKIP,
    }
    print(
        f"page: {result['page_bytes']} B ({result['page_gzip_bytes']} B gzip); "
        f"one report: {result['report_json_bytes']} B of JSON"
    )
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def chromium_version() -> str:
    exe = chromium()
    if exe is None:
        return "none"
    done = subprocess.run([exe, "--version"], capture_output=True, timeout=30, check=False)
    return done.stdout.decode().strip()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--renders", type=int, default=20)
    anyio.run(main, parser.parse_args())
