"""Sidecar benchmark: what meshtrace's proxy costs per hop, against nginx doing the same job, in one run.

Configurations (each behind the same upstream app, loaded by ``wrk``):

* ``direct``: wrk → app.
* ``nginx``: wrk → nginx reverse proxy (keep-alive upstream pool; reads ``traceparent``, makes a span id,
  sets ``traceparent`` and ``x-request-id``, writes a span line to a buffered log) → app.
* ``meshtrace``: wrk → the sidecar's inbound listener (SERVER span, 100% sampling) → app.
* ``nginx chain`` / ``meshtrace chain``: Istio's two hops, the caller's sidecar (outbound, CLIENT span) → the
  callee's sidecar (inbound, SERVER span) → app.

meshtrace's spans are encoded and exported over OTLP/gRPC to a sink process that decodes and counts them;
the run checks that every span reached it. The sink stands for the Collector, which in a cluster runs in a
pod of its own, on CPU of its own: by default it runs only on CPU time the measured processes leave idle
(``--sink-priority idle``, SCHED_IDLE, and not pinned with them in the latency runs), as nginx's span lines go
to a log nothing reads. ``normal`` makes it compete with the proxies at full priority, charging meshtrace
for the Collector's work too. Its CPU per span is reported either way (``sink_cpu_us_per_span``). The app is
nginx returning 1 KiB (a small Python server when nginx is not installed; then only ``direct`` is compared).
Every role is a process of its own, as containers and sidecars are in a pod: the app, the one-hop nginx and
each nginx of the chain are separate nginx instances of 1 worker, so every hop crosses processes for nginx
as for meshtrace, and each proxy's CPU is its own (not the app's). Throughput: ``wrk -t1 -c16`` over both
CPUs; latency per hop: ``wrk -t1 -c1`` with every process pinned to CPU 0 (cross-CPU wake-ups in a VM would
otherwise dominate), (p50 of the config − p50 of direct) ÷ hops. During each throughput run, from ``/proc``:
the busiest proxy's share of the time on a CPU and runnable but waiting for one, and the idle CPUs
(``idle_cpus``), which tell a proxy bound by its own cost from one held up by scheduling, and for the chains
how often their two proxies were on one CPU (``proxies_same_cpu_pct``). Rounds rotate the
order; medians are reported, and meshtrace's req/s over nginx's both as the ratio of the medians and round by
round (``rps_by_round``, its median ``rps_median_of_rounds``): a round's pair runs seconds apart, so the
host's drift between rounds moves it less. Prints one JSON object.

    .venv/bin/python benchmarks/sidecar.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from common import machine, process_stat, start_sink, stat_fields
from meshtrace.listen import free_port

BODY = "x" * 1024
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "errors": %d, "seconds": %f, "p50": %d, "p99": %d}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end
"""
NGINX_MAIN = """
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  keepalive_requests 1000000;
  {servers}
}}
"""
NGINX_APP = """
server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{body}"; }} }}
"""
NGINX_PROXY = """
upstream up{port} {{ server {upstream}; keepalive 256; }}
map $http_traceparent $trace{port} {{
  "~^00-(?<t>[0-9a-f]{{32}})-[0-9a-f]{{16}}-[0-9a-f]{{2}}$" $t; default $request_id; }}
map $http_traceparent $flags{port} {{ "~-(?<f>[0-9a-f]{{2}})$" $f; default "01"; }}
map $request_id $span{port} {{ "~^(?<s>[0-9a-f]{{16}})" $s; }}
map $http_x_request_id $rid{port} {{ "" $request_id; default $http_x_request_id; }}
log_format span{port} '$trace{port} $span{port} $msec $request_time $request_method $request_uri $status';
server {{
  listen 127.0.0.1:{port};
  access_log /dev/null span{port} buffer=64k;
  location / {{
    proxy_pass http://up{port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header traceparent "00-$trace{port}-$span{port}-$flags{port}";
    proxy_set_header x-request-id $rid{port};
  }}
}}
"""
PY_APP = """
import asyncio, httptools, uvloop
REPLY = b"HTTP/1.1 200 OK\\r\\ncontent-type: text/plain\\r\\ncontent-length: 1024\\r\\n\\r\\n" + b"x" * 1024
class App(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.parser = transport, httptools.HttpRequestParser(self)
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_message_complete(self):
        self.transport.write(REPLY)
async def main():
    server = await asyncio.get_running_loop().create_server(App, "127.0.0.1", {port})
    await server.serve_forever()
uvloop.run(main())
"""


