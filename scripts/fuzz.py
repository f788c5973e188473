"""Mutation-fuzz the parsers of untrusted input and print JSON results (see meshtrace.testing.fuzz).

    .venv/bin/python scripts/fuzz.py [--cases 1000000] [--targets traceql zipkin_json ...] [--seed 0]

Inputs that raise anything but the parser's own error, or take over a second, are written to
tests/fuzz/crashers/<target>/ where the test suite replays them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.progress import Progress

from meshtrace.testing.fuzz import TARGETS, run

CRASHERS = Path(__file__).parents[1] / "tests" / "fuzz" / "crashers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = []
    with Progress(transient=True) as progress:
        for target in args.targets:
            task = progress.add_task(target, total=args.cases)
            result = run(target, args.cases, args.seed, CRASHERS, lambda n, t=task: progress.update(t, completed=n))
            results.append(
                {
                    "target": target,
                    "cases": result.cases,
                    "seconds": round(result.seconds, 1),
                    "slowest_ms": round(result.slowest_ms, 2),
                    "findings": len(result.findings),
                    "examples": sorted(set(result.findings))[:5],
                }
            )
    print(json.dumps({"fuzz": results, "seed": args.seed}, indent=2))


if __name__ == "__main__":
    main()
