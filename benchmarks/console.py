"""Console benchmark: how long a large trace takes to open in the browser (Debian's chromium, headless).

Sends one trace of each size through OTLP/HTTP to a fresh `meshtrace serve --no-auth`, then opens its trace
view ``--repeat`` times: "interactive" is from navigation to the waterfall painted and answering (the page
marks itself ready after its first paint), "render" the page's own work after the data arrived. Prints JSON.

    .venv/bin/python benchmarks/console.py [--sizes 10000 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from common import machine
from meshtrace.testing.console import large_trace, launch, post
from meshtrace.testing.server import ServerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="meshtrace-console-")), "--no-auth").start()
    results = {}
    try:
        ids = {}
        for size in args.sizes:
            trace_id, request = large_trace(size, seed=size)
            post(server, request, None)
            ids[size] = trace_id
        for size, trace_id in ids.items():
            deadline = time.monotonic() + 120
            while httpx.get(f"{server.http}/meshtrace/v1/traces/{trace_id}", timeout=60).status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"trace of {size} spans not stored")
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            for size, trace_id in ids.items():
                interactive, render, api = [], [], []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    httpx.get(f"{server.http}/meshtrace/v1/traces/{trace_id}", timeout=60)
                    api.append((time.perf_counter() - started) * 1000)
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    started = time.perf_counter()
                    page.goto(f"{server.http}/console/trace/{trace_id}")
                    page.wait_for_selector("section.page[data-ready=true]", timeout=120_000)
                    interactive.append((time.perf_counter() - started) * 1000)
                    render.append(float(page.get_attribute("section.page", "data-render-ms") or 0))
                    assert page.locator(".span-row").count() < 200
                    page.close()
                results[f"{size} spans"] = {
                    "interactive_median_ms": round(statistics.median(interactive)),
                    "interactive_max_ms": round(max(interactive)),
                    "render_median_ms": round(statistics.median(render)),
                    "trace_api_median_ms": round(statistics.median(api)),
                }
            browser.close()
    finally:
        server.stop()
    print(
        json.dumps({"benchmark": "console", "machine": machine(), "repeat": args.repeat, "traces": results}, indent=2)
    )


if __name__ == "__main__":
    main()