class Setup:
    """The processes of one run; all started here and stopped by their own PIDs."""

    start_seconds = 20.0  # how long each target may take to answer its first request

    def __init__(self, workdir: Path, sink_port: int, tracing: bool = True, sampling: float = 100.0) -> None:
        self.dir = workdir
        self.sink_port = sink_port
        self.tracing = tracing
        self.sampling = sampling
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nginx = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None
        )
        block = 40 + 2 * random.randrange(0, 60)
        self.server_pod, self.client_pod = f"127.{block}.0.2", f"127.{block}.0.3"
        self.app_port = free_port()
        self.proxy_pids: dict[str, list[int]] = {}
        self.nginx_pids: dict[str, list[int]] = {}

    def start(self) -> dict[str, tuple[str, int, str | None]]:
        """Starts everything; returns config name → (URL, hops, Host header)."""
        app = f"127.0.0.1:{self.app_port}"
        targets: dict[str, tuple[str, int, str | None]] = {"direct": (f"http://{app}/", 0, None)}
        if self.nginx:
            one, chain_in, chain_out = free_port(), free_port(), free_port()
            self._nginx("app", NGINX_APP.format(port=self.app_port, body=BODY))
            self.nginx_pids = {
                "nginx": [self._nginx("one", NGINX_PROXY.format(port=one, upstream=app))],
                "nginx chain": [
                    self._nginx("chain-out", NGINX_PROXY.format(port=chain_out, upstream=f"127.0.0.1:{chain_in}")),
                    self._nginx("chain-in", NGINX_PROXY.format(port=chain_in, upstream=app)),
                ],
            }
            targets["nginx"] = (f"http://127.0.0.1:{one}/", 1, None)
            targets["nginx chain"] = (f"http://127.0.0.1:{chain_out}/", 2, None)
        else:
            (self.dir / "app.py").write_text(PY_APP.format(port=self.app_port))
            self._spawn([sys.executable, str(self.dir / "app.py")], "app")
        server = self._proxy("server", self.server_pod, inbound=app)
        client = self._proxy("client", self.client_pod, upstream=f"{self.server_pod}:9080")
        targets["meshtrace"] = (f"http://{self.server_pod}:9080/", 1, None)
        targets["meshtrace chain"] = (f"http://{self.client_pod}:15001/", 2, "echo:9080")
        self.proxy_pids = {"meshtrace": [server], "meshtrace chain": [client, server]}
        for url, _, host in targets.values():
            self._wait(url, host)
        return targets

    def _nginx(self, name: str, servers: str) -> int:
        """An nginx of its own (1 worker) for one role, as every container and sidecar is a process of its
        own in a pod: the app, the one-hop proxy, each proxy of the chain. Returns its master's PID."""
        workdir = self.dir / f"nginx-{name}"
        (workdir / "tmp").mkdir(parents=True)
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_MAIN.format(dir=workdir, servers=servers))
        argv = [str(self.nginx), "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
        return self._spawn(argv, f"nginx-{name}").pid

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _proxy(self, name: str, pod_ip: str, inbound: str | None = None, upstream: str | None = None) -> int:
        provider = {
            "name": "otel",
            "kind": "opentelemetry",
            "service": "sink.bench.svc.cluster.local",
            "port": 4317,
            "endpoints": [f"127.0.0.1:{self.sink_port}"],
        }
        spec = {"provider": provider, "sampling": self.sampling} if self.tracing else None
        fqdn = "echo.default.svc.cluster.local"
        config = {
            "version": 1,
            "node": {
                "id": f"sidecar~{pod_ip}~{name}-1.default~default.svc.cluster.local",
                "kind": "sidecar",
                "pod": f"{name}-1",
                "namespace": "default",
                "pod_ip": pod_ip,
                "service_cluster": f"{name}.default",
                "canonical_service": name,
                "canonical_revision": "v1",
            },
            "clusters": [
                {
                    "name": f"outbound|9080||{fqdn}",
                    "service": fqdn,
                    "port": 9080,
                    "endpoints": [upstream] if upstream else [],
                }
            ],
            "hosts": {"echo:9080": [f"outbound|9080||{fqdn}", f"{fqdn}:9080/*"]},
            "inbound": [{"port": 9080, "app": inbound, "decorator": f"{fqdn}:9080/*"}] if inbound else [],
            "client": spec,
            "server": spec,
        }
        path = self.dir / f"{name}.json"
        path.write_text(json.dumps(config))
        return self._spawn([sys.executable, "-m", "meshtrace.mesh.proxy", str(path)], f"proxy-{name}").pid

    def _wait(self, url: str, host: str | None) -> None:
        deadline = time.monotonic() + self.start_seconds
        while True:
            try:
                headers = {"host": host} if host else {}
                timeout = self.start_seconds / 10
                if httpx.get(url, headers=headers, timeout=timeout, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                logs = "\n".join(f"{p.name}:\n{p.read_text()}" for p in self.dir.glob("*.log"))
                raise SystemExit(f"{url} did not answer 200 within {self.start_seconds:g} s\n{logs}")
            time.sleep(0.1)

    def exported(self) -> tuple[int, int]:
        """(spans sent, spans dropped) by both proxies, from their admin ``/stats``."""
        sent = dropped = 0
        for pod in (self.server_pod, self.client_pod):
            stats = httpx.get(f"http://{pod}:15000/stats", trust_env=False).json()
            for exporter in stats["tracing"]["exporters"].values():
                sent += exporter["spans_sent"]
                dropped += exporter["spans_dropped"]
        return sent, dropped

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (nginx workers, the proxies' export processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of ``pids`` (and this process, so wrk too) on ``cpus``."""
    for pid in [*pids, os.getpid()]:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cpus)


def wrk(url: str, host: str | None, connections: int, seconds: float, script: Path) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"wrk saw {result['errors']} errors against {url}:\n{out}")
    return dict(result)


def cpu(pids: list[int]) -> float:
    return sum(process_stat(pid)[0] for pid in pids)


def schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of a process's main thread, the proxy's event loop."""
    on_cpu, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(on_cpu), int(waiting)


def idle_cpu_seconds() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


class Placement:
    """How often a chain's proxies sat on one CPU during a load run (sampled every 20 ms from the CPU each
    last ran on): two proxies on one CPU leave the other half idle while the app and wrk wait on them, and a
    burst of other work (the export processes, the sink) tends to put them there (``BENCHMARKS.md``)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.samples = self.shared = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Placement:
        if len(self.pids) > 1:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                cpus = {int(stat_fields(pid)[36]) for pid in self.pids}  # the CPU it last ran on
            except (OSError, IndexError, ValueError):
                return
            self.samples += 1
            self.shared += len(cpus) == 1

    def report(self) -> dict[str, float]:
        return {"proxies_same_cpu_pct": round(100 * self.shared / self.samples, 1)} if self.samples else {}


