"""The console in a real browser (Debian's chromium) against a real backend filled over OTLP."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from meshtrace.testing.bookinfo import export_request
from meshtrace.testing.console import Demo, big_mesh, fill, launch, post
from meshtrace.testing.contract import Fixture, reference_edges, reference_pairs
from meshtrace.testing.server import ServerProcess
from tests.e2e.conftest import TOKENS, token_args, wait_until

LARGE = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("console"), *token_args(), "--graph-wait", "1s", "--admin-tenant", "acme"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def demo(server: ServerProcess) -> Demo:
    data = fill(server, TOKENS["acme"], count=120, large=LARGE, wait=lambda check: wait_until(check, timeout=90))
    fill(server, TOKENS["beta"], seed=9, count=10, wait=lambda check: wait_until(check, timeout=90))
    return data


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any, server: ServerProcess, demo: Demo) -> Iterator[Callable[..., Page]]:
    contexts = []

    def open_(path: str, token: str | None = TOKENS["acme"]) -> Page:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.errors = errors  # type: ignore[attr-defined]
        page.goto(server.http + path)
        if token is not None:
            page.fill("#signin-token", token)
            page.click("#signin-form button[type=submit]")
            expect(page.locator("#signin")).not_to_be_visible()
        return page

    yield open_
    for context in contexts:
        context.close()


def _ready(page: Page) -> None:
    expect(page.locator("section.page[data-ready=true]")).to_have_count(1, timeout=30_000)


def test_search_finds_the_traces(open_page: Callable[..., Page], demo: Demo) -> None:
    page = open_page("/console/traces?service=ratings.default&status=error&lookback=1h")
    expect(page.locator("[data-count]")).to_be_visible(timeout=30_000)
    failing = {
        t.hex_id
        for t in demo.traces
        if any(p.service == "ratings.default" and p.span.status.code == 2 for p in t.spans)
    }
    rows = page.locator("table.results tbody tr")
    assert {rows.nth(i).get_attribute("data-trace-id") for i in range(rows.count())} == failing
    assert page.locator("circle.dot.error").count() == len(failing)
    # The same question in TraceQL, typed into the box; the URL keeps it for sharing.
    page.fill("textarea[name=q]", '{ resource.service.name = "ratings.default" && status = error }')
    page.click("form.search button[type=submit]")
    expect(page.locator(f"tr[data-trace-id='{demo.failing.hex_id}']")).to_be_visible()  # type: ignore[union-attr]
    assert "q=%7B+resource.service.name" in page.url
    page.locator(f"tr[data-trace-id='{demo.failing.hex_id}'] a").click()  # type: ignore[union-attr]
    _ready(page)
    assert page.url.endswith(f"/console/trace/{demo.failing.hex_id}")  # type: ignore[union-attr]


def test_trace_view_shows_spans_critical_path_and_root_cause(open_page: Callable[..., Page], demo: Demo) -> None:
    trace = demo.failing
    assert trace is not None
    page = open_page(f"/console/trace/{trace.hex_id}")
    _ready(page)
    rows = page.locator(".span-row")
    assert rows.count() == len(trace.spans) == 9
    assert {rows.nth(i).get_attribute("data-span-id") for i in range(9)} == {p.span.span_id.hex() for p in trace.spans}
    on_path = page.locator(".span-row.on-path")
    assert on_path.count() >= 5  # the calls run one after another here: most of the trace is on the path
    expect(page.locator(".span-row").first).to_have_class(re.compile(r"\bon-path\b"))
    assert page.locator(".span-row .crit").count() >= on_path.count()
    ratings = next(p.span for p in trace.spans if p.service == "ratings.default" and p.span.kind == 2)
    # The root cause is selected on arrival and its details shown.
    expect(page.locator(".details")).to_have_attribute("data-span-id", ratings.span_id.hex())
    expect(page.locator(".span-row.selected")).to_have_attribute("data-span-id", ratings.span_id.hex())
    # Keyboard: up moves the selection; the root's toggle collapses everything under it.
    page.locator(".waterfall").focus()
    page.keyboard.press("ArrowUp")
    expect(page.locator(".span-row.selected")).not_to_have_attribute("data-span-id", ratings.span_id.hex())
    page.locator(".span-row").first.locator("button.toggle").click()
    expect(page.locator(".span-row")).to_have_count(1)
    # Find within the trace.
    page.locator(".span-row").first.locator("button.toggle").click()
    page.fill("input[type=search]", "ratings")
    assert page.locator(".span-row.match").count() == 2
    assert page.errors == []  # type: ignore[attr-defined]


def _expected_pairs(demo: Demo) -> dict[tuple[str, str], int]:
    fixtures = [Fixture(t.hex_id, export_request([t]), t.hex_id) for t in demo.traces]
    return {pair: calls for pair, (calls, _) in reference_pairs(reference_edges(fixtures)).items()}


def test_service_map_matches_the_data(open_page: Callable[..., Page], demo: Demo) -> None:
    page = open_page("/console/map?lookback=1h")
    _ready(page)
    expected = _expected_pairs(demo)
    edges = page.locator("g.edge")
    got = {
        (edges.nth(i).get_attribute("data-source"), edges.nth(i).get_attribute("data-target")): int(
            edges.nth(i).get_attribute("data-calls") or 0
        )
        for i in range(edges.count())
    }
    assert got == expected
    assert (
        page.locator("g.node[data-type=gateway]").get_attribute("data-node-id") == "istio-ingressgateway.istio-system"
    )
    assert page.locator("g.node[data-node-id='details.default (unreached)']").get_attribute("data-type") == "unreached"
    reviews = page.locator("g.node[data-node-id='reviews.default']")
    versions = {
        reviews.locator("g.version").nth(i).get_attribute("data-version"): int(
            reviews.locator("g.version").nth(i).get_attribute("data-calls") or 0
        )
        for i in range(3)
    }
    served = {
        v: sum(
            1
            for t in demo.traces
            for p in t.spans
            if p.service == "reviews.default" and p.span.kind == 2 and p.version == v
        )
        for v in ("v1", "v2", "v3")
    }
    assert versions == served
    # A node opens its RED charts and example traces.
    reviews.click()
    expect(page.locator(".map-side .chart canvas").first).to_be_visible(timeout=15_000)
    expect(page.locator(".map-side .examples li").first).to_be_visible()
    page.locator("g.edge[data-source='reviews.default'][data-target='ratings.default']").click()
    expect(page.locator(".map-side h2")).to_have_text("reviews.default → ratings.default")
    expect(page.locator(".map-side .charts[data-edge='reviews.default→ratings.default'] canvas")).to_have_count(3)


def test_health_charts_render(open_page: Callable[..., Page], demo: Demo) -> None:
    page = open_page("/console/health?service=reviews.default&lookback=1h")
    _ready(page)
    expect(page.locator(".chart canvas")).to_have_count(3)
    ops = page.locator("table.impact tr[data-operation]")
    assert ops.count() >= 2
    ops.first.locator("button").click()
    expect(page.locator(".outliers")).to_be_visible()


def test_compare_shows_the_deltas(open_page: Callable[..., Page], demo: Demo) -> None:
    fast, slow = demo.fast, demo.slow
    assert fast is not None
    assert slow is not None
    page = open_page(f"/console/compare?a={fast.hex_id}&b={slow.hex_id}")
    _ready(page)

    def duration(t):
        return max(p.span.end_time_unix_nano for p in t.spans) - min(p.span.start_time_unix_nano for p in t.spans)

    shown = float(page.locator("[data-difference-ms]").get_attribute("data-difference-ms") or 0)
    assert shown == pytest.approx((duration(slow) - duration(fast)) / 1e6, abs=0.01)
    assert page.locator("tr[data-status=extra]").count() == 2  # v3 calls ratings, v1 does not
    contributions = [
        float(x)
        for x in page.locator("tr[data-contribution]").evaluate_all("rows => rows.map(r => r.dataset.contribution)")
    ]
    assert sum(contributions) == pytest.approx(shown, abs=0.05)


def test_a_large_trace_renders_only_the_rows_in_view(open_page: Callable[..., Page], demo: Demo) -> None:
    page = open_page(f"/console/trace/{demo.large_id}")
    _ready(page)
    expect(page.locator("[data-span-count]")).to_have_attribute("data-span-count", str(LARGE))
    assert 10 < page.locator(".span-row").count() < 200
    page.locator(".waterfall").evaluate("w => { w.scrollTop = w.scrollHeight; w.dispatchEvent(new Event('scroll')); }")
    expect(page.locator(".span-row").last).to_be_visible()
    print(f"render of a {LARGE}-span trace: {page.locator('[data-render-ms]').get_attribute('data-render-ms')} ms")


def test_tenants_see_only_their_own(open_page: Callable[..., Page], server: ServerProcess, demo: Demo) -> None:
    page = open_page(f"/console/trace/{demo.failing.hex_id}", TOKENS["beta"])  # type: ignore[union-attr]
    expect(page.locator("main p.error")).to_contain_text("not found")
    page.goto(server.http + "/console/map?lookback=1h")
    _ready(page)
    calls = sum(
        int(x)
        for x in page.locator("g.edge[data-source=user]").evaluate_all("edges => edges.map(e => e.dataset.calls)")
    )
    assert calls == 10 + 4  # beta's traffic only
    wrong = open_page("/console/traces", None)
    wrong.fill("#signin-token", "not-a-token")
    wrong.click("#signin-form button[type=submit]")
    expect(wrong.locator("#signin-error")).to_have_text("That token is not accepted.")


def test_status_lists_rejected_spans(open_page: Callable[..., Page], server: ServerProcess, demo: Demo) -> None:
    bad = export_request([demo.traces[0]])
    bad.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x00" * 16  # an invalid trace id
    post(server, bad, TOKENS["acme"])
    page = open_page("/console/status")
    _ready(page)
    expect(page.locator("p.ok[data-ready=true]")).to_have_text("Ready")
    expect(page.locator("table.rejections tr").nth(1)).to_contain_text("otlp_http")
    assert int(page.locator("tr[data-key=rejected] td").first.inner_text()) >= 1
    # acme is the admin tenant: it sees every tenant's counts; beta does not.
    expect(page.locator("table.tenants tr[data-tenant=beta]")).to_be_visible()
    beta = open_page("/console/status", TOKENS["beta"])
    _ready(beta)
    expect(beta.locator("table.tenants")).to_have_count(0)


def test_console_without_auth_and_a_map_of_50_services(tmp_path: Path, browser: Any) -> None:
    proc = ServerProcess(tmp_path, "--no-auth", "--graph-wait", "1s").start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(proc.http + "/")
        expect(page.locator("[data-count]")).to_have_text("0 traces", timeout=30_000)
        assert "/console/traces" in page.url
        assert not page.locator("#signin").is_visible()
        traces = big_mesh(60, 300)
        for i in range(0, len(traces), 100):
            post(proc, export_request(traces[i : i + 100]), None)

        def counted() -> bool:
            graph = httpx.get(f"{proc.http}/meshtrace/v1/servicegraph", timeout=30).json()
            return sum(e["calls"] for e in graph["edges"] if e["source"] == "user") == len(traces)

        wait_until(counted, timeout=90)
        page.goto(proc.http + "/console/map")
        expect(page.locator("section.page[data-ready=true]")).to_have_count(1, timeout=30_000)
        nodes = page.locator("g.node")
        assert nodes.count() >= 50
        # Drawn at 60% or more of its size: names stay legible (the card scrolls instead).
        scale = page.locator("svg.map").evaluate("m => m.getBoundingClientRect().width / m.viewBox.baseVal.width")
        assert scale >= 0.6
        page.close()
    finally:
        proc.stop()
