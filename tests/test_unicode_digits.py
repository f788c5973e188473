"""Text that ``str.isdigit()`` calls digits but ``int()`` refuses ("¹", "²"): refused or ignored where it
arrives, never an exception (schemathesis found ``?kind=¹`` answering 500)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from meshtrace.api.common import parse_kind
from meshtrace.errors import InvalidQuery
from meshtrace.ingest.body import read_limited
from meshtrace.listen import parse_address
from meshtrace.mesh.proxy.listeners import _host_port
from meshtrace.model.spans import SpanKind


@pytest.mark.parametrize("text", ["¹", "²", "SPAN_KIND_³", "١٢"])
def test_span_kinds_that_are_not_numbers_are_an_invalid_query(text: str) -> None:
    with pytest.raises(InvalidQuery, match="unknown span kind"):
        parse_kind(text)
    assert SpanKind.parse("2") is SpanKind.SERVER


def test_a_content_length_of_superscripts_is_ignored_not_a_crash() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"

    assert asyncio.run(read_limited(body(), 10, "¹")) == b"abc"


def test_a_host_header_port_of_superscripts_is_no_port() -> None:
    assert _host_port("productpage:¹".encode("latin-1")) == ("productpage:¹", 80)
    assert _host_port(b"productpage:9080") == ("productpage", 9080)


def test_a_listen_address_of_superscripts_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'127.0.0.1:¹' is not host:port"):
        parse_address("127.0.0.1:¹")
