from __future__ import annotations

import orjson
import pytest

from meshtrace.errors import MalformedRequest
from meshtrace.model.otlp_json import parse_otlp_json, response_json, to_otlp_json
from meshtrace.model.validate import validate

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"


def body(**span: object) -> bytes:
    base = {
        "traceId": TRACE,
        "spanId": SPAN,
        "name": "op",
        "kind": 2,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000000001000",
    }
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{**base, **span}]}]}]})


def test_hex_ids_enum_numbers_and_string_int64():
    request = parse_otlp_json(body(parentSpanId="0020000000000001", links=[{"traceId": TRACE, "spanId": SPAN}]))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == TRACE
    assert span.span_id.hex() == SPAN
    assert span.parent_span_id.hex() == "0020000000000001"
    assert span.links[0].trace_id.hex() == TRACE
    assert span.kind == 2
    assert span.start_time_unix_nano == 1_700_000_000_000_000_000


def test_enum_names_snake_case_fields_and_unknown_fields_are_accepted():
    request = parse_otlp_json(
        orjson.dumps(
            {
                "resource_spans": [
                    {
                        "scope_spans": [
                            {
                                "spans": [
                                    {
                                        "trace_id": TRACE,
                                        "span_id": SPAN,
                                        "kind": "SPAN_KIND_CLIENT",
                                        "futureField": 1,
                                        "start_time_unix_nano": 5,
                                        "end_time_unix_nano": 6,
                                    }
                                ]
                            }
                        ]
                    }
                ],
                "alsoUnknown": True,
            }
        )
    )
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.kind == 3
    assert span.trace_id.hex() == TRACE


def test_a_bad_hex_id_rejects_only_that_span():
    doc = orjson.loads(body())
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append({**spans[0], "traceId": "not-hex", "name": "bad"})
    result = validate(parse_otlp_json(orjson.dumps(doc)))
    assert (result.accepted, result.rejected) == (1, 1)
    assert "invalid_trace_id" in result.reasons


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be an object"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": {"x": 1}}]}]}]}', "not a valid OTLP/JSON"),
        (b'{"resourceSpans": "nope"}', "not a valid OTLP/JSON"),
    ],
)
def test_malformed_json(raw, message):
    with pytest.raises(MalformedRequest, match=message):
        parse_otlp_json(raw)


def test_round_trip_through_to_otlp_json():
    request = parse_otlp_json(body(parentSpanId="0020000000000001"))
    assert parse_otlp_json(orjson.dumps(to_otlp_json(request))) == request


def test_partial_success_response_json():
    assert response_json(0, "") == b"{}"
    assert orjson.loads(response_json(2, "why")) == {"partialSuccess": {"rejectedSpans": "2", "errorMessage": "why"}}
