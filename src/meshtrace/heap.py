"""The process heap as glibc's allocator sees it, and giving its free memory back to the system.

The embedded ClickHouse engine allocates with the C library's ``malloc`` (chdb is built without
jemalloc), from up to eight arenas per core for its query, insert and merge threads. Memory those threads
free stays in the arenas, so the process's RSS climbs with the largest queries and merges it has seen
while ClickHouse's own accounting stays flat. ``malloc_trim`` returns the free pages of every arena.

The opposite case is a process serving requests of about a megabyte (a batch of spans received, encoded or
sent): by default glibc gives the top of its heap back after every large free (``brk``), and the next
request faults the same pages in again, ~900 minor faults per 1,000-span OTLP request measured in a gRPC
receiver, over 2 µs of kernel time per span. ``keep`` makes such processes hold their free memory up to a
bound, as a garbage-collected or jemalloc heap would; ``trim`` still returns it on demand.
Elsewhere than glibc these functions are absent and this module reports nothing.
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
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
KEEP_FREE = 16 << 20  # free memory at the top of a heap kept for the next requests
KEEP_LARGE = 4 << 20  # blocks up to this size come from the heap, not from a mapping of their own


def keep(free: int = KEEP_FREE, large: int = KEEP_LARGE) -> bool:
    """Keep up to ``free`` bytes of freed heap instead of returning it at every ``free``, and serve blocks
    up to ``large`` bytes from the heap (by default glibc maps big blocks on their own and unmaps them when
    freed, faulting them in again next time). False off glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, free)) and bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, large))


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
