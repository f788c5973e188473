"""Regenerate the store contract fixtures (one Bookinfo trace per file, OTLP/JSON).

The files are committed; rerun only to change them on purpose: ``python scripts/make-store-fixtures.py``.
Times are relative to FIXTURE_EPOCH_NS; the contract suite moves them to "now" when loading.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from meshtrace.model.otlp_json import to_otlp_json
from meshtrace.testing.bookinfo import MS, TraceBuilder, bookinfo_trace, export_request
from meshtrace.testing.contract import FIXTURE_EPOCH_NS

OUT = Path(__file__).resolve().parents[1] / "src/meshtrace/testing/fixtures/traces"

SCENARIOS = {
    # name: (seed, start offset ms, bookinfo_trace keyword arguments)
    "bookinfo_v1": (1, 0, {"reviews_version": "v1"}),
    "bookinfo_v2": (2, 1_000, {"reviews_version": "v2"}),
    "bookinfo_v3_slow": (3, 2_000, {"reviews_version": "v3", "scale": 12.0}),
    "bookinfo_ratings_503": (4, 3_000, {"reviews_version": "v3", "ratings_status": 503}),
    "bookinfo_details_uf": (5, 4_000, {"reviews_version": "v2", "details_failure": True}),
    "bookinfo_gateway_pre_1_28": (6, 5_000, {"reviews_version": "v2", "gateway_spans": 1}),
}


def unpropagated() -> dict[str, object]:
    """reviews does not forward trace headers: its inbound and outbound hops become separate traces."""
    start = FIXTURE_EPOCH_NS + 6_000 * MS
    inbound = TraceBuilder(random.Random(7), start)
    inbound.hop("productpage.default", "v1", None, "reviews", "v2", "/reviews/0", start, 40 * MS)
    outbound = TraceBuilder(random.Random(8), start + 5 * MS)
    outbound.hop("reviews.default", "v2", None, "ratings", "v1", "/ratings/0", start + 5 * MS, 12 * MS)
    return {"unpropagated_reviews_in": inbound.trace, "unpropagated_reviews_out": outbound.trace}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (seed, offset_ms, kwargs) in SCENARIOS.items():
        trace = bookinfo_trace(random.Random(seed), FIXTURE_EPOCH_NS + offset_ms * MS, **kwargs)
        doc = to_otlp_json(export_request([trace]))
        (OUT / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"{name}: trace {trace.hex_id}, {len(trace.spans)} spans")
    for name, trace in unpropagated().items():
        doc = to_otlp_json(export_request([trace]))  # type: ignore[list-item]
        (OUT / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"{name}: trace {trace.hex_id}, {len(trace.spans)} spans")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
