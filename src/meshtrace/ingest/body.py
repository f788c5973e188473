"""Request bodies under a size limit, before and after decompression (no gzip bombs)."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from meshtrace.errors import MalformedRequest, PayloadTooLarge, UnsupportedMedia

_CHUNK = 64 << 10


async def read_limited(chunks: AsyncIterator[bytes], limit: int, content_length: str | None) -> bytes:
    """Read a streamed body, refusing it as soon as it exceeds ``limit`` bytes."""
    declared = content_length if content_length and content_length.isascii() and content_length.isdigit() else None
    if declared is not None and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate, identity) without ever producing more than ``limit`` bytes."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        return body
    if name in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, limit, "gzip")
    if name == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS, limit, "deflate")
        except MalformedRequest:
            return _inflate(body, -zlib.MAX_WBITS, limit, "deflate")
    raise UnsupportedMedia(f"Content-Encoding {encoding!r} is not supported; use gzip or none")


def _inflate(body: bytes, wbits: int, limit: int, name: str) -> bytes:
    out: list[bytes] = []
    produced = 0
    data = body
    try:
        while data:
            inflater = zlib.decompressobj(wbits)
            while data:
                chunk = inflater.decompress(data, min(_CHUNK, limit + 1 - produced))
                produced += len(chunk)
                if produced > limit:
                    raise PayloadTooLarge(f"{name} body inflates to more than the limit of {limit} bytes")
                out.append(chunk)
                data = inflater.unconsumed_tail
                if inflater.eof:
                    break
                if not chunk and not data:
                    break
            if not inflater.eof:
                raise MalformedRequest(f"{name} body is truncated")
            data = inflater.unused_data  # a second gzip member follows (concatenated streams are valid)
    except zlib.error as exc:
        raise MalformedRequest(f"{name} body does not decompress: {exc}") from exc
    return b"".join(out)
