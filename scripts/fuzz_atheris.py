"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers of untrusted input; prints JSON results.

    .venv/bin/python scripts/fuzz_atheris.py [--runs 1000000] [--targets otlp_protobuf zipkin_json ...]

Each target runs in its own process, instrumented, starting from the same seed corpus as the mutation
fuzzer (meshtrace.testing.fuzz). Anything but the parser's own error, or a case over a second, stops that
target and leaves the input in tests/fuzz/crashers/<target>/, which the test suite replays.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CRASHERS = Path(__file__).parents[1] / "tests" / "fuzz" / "crashers"
TARGET_NAMES = ["otlp_protobuf", "otlp_json", "zipkin_json", "traceql"]


def child(target: str, runs: int, corpus: str) -> None:
    """Runs inside the fuzzing process: never returns (libFuzzer exits)."""
    import atheris

    with atheris.instrument_imports(include=["meshtrace"]):
        from meshtrace.testing.fuzz import TARGETS

    check = TARGETS[target]
    artifacts = CRASHERS / target
    artifacts.mkdir(parents=True, exist_ok=True)
    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", "-timeout=1", "-max_len=65536", f"-artifact_prefix={artifacts}/", corpus],
        lambda data: check(bytes(data)),
    )
    atheris.Fuzz()


def _seed(target: str, directory: Path) -> None:
    from meshtrace.testing.fuzz import seed_corpus

    for data in seed_corpus(target):
        (directory / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--targets", nargs="+", default=TARGET_NAMES, choices=TARGET_NAMES)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.runs, args.corpus)
        return
    results = []
    for target in args.targets:
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as corpus:
            _seed(target, Path(corpus))
            before = set((CRASHERS / target).glob("*")) if (CRASHERS / target).is_dir() else set()
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, __file__, "--child", target, "--runs", str(args.runs), "--corpus", corpus],
                capture_output=True,
                text=True,
                check=False,
            )
            seconds = time.monotonic() - started
            after = set((CRASHERS / target).glob("*")) if (CRASHERS / target).is_dir() else set()
            ran = re.search(r"Done (\d+) runs in (\d+) second", done.stderr)
            coverage = re.findall(r"cov: (\d+) ft: (\d+)", done.stderr)
            results.append(
                {
                    "target": target,
                    "runs": int(ran.group(1)) if ran else None,
                    "seconds": round(seconds, 1),
                    "coverage_edges": int(coverage[-1][0]) if coverage else None,
                    "features": int(coverage[-1][1]) if coverage else None,
                    "exit_code": done.returncode,
                    "findings": sorted(str(p.name) for p in after - before),
                    "last_lines": done.stderr.strip().splitlines()[-3:] if done.returncode else [],
                }
            )
    print(json.dumps({"atheris": results}, indent=2))


if __name__ == "__main__":
    main()
