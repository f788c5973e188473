"""The heap readout and trimming the serve process runs every 30 s (glibc only, as on every Linux here)."""

from __future__ import annotations

import ctypes

from meshtrace import heap


def test_free_heap_held_by_the_allocator_goes_back_to_the_system() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 100 << 10  # under the mmap threshold: from the arena, as the engine's buffers are
    blocks = [libc.malloc(size) for _ in range(2000)]
    for block in blocks:
        libc.memset(block, 1, size)  # resident
    heap.trim()
    kept = blocks[::10]
    for block in blocks:
        if block not in kept:
            libc.free(block)  # holes between live blocks: free() cannot shrink the heap past them
    held = heap.usage()
    assert held["free"] >= 150 << 20
    before = heap.rss()
    returned = heap.trim()
    assert returned >= 150 << 20, returned
    assert heap.rss() <= before - (150 << 20)
    for block in kept:
        libc.free(block)
