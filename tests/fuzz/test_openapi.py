"""Property-based calls to every operation of the query API's OpenAPI document (schemathesis): generated
paths, query strings and bodies, with a tenant's token, never get a server error."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from meshtrace.testing.bookinfo import bookinfo_trace
from tests.e2e.conftest import TOKENS, ServerProcess, post_traces, stored, token_args, wait_until

EXAMPLES = 25  # per operation; `make fuzz` is where long runs go


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("openapi"), *token_args(), "--flush-interval", "50ms").start()
    rng = random.Random(7)
    post_traces(proc, [bookinfo_trace(rng, time.time_ns() - 60 * 10**9) for _ in range(20)])
    wait_until(lambda: stored(proc)[0] > 0)
    yield proc
    assert proc.stop() == 0, proc.log()


def test_no_operation_answers_with_a_server_error(api_server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{api_server.http}/openapi.json")
    headers = {"Authorization": f"Bearer {TOKENS['acme']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    failures: list[str] = []
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: schemathesis.Case) -> None:
            nonlocal calls
            response = case.call(base_url=api_server.http, headers=headers, timeout=30)
            calls += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query}: {response.status_code}")
                raise AssertionError(failures[-1])

        with contextlib.suppress(AssertionError):  # keep going: one report for every operation
            call()
    assert calls >= len(operations) * 5
    assert failures == []
