"""Instructions the sidecar's proxy process executes per request, counted by valgrind (callgrind).

Requests per second move with whatever else the machine runs (the same build measured ±20 % from one
run to the next here); instructions do not, so this is the figure for comparing builds and changes of
the data path. The proxy is the inbound sidecar of ``sidecar.py`` (SERVER span, 100 % sampling, spans
handed to its export process, which is not counted), or with ``--hop`` one of the chain's two (the
outbound one with a CLIENT span, the inbound one continuing its context), run under callgrind twice: with ``--warmup``
requests and with ``--warmup`` + ``--requests``; the difference divided by ``--requests`` leaves out
start-up and shutdown. Each data path in turn: compiled (``make native``) and interpreted
(``MESHTRACE_PROXY_INTERPRETED=1``). Prints one JSON object.

    .venv/bin/python benchmarks/sidecar_instructions.py [--requests 2000] [--no-tracing] [--modes compiled]
        [--hop one|chain-outbound|chain-inbound]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from common import machine, start_sink
from sidecar import Setup

# --hop: (the process counted, the configuration requested)
HOPS = {
    "one": ("proxy-server", "meshtrace"),
    "chain-outbound": ("proxy-client", "meshtrace chain"),
    "chain-inbound": ("proxy-server", "meshtrace chain"),
}


class CountedSetup(Setup):
    """``sidecar.py``'s processes, with one proxy under callgrind (one process: no children)."""

    start_seconds = 300.0  # start-up under valgrind is ~50× slower

    def __init__(self, workdir: Path, sink_port: int, out: Path, tracing: bool = True, counted: str = "") -> None:
        super().__init__(workdir, sink_port, tracing=tracing)
        self.out = out
        self.counted = counted or HOPS["one"][0]

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        if name == self.counted:
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", *argv]
        return super()._spawn(argv, name)


def count(requests: int, sink_port: int, interpreted: bool, tracing: bool = True, hop: str = "one") -> int:
    """Instructions of the whole proxy process that served ``requests`` requests (and ``_wait``'s one)."""
    counted, config = HOPS[hop]
    with tempfile.TemporaryDirectory(prefix="meshtrace-ibench-") as tmp:
        out = Path(tmp) / "callgrind.out"
        if interpreted:
            os.environ["MESHTRACE_PROXY_INTERPRETED"] = "1"
        else:
            os.environ.pop("MESHTRACE_PROXY_INTERPRETED", None)
        setup = CountedSetup(Path(tmp), sink_port, out, tracing, counted)
        try:
            url, _, host = setup.start()[config]
            pod = setup.server_pod if counted == "proxy-server" else setup.client_pod
            headers = {"host": host} if host else {}
            with httpx.Client(trust_env=False, timeout=30) as client:
                compiled = client.get(f"http://{pod}:15000/stats").json()["compiled"]
                if compiled == interpreted:
                    raise SystemExit(f"the proxy ran {'compiled' if compiled else 'interpreted'}: run `make native`")
                for _ in range(requests):
                    client.get(url, headers=headers).raise_for_status()
        finally:
            setup.stop()
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.MULTILINE)
        if found is None:
            raise SystemExit(f"no instruction total in {out}")
        return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="Requests counted (after the warm-up).")
    parser.add_argument("--warmup", type=int, default=200, help="Requests in both runs (imports, first spans).")
    parser.add_argument("--no-tracing", action="store_true", help="The proxy without a tracing provider.")
    parser.add_argument("--modes", default="compiled,interpreted", help="Data paths to count, comma-separated.")
    parser.add_argument(
        "--hop",
        choices=sorted(HOPS),
        default="one",
        help="The proxy counted: the one-hop inbound sidecar, or the chain's outbound or inbound one.",
    )
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or set(modes) - {"compiled", "interpreted"}:
        raise SystemExit("--modes: choose from compiled, interpreted")
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    sink, sink_port, _ = start_sink()
    per_request: dict[str, Any] = {}
    try:
        for mode in modes:
            interpreted = mode == "interpreted"
            base = count(args.warmup, sink_port, interpreted, not args.no_tracing, args.hop)
            total = count(args.warmup + args.requests, sink_port, interpreted, not args.no_tracing, args.hop)
            per_request[mode] = round((total - base) / args.requests)
    finally:
        sink.terminate()
    result = {
        "benchmark": "sidecar_instructions",
        "machine": machine(),
        "requests": args.requests,
        "tracing": not args.no_tracing,
        "hop": args.hop,
        "instructions_per_request": per_request,
    }
    if len(per_request) == 2:
        result["compiled ÷ interpreted"] = round(per_request["compiled"] / per_request["interpreted"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
