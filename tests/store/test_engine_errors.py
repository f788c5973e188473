"""Which engine failures the writer may split a batch on: only outright refusals. A failure that can leave
a write partly done, or that passes with time, is ``StoreUnavailable`` (repeated with its token); data
the input format cannot parse is ``StoreRejectedInput`` (nothing written, even after an unanswered try)."""

from __future__ import annotations

import pytest

from meshtrace.errors import StoreError, StoreRejectedInput, StoreUnavailable
from meshtrace.store.engine import _translated


@pytest.mark.parametrize(
    "message",
    [
        "Code: 243. DB::Exception: Cannot reserve 1.33 MiB, not enough space: while pushing to view "
        "otel.meshtrace_otlp_in_mv. (NOT_ENOUGH_SPACE)",
        "Code: 252. DB::Exception: Too many parts (3001). (TOO_MANY_PARTS)",
        "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)",
        "Code: 1001. std::exception: while pushing to view otel.meshtrace_span_index_mv",
        "Cannot write to file: No space left on device",
        "Code: 241. DB::Exception: Memory limit (total) exceeded: "
        "While executing ProtobufRowInputFormat. (MEMORY_LIMIT_EXCEEDED)",
    ],
)
def test_partial_or_passing_failures_are_unavailable(message: str) -> None:
    with pytest.raises(StoreUnavailable), _translated("insert failed"):
        raise RuntimeError(message)


@pytest.mark.parametrize(
    "message",
    [
        "Code: 27. DB::Exception: Cannot parse input: expected '\\t'. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
        "Code: 444. DB::Exception: Protobuf messages are corrupted or don't match the provided schema.",
        "Code: 60. DB::Exception: Unknown table expression identifier 'nope'. (UNKNOWN_TABLE)",
    ],
)
def test_refusals_are_plain_store_errors(message: str) -> None:
    with pytest.raises(StoreError) as caught, _translated("insert failed"):
        raise RuntimeError(message)
    assert not isinstance(caught.value, StoreUnavailable)
    assert str(caught.value) == f"insert failed: {message}"


@pytest.mark.parametrize(
    "message",
    [
        "Code: 444. DB::Exception: Protobuf messages are corrupted or don't match the provided schema. Please "
        "note that Protobuf stream is length-delimited: every message is prefixed by its length in varint: "
        "While executing ProtobufRowInputFormat. (UNKNOWN_PROTOBUF_FORMAT) (version 26.9.2.1)",
        "Code: 33. DB::Exception: Cannot read all data. Bytes read: 3. Bytes expected: 9.: "
        "While executing ProtobufRowInputFormat. (CANNOT_READ_ALL_DATA)",
    ],
)
def test_data_the_input_format_cannot_parse_is_rejected_input(message: str) -> None:
    with pytest.raises(StoreRejectedInput), _translated("insert failed"):
        raise RuntimeError(message)
