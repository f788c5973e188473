"""Mutation fuzzing of what parses untrusted input: OTLP protobuf and JSON, Zipkin JSON, TraceQL.

Each target takes bytes and either returns or raises the one error type its callers translate into a
clear answer (``MalformedRequest`` → 400, ``TraceQLError`` → 400). Anything else raised, or a case slower
than ``SLOW_S``, is a finding. Inputs are the seed corpus mutated (bit flips, byte changes, splices,
truncations, repeats of a slice, interesting values), seeded, so a run is reproducible.

    .venv/bin/python scripts/fuzz.py --cases 1000000
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from meshtrace.errors import MalformedRequest
from meshtrace.model.otlp_json import parse_otlp_json
from meshtrace.model.validate import validate_bytes
from meshtrace.model.zipkin import parse_zipkin_json
from meshtrace.query.traceql import TraceQLError, parse

SLOW_S = 1.0
_INTERESTING = [
    b"0",
    b"-1",
    b"1e309",
    b"null",
    b"true",
    b'""',
    b"[]",
    b"{}",
    b"\xff\xff\xff\xff\x0f",
    b"\x00",
    b'"\\ud800"',
    b"9" * 40,
    b"{" * 64,
    b"[" * 64,
]


def _otlp_json(data: bytes) -> None:
    with contextlib.suppress(MalformedRequest):
        parse_otlp_json(data)


def _otlp_protobuf(data: bytes) -> None:
    with contextlib.suppress(MalformedRequest):
        validate_bytes(data)


def _zipkin(data: bytes) -> None:
    with contextlib.suppress(MalformedRequest):
        parse_zipkin_json(data)


def _traceql(data: bytes) -> None:
    with contextlib.suppress(TraceQLError):
        parse(data.decode("utf-8", "replace"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "otlp_json": _otlp_json,
    "otlp_protobuf": _otlp_protobuf,
    "zipkin_json": _zipkin,
    "traceql": _traceql,
}


def seed_corpus(target: str) -> list[bytes]:
    """Valid inputs to start from: the store contract's fixtures, Zipkin spans, the TraceQL corpus."""
    from meshtrace.model.otlp_json import to_otlp_json
    from meshtrace.testing.bookinfo import bookinfo_trace, export_request

    rng = random.Random(1)
    requests = [export_request([bookinfo_trace(rng, 1_700_000_000_000_000_000 + i * 10**9)]) for i in range(4)]
    if target == "otlp_protobuf":
        return [r.SerializeToString() for r in requests]
    if target == "otlp_json":
        return [json.dumps(to_otlp_json(r)).encode() for r in requests]
    if target == "zipkin_json":
        span = {
            "traceId": "c1" * 16,
            "id": "1" * 16,
            "parentId": "2" * 16,
            "name": "get /",
            "kind": "SERVER",
            "timestamp": 1_700_000_000_000_000,
            "duration": 1000,
            "localEndpoint": {"serviceName": "a", "ipv4": "10.0.0.1", "port": 80},
            "remoteEndpoint": {"serviceName": "b"},
            "tags": {"http.status_code": "200"},
            "annotations": [{"timestamp": 1_700_000_000_000_100, "value": "wr"}],
            "shared": False,
        }
        return [json.dumps([span]).encode(), json.dumps([span, {**span, "id": "3" * 16}]).encode()]
    corpus = resources.files("meshtrace.testing").joinpath("traceql_seeds.txt").read_text().splitlines()
    return [line.encode() for line in corpus if line.strip()]


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:
            del buf[pos : pos + rng.randrange(1, 16)]
        elif op == 3:
            other = rng.choice(corpus)
            start = rng.randrange(len(other) + 1)
            buf[pos:pos] = other[start : start + rng.randrange(1, 64)]
        elif op == 4:
            buf = buf[:pos]
        elif op == 5 and buf:
            start = rng.randrange(len(buf))
            piece = buf[start : start + rng.randrange(1, 32)]
            buf[pos:pos] = piece * rng.randrange(2, 8)
        else:
            buf[pos:pos] = rng.choice(_INTERESTING)
    return bytes(buf[: 1 << 20])


@dataclass
class Result:
    target: str
    cases: int = 0
    seconds: float = 0.0
    slowest_ms: float = 0.0
    findings: list[str] = field(default_factory=list)


def run(
    target: str, cases: int, seed: int = 0, crashers: Path | None = None, progress: Callable[[int], None] | None = None
) -> Result:
    check = TARGETS[target]
    corpus = seed_corpus(target)
    rng = random.Random(seed)
    result = Result(target)
    started = time.perf_counter()
    for case in range(cases):
        data = mutate(rng, rng.choice(corpus), corpus)
        t0 = time.perf_counter()
        try:
            check(data)
        except Exception as exc:  # every other exception is what fuzzing looks for
            result.findings.append(f"{type(exc).__name__}: {exc}"[:300])
            _keep(crashers, target, data)
        elapsed = time.perf_counter() - t0
        result.slowest_ms = max(result.slowest_ms, elapsed * 1000)
        if elapsed > SLOW_S:
            result.findings.append(f"slow: {elapsed:.2f} s")
            _keep(crashers, target, data)
        if progress is not None and case % 10_000 == 0:
            progress(case)
    result.cases = cases
    result.seconds = time.perf_counter() - started
    return result


def _keep(directory: Path | None, target: str, data: bytes) -> None:
    if directory is None:
        return
    folder = directory / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)


def kept(directory: Path) -> Iterator[tuple[str, Path]]:
    """Every kept crasher, for the regression test."""
    for target in TARGETS:
        folder = directory / target
        # *.bin from the mutation fuzzer; crash-*, timeout-*, slow-unit-* from atheris (libFuzzer's names)
        for path in sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []:
            yield target, path
