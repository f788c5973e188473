"""The proxy's data path compiled to C by mypyc, and the rule that decides whether it is used.

Why: the interpreted data path spends most of its time per request in the interpreter; compiled, the same
typed code executes ~40 % fewer instructions per request (``benchmarks/sidecar_instructions.py``,
``BENCHMARKS.md``, sidecar). ``make`` builds it (``python -m meshtrace.mesh.proxy.nativebuild``) into
``_native/`` beside the sources, with a stamp of every source of the package and the interpreter it was
built for. The package's ``__init__`` puts ``_native/`` first on its import path only when the stamp
matches, so an edited source is never shadowed by a stale build, and a machine without a C compiler runs
the same code interpreted.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "meshtrace.mesh.proxy"
# The modules on every request's path (``export``: its buffer, and the export process's encoding).
COMPILED = ("export", "headers", "http1", "listeners", "records", "spanwire", "tracer")
DIRECTORY = "_native"
STAMP = "STAMP"
INTERPRETED = "MESHTRACE_PROXY_INTERPRETED"


@dataclass(frozen=True, slots=True)
class Status:
    compiled: bool
    detail: str  # what a log line says about it


def source_stamp(package_dir: Path) -> str:
    """Every source of the package (compiled code trusts the types of the modules it calls) and the ABI."""
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    digest.update(importlib.machinery.EXTENSION_SUFFIXES[0].encode())
    for path in sorted(package_dir.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def activate(path: list[str]) -> Status:
    """Put the build first on the package's ``__path__`` if it was built from these very sources (and
    ``MESHTRACE_PROXY_INTERPRETED`` is not set: full Python tracebacks, or a comparison)."""
    if os.environ.get(INTERPRETED):
        return Status(False, f"interpreted ({INTERPRETED} is set)")
    package_dir = Path(path[0])
    directory = package_dir / DIRECTORY
    try:
        built = (directory / STAMP).read_text().strip()
    except OSError:
        return Status(False, f"interpreted (not compiled: `make native`, or `python -m {PACKAGE}.nativebuild`)")
    if built != source_stamp(package_dir):
        return Status(False, "interpreted (the compiled build is of other sources: `make native` rebuilds it)")
    path.insert(0, str(directory))
    return Status(True, "compiled (mypyc)")
