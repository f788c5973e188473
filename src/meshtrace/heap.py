"""The process heap as glibc's allocator sees it, and giving its free memory back to the system.

The embedded ClickHouse engine allocates with the C library's ``malloc`` (chdb is built without
jemalloc), from up to eight arenas per core for its query, insert and merge threads. Memory those threads
free stays in the arenas, so the process's RSS climbs with the largest queries and merges it has seen
while ClickHouse's own accounting stays flat. ``malloc_trim`` returns the free pages of every arena.
Elsewhere than glibc both functions are absent and this module reports nothing.
"""

from __future__ import annotations

import ctypes
import os


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def usage() -> dict[str, int]:
    """``in_use``: allocated and not freed; ``free``: freed but still held by the allocator (empty off
    glibc)."""
    if _LIBC is None:
        return {}
    info = _LIBC.mallinfo2()
    return {"in_use": int(info.uordblks + info.hblkhd), "free": int(info.fordblks)}


def rss() -> int:
    """This process's resident set, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> int:
    """Give the arenas' free pages back to the system; the bytes by which the resident set shrank (the
    pages stay counted as free in ``usage``: they are returned, not unmapped)."""
    if _LIBC is None:
        return 0
    before = rss()
    _LIBC.malloc_trim(0)
    return max(0, before - rss())
