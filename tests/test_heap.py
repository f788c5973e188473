"""The heap readout, the trimming the serve process runs every 30 s, and the heap long-running processes keep
(glibc only, as on every Linux here)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

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


KEEP_SCRIPT = """
import ctypes, resource, sys
from meshtrace import heap
if sys.argv[1] == "keep":
    assert heap.keep()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size, count = 64 << 10, 64  # a request's worth of buffers (4 MiB), each under the default mmap threshold
def request():
    blocks = [libc.malloc(size) for _ in range(count)]
    for block in blocks:
        libc.memset(block, 1, size)
    for block in reversed(blocks):
        libc.free(block)
request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    request()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, heap.trim())
"""


def test_a_kept_heap_serves_the_next_requests_without_faulting_their_pages_in_again() -> None:
    """A process in the default mode returns its 4 MiB after every "request" and faults it back in; one
    that keeps its heap does not, and still gives it back when asked (``trim``)."""

    def run(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", KEEP_SCRIPT, mode], capture_output=True, text=True, check=True)
        faults, returned = out.stdout.split()
        return int(faults), int(returned)

    default_faults, _ = run("default")
    kept_faults, returned = run("keep")
    pages = 20 * (64 << 10) * 64 // 4096
    assert default_faults >= pages * 0.9, default_faults
    assert kept_faults <= pages * 0.05, kept_faults
    assert returned >= 3 << 20, returned
