"""Every GET route of the query API, walked with tenant beta's token, never shows tenant acme's data."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from meshtrace.testing.bookinfo import export_request, traffic
from meshtrace.testing.console import large_trace, post

from .conftest import TOKENS, ServerProcess, token_args, wait_until

ACME_SERVICE = "loadgen.default"  # only acme sends spans of this service
FAKE = "nobody.default"  # no tenant has it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("isolation"), *token_args(), "--graph-wait", "1s").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def acme_trace(server: ServerProcess) -> str:
    trace_id, request = large_trace(50, seed=5)
    post(server, request, TOKENS["acme"])
    post(server, export_request(list(traffic(3, time.time_ns() - 60 * 10**9, 20))), TOKENS["beta"])
    wait_until(lambda: server.api(TOKENS["acme"]).get(f"/meshtrace/v1/traces/{trace_id}").status_code == 200)
    wait_until(lambda: server.api(TOKENS["beta"]).get("/meshtrace/v1/stats").json()["spans"] > 0)
    time.sleep(2)  # the analytics tables settle
    return trace_id


def _routes(server: ServerProcess) -> list[str]:
    spec = server.api(TOKENS["acme"]).get("/openapi.json").json()
    return sorted(path for path, ops in spec["paths"].items() if "get" in ops)


def _fill(path: str, trace_id: str) -> str:
    values = {"trace_id": trace_id, "service": ACME_SERVICE, "metric": "calls", "tag": "service.name", "page": "traces"}
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: values[m.group(1)], path)


PARAMS = {
    "service": ACME_SERVICE,
    "operation": "step-1",
    "client": "user",
    "server": ACME_SERVICE,
    "quantile": "0.95",
    "lookback": "1h",
    "limit": "50",
    "q": "{ }",
}


def test_no_route_shows_one_tenants_data_to_another(server: ServerProcess, acme_trace: str) -> None:
    routes = _routes(server)
    assert len(routes) >= 30
    leaks, shown_to_owner = [], 0
    for route in routes:
        path = _fill(route, acme_trace)
        params = {**PARAMS, "a": acme_trace, "b": acme_trace}
        owner = server.api(TOKENS["acme"]).get(path, params=params)
        if ACME_SERVICE in owner.text or acme_trace in owner.text:
            shown_to_owner += 1
        other = server.api(TOKENS["beta"]).get(path, params=params)
        # A 404 repeats the id the caller asked for, and some answers repeat the names asked about: what the
        # answer would be for a name nobody has is the echo; anything more would be acme's data.
        if ACME_SERVICE in other.text or (acme_trace in other.text and other.status_code < 400):
            fake = {k: (FAKE if v == ACME_SERVICE else v) for k, v in params.items()}
            echo = server.api(TOKENS["beta"]).get(path.replace(ACME_SERVICE, FAKE), params=fake)
            if other.text.replace(ACME_SERVICE, FAKE) != echo.text:
                leaks.append(f"{route} ({other.status_code}): {other.text[:200]}")
        anonymous = server.api(None).get(path, params=params)
        if route not in (
            "/healthz",
            "/readyz",
            "/metrics",
            "/tempo/api/echo",
            "/tempo/ready",
            "/tempo/api/status/buildinfo",
            "/openapi.json",
            "/docs",
            "/docs/oauth2-redirect",
            "/redoc",
            "/",
            "/console",
            "/console/{page}",
        ):
            assert anonymous.status_code == 401, route
    assert leaks == []
    assert shown_to_owner >= 15  # the walk reaches acme's data with acme's token: it can find a leak