def scheduling(pids: list[int], before: dict[int, tuple[int, int]], idle: float, seconds: float) -> dict[str, float]:
    """Where the time went during a load run: the busiest proxy's share of it on a CPU and runnable but
    waiting, and the CPUs left idle. A proxy near 100 % on a CPU is what bounds the run; one that waits
    while CPUs idle is held up by where the scheduler put it, not by its own cost."""
    out = {"idle_cpus": round((idle_cpu_seconds() - idle) / seconds, 2)}
    if pids:
        deltas = [(now[0] - then[0], now[1] - then[1]) for now, then in ((schedstat(p), before[p]) for p in pids)]
        on_cpu, waiting = max(deltas)
        out["proxy_on_cpu_pct"] = round(on_cpu / seconds / 1e7, 1)
        out["proxy_waiting_pct"] = round(waiting / seconds / 1e7, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each wrk run.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of every configuration, order rotated.")
    parser.add_argument("--no-tracing", action="store_true", help="meshtrace's proxies without a tracing provider.")
    parser.add_argument(
        "--sampling",
        type=float,
        default=100.0,
        help="meshtrace's sampling percentage (100: the seed's Telemetry; Istio's default is 1).",
    )
    parser.add_argument(
        "--sink-priority",
        choices=("idle", "normal"),
        default="idle",
        help="The span sink (the Collector's stand-in) on idle CPU time only, or competing at full priority.",
    )
    parser.add_argument(
        "--configs",
        default="",
        help="Comma-separated configurations to run (e.g. 'meshtrace,nginx'; 'direct' always runs): all by default.",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (and nginx-light to compare with nginx)")

    sink, sink_port, spans = start_sink(idle=args.sink_priority == "idle")
    assert sink.pid is not None
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="meshtrace-sbench-") as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(WRK_REPORT)
        setup = Setup(Path(tmp), sink_port, tracing=not args.no_tracing, sampling=args.sampling)
        try:
            targets = setup.start()
            stats = httpx.get(f"http://{setup.server_pod}:15000/stats", trust_env=False).json()
            args.data_path = "compiled" if stats.get("compiled") else "interpreted"
            chosen = {name.strip() for name in args.configs.split(",") if name.strip()}
            unknown = chosen - set(targets)
            if unknown:
                raise SystemExit(f"unknown --configs {sorted(unknown)}: choose from {sorted(targets)}")
            names = [name for name in targets if not chosen or name in chosen or name == "direct"]
            pids = dict(setup.proxy_pids)
            sink_cpu, received_before = cpu([sink.pid]), spans.value
            # Pinned for the latency runs; an idle-priority sink is not, as a Collector on other cores.
            ours = [p.pid for p in setup.procs] + ([] if args.sink_priority == "idle" else [sink.pid])
            ours += [child for pid in ours for child in children(pid)]
            every_cpu = os.sched_getaffinity(0)
            for name, masters in setup.nginx_pids.items():
                pids[name] = [worker for master in masters for worker in children(master)]
            for url, _, host in targets.values():  # warm-up
                wrk(url, host, 16, 2, script)
            served = 0
            for round_ in range(args.rounds):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    url, hops, host = targets[name]
                    proxies = pids.get(name, [])
                    before, sched, idle = cpu(proxies), {p: schedstat(p) for p in proxies}, idle_cpu_seconds()
                    started = time.monotonic()
                    with Placement(proxies) as placement:
                        load = wrk(url, host, 16, args.seconds, script)
                    where = scheduling(proxies, sched, idle, time.monotonic() - started) | placement.report()
                    used = cpu(proxies) - before
                    pin(ours, {0})  # one connection: the cost per hop, without cross-CPU wake-ups
                    latency = wrk(url, host, 1, args.seconds, script)
                    pin(ours, every_cpu)
                    if name.startswith("meshtrace") and setup.tracing and setup.sampling == 100:
                        served += (load["requests"] + latency["requests"]) * hops
                    runs.setdefault(name, []).append(
                        {
                            "rps": load["requests"] / load["seconds"],
                            "p50_c16": load["p50"],
                            "p99_c16": load["p99"],
                            "p50_c1": latency["p50"],
                            "p99_c1": latency["p99"],
                            "cpu_us_per_req_hop": used / max(1, load["requests"]) / max(1, hops) * 1e6,
                            **where,
                        }
                    )
                    print(f"round {round_ + 1}: {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
            time.sleep(6)  # the proxies flush at least every 5 s
            deadline = time.monotonic() + 30
            sent, dropped = setup.exported()
            while spans.value < sent and time.monotonic() < deadline:
                time.sleep(0.2)
                sent, dropped = setup.exported()
            per_span = (cpu([sink.pid]) - sink_cpu) / max(1, spans.value - received_before)
            args.sink_cpu_us_per_span = round(per_span * 1e6, 2)
        finally:
            setup.stop()
    sink.terminate()
    print(json.dumps(report(runs, targets, served, sent, dropped, spans.value, args), indent=2))


def report(
    runs: dict[str, list[dict[str, Any]]],
    targets: dict[str, tuple[str, int, str | None]],
    served: int,
    sent: int,
    dropped: int,
    received: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    medians = {name: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]} for name, rs in runs.items()}
    direct = medians["direct"]["p50_c1"]
    for name, m in medians.items():
        hops = targets[name][1]
        if hops:
            m["added_p50_us_per_hop"] = round((m["p50_c1"] - direct) / hops, 1)
    out: dict[str, Any] = {
        "benchmark": "sidecar",
        "machine": machine(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "tracing": not args.no_tracing,
        "sampling_percent": args.sampling,
        "data_path": getattr(args, "data_path", "unknown"),
        "configs": medians,
    }
    for ours, theirs in (("meshtrace", "nginx"), ("meshtrace chain", "nginx chain")):
        if ours in medians and theirs in medians:  # each pair that ran (``--configs`` may leave one out)
            # A round's pair runs seconds apart, the rounds minutes apart: a ratio per round is less
            # moved by the host's drift than the ratio of the medians (both are given).
            by_round = [a["rps"] / b["rps"] for a, b in zip(runs[ours], runs[theirs], strict=True)]
            out[f"{ours} ÷ {theirs}"] = {
                "rps": round(medians[ours]["rps"] / medians[theirs]["rps"], 2),
                "rps_by_round": [round(ratio, 2) for ratio in by_round],
                "rps_median_of_rounds": round(statistics.median(by_round), 2),
                "added_p50_per_hop": round(
                    medians[ours]["added_p50_us_per_hop"] / max(1.0, medians[theirs]["added_p50_us_per_hop"]), 2
                ),
            }
    out["spans"] = {
        "created_in_measured_runs": served if args.sampling == 100 else None,
        "exported": sent,
        "dropped": dropped,
        "sink_received": received,
        "sink_priority": args.sink_priority,
        "sink_cpu_us_per_span": getattr(args, "sink_cpu_us_per_span", None),
    }
    return out


if __name__ == "__main__":
    main()
