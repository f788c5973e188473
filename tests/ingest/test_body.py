from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from meshtrace.errors import MalformedRequest, PayloadTooLarge, UnsupportedMedia
from meshtrace.ingest.body import decode_content, read_limited

LIMIT = 1 << 20


def test_identity_and_gzip_and_deflate():
    data = b"spans" * 1000
    assert decode_content(data, None, LIMIT) == data
    assert decode_content(gzip.compress(data), "gzip", LIMIT) == data
    assert decode_content(zlib.compress(data), "deflate", LIMIT) == data
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode_content(raw_deflate.compress(data) + raw_deflate.flush(), "deflate", LIMIT) == data


def test_concatenated_gzip_members():
    assert decode_content(gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10), "gzip", LIMIT) == b"a" * 10 + b"b" * 10


def test_gzip_bomb_stops_at_the_limit_without_inflating_it_all():
    bomb = gzip.compress(b"\0" * (1 << 30))  # 1 GiB of zeros in about 1 MB
    assert len(bomb) < 2 << 20
    with pytest.raises(PayloadTooLarge, match="inflates to more than"):
        decode_content(bomb, "gzip", LIMIT)


def test_truncated_and_corrupt_gzip():
    packed = gzip.compress(b"x" * 10_000)
    with pytest.raises(MalformedRequest, match="truncated"):
        decode_content(packed[: len(packed) // 2], "gzip", LIMIT)
    with pytest.raises(MalformedRequest, match="does not decompress"):
        decode_content(b"\x1f\x8b\x08\x00garbage-garbage", "gzip", LIMIT)


def test_unknown_encoding():
    with pytest.raises(UnsupportedMedia):
        decode_content(b"x", "br", LIMIT)


async def chunks(*parts: bytes):
    for part in parts:
        yield part


def test_read_limited_refuses_early():
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_limited(chunks(b"x"), 10, content_length="11"))
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_limited(chunks(b"x" * 6, b"y" * 6), 10, content_length=None))
    assert asyncio.run(read_limited(chunks(b"x" * 6, b"y" * 4), 10, content_length=None)) == b"x" * 6 + b"y" * 4
