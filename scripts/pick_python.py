"""The interpreter ``make`` builds ``.venv`` with, when ``PYTHON=`` does not name one: the fastest usable
CPython on this machine.

Builds of one Python version differ in speed: a distribution's (Debian's ``/usr/bin/python3``: profile-guided
and link-time optimised, the interpreter linked into the executable) runs the proxy's data path with ~10%
fewer instructions and less CPU per request than a default source build (``libpython`` shared, neither
optimisation), as pyenv makes one (``BENCHMARKS.md``, sidecar, "The interpreter"). Usable: CPython 3.11 or
later with ``venv`` and ``ensurepip``; one with its C headers (the proxy's compiled build needs them) comes
before one without. Each candidate runs a short probe of the interpreter's common work (dict lookups,
bytes, tuples, objects, calls), best of five; the first found (``python3`` on ``PATH``) is kept unless another is
more than 10% faster, so that near ties do not flip from one run to the next.

Prints the chosen executable on stdout and why on stderr; exits 1 when nothing is usable.

    python3 scripts/pick_python.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

NAMES = ("python3", "python3.11", "python3.12", "python3.13", "python3.14")
PLACES = ("/usr/bin/python3", "/usr/local/bin/python3")
MARGIN = 0.9  # another interpreter must take under 90% of the first one's time

# Run by each candidate: what it is, whether a venv with pip can be made from it, and the probe's best time.
INSPECT = r"""
import json, os, sys, sysconfig, time
try:
    import ensurepip, venv
    ensurepip.version()
    venv_ok = True
except Exception:
    venv_ok = False
headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
class Item:
    __slots__ = ("size", "name")
    def __init__(self, size, name):
        self.size, self.name = size, name
    def weight(self, extra):
        return self.size + extra
def probe():
    table = {b"host": 1, b"user-agent": 2, b"content-length": 3, b"traceparent": 4}
    keys = (b"host", b"x-request-id", b"traceparent", b"accept")
    parts, total = [], 0
    for i in range(40000):
        key = keys[i & 3]
        total += table.get(key, 0)
        parts.append(b"%d" % i)
        if len(parts) == 16:
            total += len(b"".join(parts))
            parts.clear()
        item = Item(i, key)
        total += item.weight(len((i, key, total))) + len(str(i)) + len(item.name)
    return total
best = float("inf")
for _ in range(5):
    started = time.perf_counter()
    probe()
    best = min(best, time.perf_counter() - started)
print(json.dumps({"executable": os.path.realpath(sys.executable), "version": list(sys.version_info[:3]),
                  "cpython": sys.implementation.name == "cpython", "venv": venv_ok, "headers": headers,
                  "seconds": best}))
"""


@dataclass(frozen=True)
class Found:
    executable: str
    version: tuple[int, ...]
    cpython: bool
    venv: bool
    headers: bool
    seconds: float

    @property
    def usable(self) -> bool:
        return self.cpython and self.venv and self.version[:2] >= (3, 11)

    def __str__(self) -> str:
        version = ".".join(map(str, self.version))
        return f"{self.executable} ({version}, probe {self.seconds * 1000:.0f} ms)"


def candidates() -> list[str]:
    found = [shutil.which(name) for name in NAMES] + [p for p in PLACES if os.access(p, os.X_OK)]
    return list(dict.fromkeys(p for p in found if p))


def inspect(command: str) -> Found | None:
    try:
        done = subprocess.run([command, "-c", INSPECT], capture_output=True, text=True, timeout=60, check=True)
        info = json.loads(done.stdout.strip().splitlines()[-1])
        return Found(
            str(info["executable"]),
            tuple(int(part) for part in info["version"]),
            bool(info["cpython"]),
            bool(info["venv"]),
            bool(info["headers"]),
            float(info["seconds"]),
        )
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, KeyError, TypeError):
        return None


def choose(found: list[Found]) -> Found | None:
    """The first usable one, unless another (with headers if the first has them) is >10% faster."""
    ready = [info for info in found if info.usable]
    if any(info.headers for info in ready):
        ready = [info for info in ready if info.headers]
    if not ready:
        return None
    fastest = min(ready, key=lambda info: info.seconds)
    return fastest if fastest.seconds < MARGIN * ready[0].seconds else ready[0]


def main() -> int:
    seen: dict[str, Found] = {}
    for command in candidates():
        info = inspect(command)
        if info is not None:
            seen.setdefault(info.executable, info)
    found = list(seen.values())
    chosen = choose(found)
    if chosen is None:
        print("meshtrace: no CPython 3.11 or later with venv found; name one with PYTHON=", file=sys.stderr)
        return 1
    others = ", ".join(str(info) for info in found if info is not chosen)
    print(f"meshtrace: .venv with {chosen}" + (f"; also found {others}" if others else ""), file=sys.stderr)
    print(chosen.executable)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
