"""Live checks against a running ``meshtrace up`` mesh and its backend: the Collector is up and counts
spans, the backend takes the token, probe requests through the gateway become traces within seconds, and
every hop joined its request's trace (an app that does not forward the trace headers leaves its outbound
calls as traces of their own, rooted at its CLIENT span: that names the service).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from meshtrace.doctor.findings import Report
from meshtrace.mesh.client import MeshNotRunning, read_state

GATEWAY = "istio-ingressgateway"
_ACCEPTED = re.compile(
    r'^otelcol_receiver_accepted_spans(?:_total)?\{[^}]*receiver="otlp[^"]*"[^}]*\} ([0-9.e+]+)', re.M
)


def _collector_pods(api: str) -> list[dict[str, Any]]:
    pods = httpx.get(f"{api}/pods", timeout=30, trust_env=False).json()
    return [p for p in pods if any("opentelemetry-collector" in str(c.get("image", "")) for c in p.get("details", []))]


def _accepted(api: str, pod: dict[str, Any]) -> tuple[str, float] | None:
    """Spans the Collector took in so far: its otlp receiver counter on :8888 when it serves one, else the
    ``Span #`` blocks its debug (``logging``) exporter printed, the guide's own first check."""
    try:
        text = httpx.get(f"http://{pod['ip']}:8888/metrics", timeout=5, trust_env=False).text
        values = [float(v) for v in _ACCEPTED.findall(text)]
        if values:
            return "its otlp receiver", sum(values)
    except httpx.HTTPError:
        pass
    try:
        logs = httpx.get(f"{api}/logs/{pod['namespace']}/{pod['name']}", timeout=30, trust_env=False).text
    except httpx.HTTPError:
        return None
    count = sum(1 for line in logs.splitlines() if line.lstrip().startswith("Span #"))
    return ("its debug exporter's log", float(count)) if count else None


def check_live(mesh_dir: Path, report: Report, *, probes: int = 3, wait_s: float = 20.0) -> None:
    try:
        state = read_state(mesh_dir)
    except MeshNotRunning as exc:
        report.fail("mesh-running", str(exc), why="the live checks need the mesh", fix="meshtrace up")
        return
    console, token, gateway, api = state.get("console"), state.get("token"), state.get("gateway_url"), state.get("api")
    headers = {"Authentication": str(token)} if token else {}
    backend = httpx.Client(base_url=str(console), headers=headers, timeout=30, trust_env=False)
    with backend:
        try:
            status = backend.get("/meshtrace/v1/stats").status_code
        except httpx.HTTPError as exc:
            report.fail(
                "backend-up",
                f"the backend at {console} does not answer: {exc}",
                why="spans have nowhere to go",
                fix="meshtrace down && meshtrace up",
            )
            return
        if status == 401:
            report.fail(
                "backend-token",
                "the backend refuses the mesh's token",
                where=str(console),
                why="every export is refused (401)",
                fix="meshtrace up --backend HOST:4317 --token TOKEN",
            )
            return
        report.ok("backend-token", f"the backend at {console} accepts the token")
        collectors = _collector_pods(str(api))
        before: dict[str, tuple[str, float] | None] = {}
        for pod in collectors:
            where = f"pod {pod['namespace']}/{pod['name']}"
            try:
                healthy = httpx.get(f"http://{pod['ip']}:13133/", timeout=5, trust_env=False).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy:
                report.ok("collector-health", f"{where}: health_check answers", where)
            else:
                report.fail(
                    "collector-health",
                    f"{where}: health_check on :13133 does not answer",
                    where=where,
                    why="the Collector is down or still starting: spans are lost",
                    fix=f"meshtrace logs {pod['name']} -n {pod['namespace']}",
                )
            before[where] = _accepted(str(api), pod)
        if not collectors:
            report.warn(
                "collector-health",
                "no Collector pod in the mesh",
                why="proxies export to a Collector",
                fix="meshtrace apply -f otel.yaml -n observability",
            )
        started = time.time_ns()
        request_ids = []
        for _ in range(probes):
            request_id = str(uuid.uuid4())
            probe_headers = {"x-client-trace-id": request_id}
            try:
                answer = httpx.get(f"http://{gateway}/productpage", headers=probe_headers, timeout=30, trust_env=False)
            except httpx.HTTPError as exc:
                report.fail(
                    "probe-request",
                    f"GET http://{gateway}/productpage failed: {exc}",
                    why="no request, no trace",
                    fix="meshtrace get pods -A   # is the gateway running?",
                )
                return
            if answer.status_code != 200:
                report.warn(
                    "probe-request",
                    f"GET /productpage answered {answer.status_code}",
                    why="the trace shows where it failed",
                )
            request_ids.append(request_id)
        _check_traces(backend, report, request_ids, started, wait_s)
        for pod in collectors:
            where = f"pod {pod['namespace']}/{pod['name']}"
            after = _accepted(str(api), pod)
            first = before.get(where)
            if after is None:
                report.warn(
                    "collector-receives",
                    f"{where}: no span count to read (no :8888 metrics, no debug exporter output)",
                    where=where,
                    why="whether the Collector receives spans cannot be seen from here",
                    fix="add the debug exporter to the traces pipeline, or service::telemetry::metrics on 0.0.0.0:8888",
                )
            elif after[1] > (first[1] if first else 0):
                gained = after[1] - (first[1] if first else 0)
                report.ok(
                    "collector-receives", f"{where}: {after[0]} shows {gained:.0f} more spans after the probe", where
                )
            else:
                report.fail(
                    "collector-receives",
                    f"{where}: {after[0]} shows no new spans after the probe",
                    where=where,
                    why="the proxies do not reach the Collector (provider service, port or protocol, or the "
                    "receiver's address)",
                    fix="meshtrace doctor -f <mesh config> -f <collector manifests>",
                )


