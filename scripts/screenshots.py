"""Screenshots of every console page for the README, taken the way the browser tests drive the console.

Starts `meshtrace serve --no-auth` on loopback with Bookinfo traffic (a failing call, an unreachable
details, a slow v3), opens each page in Debian's chromium and writes PNGs into ``docs/screenshots/``.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--theme light|dark]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from meshtrace.testing.console import fill, launch
from meshtrace.testing.server import ServerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/screenshots")
    parser.add_argument("--theme", choices=["light", "dark"], default="light")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="meshtrace-shots-")), "--no-auth", "--graph-wait", "1s").start()
    try:
        demo = fill(server, None, count=300)
        assert demo.failing
        assert demo.fast
        assert demo.slow
        pages = {
            "traces": "/console/traces?service=reviews.default&lookback=1h",
            "trace": f"/console/trace/{demo.failing.hex_id}",
            "map": "/console/map?lookback=1h",
            "health": "/console/health?service=productpage.default&lookback=1h",
            "compare": f"/console/compare?a={demo.fast.hex_id}&b={demo.slow.hex_id}",
            "status": "/console/status",
        }
        with sync_playwright() as playwright:
            browser = launch(playwright)
            context = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme=args.theme)
            page = context.new_page()
            page.add_init_script(f"localStorage.setItem('meshtrace.theme', '{args.theme}')")
            for name, path in pages.items():
                page.goto(server.http + path)
                page.wait_for_selector("section.page[data-ready=true]", timeout=60_000)
                if name == "map":
                    page.click("g.node[data-node-id='reviews.default']")
                    page.wait_for_selector(".map-side .chart canvas", timeout=30_000)
                page.wait_for_timeout(400)  # charts draw on the next frame
                target = out / f"{name}.png"
                page.screenshot(path=str(target))
                print(target)
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
