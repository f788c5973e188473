"""Faults a backend meets in production, and what its users see: a full disk, hosts whose clocks
disagree. Each counts that no acknowledged span is lost."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc import status_pb2

from meshtrace.testing.bookinfo import bookinfo_trace

from .conftest import TOKENS, post_traces, stored, token_args, wait_until
from .test_durability import requests

HEADERS = {"Content-Type": "application/x-protobuf", "Authentication": TOKENS["acme"]}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB filesystem of its own (tmpfs), so filling it fills nothing else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def test_a_full_disk_refuses_retryably_and_loses_nothing_acknowledged(tmp_path, servers, small_disk):
    server = servers(tmp_path / "proc", *token_args(), "--flush-interval", "50ms", "--data", str(small_disk / "data"))
    filler = _fill(small_disk, leave=3 << 20)
    acked, refused = 0, []
    with httpx.Client(timeout=30) as client:
        for body, spans, _ in requests(300, 8, seed=11):
            response = client.post(f"{server.otlp_http}/v1/traces", content=body, headers=HEADERS)
            if response.status_code == 200:
                acked += spans
            else:
                refused.append(response)
        assert acked > 0, "some requests fit before the disk filled"
        assert refused, "a full disk must refuse"
        # Retryable, saying why: the Collector keeps the data and tries again.
        assert {r.status_code for r in refused} == {503}
        assert all(1 <= int(r.headers["Retry-After"]) <= 30 for r in refused)
        assert "No space left on device" in status_pb2.Status.FromString(refused[-1].content).message
        problems = wait_until(lambda: server.api(None).get("/readyz").json()["problems"] or None)
        assert "not enough space" in problems[0]

        print(f"acknowledged {acked} spans, refused {len(refused)} requests while full")  # pytest -s
        filler.unlink()  # the operator frees space: what was acknowledged reaches the store by itself
        wait_until(lambda: stored(server)[0] == acked, timeout=60)
        # Ready again once nothing was refused for 5 s (the store may have caught up sooner).
        wait_until(lambda: server.api(None).get("/readyz").status_code == 200)
        for body, _, _ in requests(10, 8, seed=12):
            assert client.post(f"{server.otlp_http}/v1/traces", content=body, headers=HEADERS).status_code == 200
    assert "more like it" in server.log() or server.log().count("export failed") <= 3  # no line per request
    assert server.stop() == 0
    restarted = servers(tmp_path / "proc", *token_args(), "--data", str(small_disk / "data"))
    spans, _, distinct = stored(restarted)
    assert spans == distinct == acked + sum(s for _, s, _ in requests(10, 8, seed=12))


def test_clock_skew_between_hosts_is_shown_adjusted_and_loses_nothing(tmp_path, servers):
    """reviews' host runs 5 s fast, details' 3 s slow: every span is stored as sent, the trace view moves
    each skewed call into its caller (saying so), and the service graph still pairs every call."""
    server = servers(tmp_path / "skew", *token_args(), "--flush-interval", "50ms", "--graph-wait", "1s")
    rng = random.Random(21)
    traces = [bookinfo_trace(rng, time.time_ns() - 5 * 10**9, reviews_version="v2") for _ in range(20)]
    skew = {"reviews.default": 5 * 10**9, "details.default": -3 * 10**9}
    for trace in traces:
        for item in trace.spans:
            item.span.start_time_unix_nano += skew.get(item.service, 0)
            item.span.end_time_unix_nano += skew.get(item.service, 0)
    post_traces(server, traces)
    sent = sum(len(t.spans) for t in traces)
    wait_until(lambda: stored(server)[0] == sent)

    api = server.api()
    raw = api.get(f"/api/traces/{traces[0].hex_id}", params={"raw": "true"}).json()["data"][0]
    shown = api.get(f"/api/traces/{traces[0].hex_id}").json()["data"][0]
    assert len(shown["spans"]) == len(raw["spans"]) == len(traces[0].spans)
    by_id = {s["spanID"]: s for s in shown["spans"]}
    raw_start = {s["spanID"]: s["startTime"] for s in raw["spans"]}
    processes = shown["processes"]
    moved = 0
    for span in shown["spans"]:
        parent = by_id.get(next((r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"), ""))
        service = processes[span["processID"]]["serviceName"]
        if parent is None:
            continue
        assert parent["startTime"] <= span["startTime"]  # every span starts inside its parent now
        assert span["startTime"] + span["duration"] <= parent["startTime"] + parent["duration"]
        if span["warnings"]:
            moved += 1
            assert service in skew
            assert span["startTime"] != raw_start[span["spanID"]]
    assert moved >= 3  # reviews' server span and its client span to ratings, details' server span
    assert "clock skew" in shown["warnings"][0]
    assert raw["warnings"] is None

    # Pairing follows arrival, not the spans' clocks: no call is mistaken for two lone halves.
    def edges() -> dict[tuple[str, str], int] | None:
        graph = api.get("/meshtrace/v1/servicegraph", params={"lookback": "1h"}).json()
        got = {(e["source"], e["target"]): e["calls"] for e in graph["edges"]}
        return got if got.get(("productpage.default", "reviews.default")) == 20 else None

    got = wait_until(edges, timeout=30)
    assert got[("productpage.default", "details.default")] == 20
    assert got[("reviews.default", "ratings.default")] == 20
    assert not any("unknown" in key for key in got)