def _check_traces(backend: httpx.Client, report: Report, request_ids: list[str], started: int, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and len(found) < len(request_ids):
        for request_id in request_ids:
            if request_id in found:
                continue
            # Envoy regenerates x-request-id at the edge; x-client-trace-id stays, as a tag of the gateway's span.
            body = backend.get(
                "/meshtrace/v1/traces",
                params={"attr": f"guid:x-client-trace-id={request_id}", "start": str(started - 10**9), "limit": "5"},
            ).json()
            if body["traces"]:
                found[request_id] = body["traces"][0]
        time.sleep(0.5)
    if not found:
        report.fail(
            "probe-trace",
            f"none of {len(request_ids)} probe requests became a trace within {wait_s:.0f} s",
            why="spans are not produced (Telemetry/provider) or not delivered (Collector, exporter, token)",
            fix="meshtrace doctor -f <mesh config> -f <telemetry> -f <collector manifests>",
        )
        return
    sizes = ", ".join(str(t["spanCount"]) for t in found.values())
    report.ok("probe-trace", f"{len(found)} of {len(request_ids)} probe requests traced ({sizes} spans)")
    time.sleep(2.0)  # the other halves of split traces come from other proxies' exports
    body = backend.get("/meshtrace/v1/traces", params={"start": str(started - 10**9), "limit": "200"}).json()
    probes = {t["traceId"] for t in found.values()}
    droppers: dict[str, set[str]] = {}
    for summary in body["traces"]:
        if summary["traceId"] in probes or summary["rootService"].startswith(GATEWAY):
            continue
        trace = backend.get(f"/meshtrace/v1/traces/{summary['traceId']}").json()
        ids = {s["spanId"] for s in trace["spans"]}
        for span in trace["spans"]:
            if span["kind"] == "Client" and (not span["parentSpanId"] or span["parentSpanId"] not in ids):
                cluster = span["attributes"].get("upstream_cluster", "")
                target = cluster.split("|")[-1].split(".svc.")[0] if cluster.startswith("outbound|") else cluster
                droppers.setdefault(span["service"], set()).add(target or "?")
    for service, targets in sorted(droppers.items()):
        report.fail(
            "headers-dropped",
            f"{service} does not forward the trace headers on its calls to {', '.join(sorted(targets))}",
            where=f"service {service}",
            why="its outbound calls start new traces: each request shows up split (the caller's trace stops at "
            f"{service}, the rest is a trace of its own)",
            fix="copy traceparent, tracestate, x-request-id (and x-b3-* for zipkin) from each incoming request onto "
            "the requests it makes",
        )
    if not droppers:
        report.ok("headers-forwarded", "every hop of the probes joined its request's trace")
