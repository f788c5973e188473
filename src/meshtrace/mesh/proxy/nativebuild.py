"""``python -m meshtrace.mesh.proxy.nativebuild``: compile the proxy's data path with mypyc (``native``).

Kept apart from ``native`` so that running it does not import what it builds; ``make`` runs it whenever a
source of the package is newer than the build.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from meshtrace.mesh.proxy.native import COMPILED, DIRECTORY, PACKAGE, STAMP, source_stamp


def build(package_dir: Path) -> None:
    """Compile ``COMPILED`` with mypyc into ``<package>/_native`` and stamp it; raises if it cannot."""
    from mypyc.build import mypycify  # build-time only: mypy is a development dependency
    from setuptools import setup

    src_root = package_dir.parents[len(PACKAGE.split(".")) - 1]
    stamp = source_stamp(package_dir)
    with tempfile.TemporaryDirectory(prefix="meshtrace-native-") as work:
        os.environ["MYPY_CACHE_DIR"] = os.path.join(work, "mypy-cache")
        cwd = os.getcwd()
        os.chdir(src_root)  # mypyc names modules by their path from here
        try:
            extensions = mypycify(
                [os.path.join(*PACKAGE.split("."), f"{name}.py") for name in COMPILED],
                group_name=f"{PACKAGE}.native",
                target_dir=os.path.join(work, "c"),
            )
            setup(
                name="meshtrace-native",
                ext_modules=extensions,
                script_args=["-q", "build_ext", "--build-lib", os.path.join(work, "lib"),
                             "--build-temp", os.path.join(work, "tmp")],
            )  # fmt: skip
        finally:
            os.chdir(cwd)
        built = Path(work, "lib", *PACKAGE.split("."))
        staging = package_dir / f"{DIRECTORY}.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for library in built.iterdir():
            shutil.copy2(library, staging / library.name)
        (staging / STAMP).write_text(stamp + "\n")
    target = package_dir / DIRECTORY
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # a proxy starting meanwhile runs interpreted, never on half a build


def main() -> int:
    package_dir = Path(__file__).resolve().parent
    try:
        build(package_dir)
    except (Exception, SystemExit) as exc:  # setuptools reports a failed compiler with SystemExit
        print(f"meshtrace: cannot compile the proxy's data path ({exc}); it runs interpreted", file=sys.stderr)
        return 1
    print(f"meshtrace: compiled the proxy's data path ({', '.join(COMPILED)}) into {package_dir / DIRECTORY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
