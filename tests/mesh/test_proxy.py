"""The proxy as a real process: a real upstream application, real OTLP/gRPC export to a real backend.

Pod addresses are taken from a loopback block of this test module's own.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshtrace.mesh.proxy
from meshtrace.mesh.proxy import export, headers, http1, listeners, records, spanwire, tracer
from meshtrace.mesh.proxy.config import ProxyConfig
from meshtrace.mesh.proxy.native import COMPILED
from tests.e2e.conftest import TOKENS, ServerProcess, jaeger_trace, token_args, wait_until

BLOCK = 30 + 2 * random.randrange(0, 40)
POD = f"127.{BLOCK}.0.2"
LOCAL = f"127.{BLOCK + 1}.0.2"
APPS = [f"127.{BLOCK + 1}.0.{n}" for n in (3, 4)]
DEAD = f"127.{BLOCK + 1}.0.9:9"  # nothing listens here


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return

    def _reply(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/status/"):
            code = int(self.path.rsplit("/", 1)[1])
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        doc = {
            "server": self.server.server_address[0],
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode(),
        }
        payload = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if self.path.startswith("/chunked"):
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for i in range(0, len(payload), 7):
                    part = payload[i : i + 7]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _reply


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("backend"), *token_args(), "--flush-interval", "50ms").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def apps() -> Iterator[None]:
    servers = [ThreadingHTTPServer((host, 9080), Echo) for host in (LOCAL, *APPS)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield
    for server in servers:
        server.shutdown()
        server.server_close()


def config(backend: ServerProcess, version: int, sampling: float = 100.0) -> dict[str, Any]:
    provider = {
        "name": "otel",
        "kind": "opentelemetry",
        "service": "backend.test.svc.cluster.local",
        "port": 4317,
        "endpoints": [backend.grpc],
        "headers": [["authentication", TOKENS["acme"]]],
    }
    spec = {"provider": provider, "sampling": sampling}
    fqdn = "echo.default.svc.cluster.local"
    clusters = [
        {"name": f"outbound|9080||{fqdn}", "service": fqdn, "port": 9080, "endpoints": [f"{POD}:9080"]},
        {
            "name": "outbound|9080||multi.default.svc.cluster.local",
            "service": "multi.default.svc.cluster.local",
            "port": 9080,
            "endpoints": [f"{a}:9080" for a in APPS],
        },
        {"name": "outbound|9080||empty.default.svc.cluster.local", "service": "", "port": 9080, "endpoints": []},
        {"name": "outbound|9080||dead.default.svc.cluster.local", "service": "", "port": 9080, "endpoints": [DEAD]},
    ]
    hosts = {
        f"{name}:9080": [f"outbound|9080||{name}.default.svc.cluster.local", f"{name}.default.svc.cluster.local:9080/*"]
        for name in ("echo", "multi", "empty", "dead")
    }
    return {
        "version": version,
        "node": {
            "id": f"sidecar~{POD}~echo-1.default~default.svc.cluster.local",
            "kind": "sidecar",
            "pod": "echo-1",
            "namespace": "default",
            "pod_ip": POD,
            "service_cluster": "echo.default",
            "canonical_service": "echo",
            "canonical_revision": "v1",
        },
        "clusters": clusters,
        "hosts": hosts,
        "inbound": [{"port": 9080, "app": f"{LOCAL}:9080", "decorator": f"{fqdn}:9080/*"}],
        "client": spec,
        "server": spec,
    }


def write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, backend: ServerProcess, apps: None) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("proxy") / "proxy.json"
    write(path, config(backend, 1))
    log = open(path.with_name("proxy.log"), "wb")  # noqa: SIM115
    proc = run_proxy(path, POD, log, subprocess.STDOUT)
    assert proc.poll() is None, path.with_name("proxy.log").read_text()
    yield path
    proc.terminate()
    assert proc.wait(20) == 0
    log.close()


def outbound() -> httpx.Client:
    return httpx.Client(proxy=f"http://{POD}:15001", trust_env=False, timeout=10)


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def test_inbound_continues_the_trace_renames_by_decorator_and_strips_it(proxy, backend):
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = httpx.get(
        f"http://{POD}:9080/hello?x=1",
        headers={
            "traceparent": f"00-{trace_id}-{parent}-01",
            "x-envoy-decorator-operation": "front:80/hello",
            "user-agent": "test-client",
        },
    )
    seen = response.json()
    assert response.status_code == 200
    assert seen["path"] == "/hello?x=1"
    assert "x-envoy-decorator-operation" not in seen["headers"]
    assert seen["headers"]["traceparent"].startswith(f"00-{trace_id}-")
    assert not seen["headers"]["traceparent"].endswith(f"{parent}-01")
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert len(seen["headers"]["x-request-id"]) == 36
    span_id = seen["headers"]["traceparent"].split("-")[2]
    trace = jaeger_trace(backend, trace_id)
    span = next(s for s in trace["spans"] if s["spanID"] == span_id)
    assert span["operationName"] == "front:80/hello"
    assert span["references"][0]["spanID"] == parent
    t = tags(span)
    assert t["span.kind"] == "server"
    assert t["upstream_cluster"] == "inbound|9080||"
    assert t["user_agent"] == "test-client"
    assert t["http.url"] == f"http://{POD}:9080/hello?x=1"
    assert t["peer.address"] == "127.0.0.1"
    assert t["guid:x-request-id"] == seen["headers"]["x-request-id"]
    assert trace["processes"][span["processID"]]["serviceName"] == "echo.default"


def test_outbound_client_span_is_the_parent_of_the_inbound_server_span(proxy, backend):
    with outbound() as client:
        response = client.get("http://echo:9080/a/b", headers={"x-request-id": "11111111-2222-4333-8444-555555555555"})
    seen = response.json()
    assert seen["path"] == "/a/b"
    assert seen["headers"]["host"] == "echo:9080"
    assert seen["headers"]["x-request-id"][:14] == "11111111-2222-"
    assert seen["headers"]["x-request-id"][14] == "9"
    trace_id = seen["headers"]["traceparent"].split("-")[1]
    trace = jaeger_trace(backend, trace_id, spans=2)
    by_kind = {tags(s)["span.kind"]: s for s in trace["spans"]}
    assert by_kind["server"]["references"][0]["spanID"] == by_kind["client"]["spanID"]
    assert (
        by_kind["client"]["operationName"]
        == by_kind["server"]["operationName"]
        == "echo.default.svc.cluster.local:9080/*"
    )
    client_tags = tags(by_kind["client"])
    assert client_tags["upstream_cluster.name"] == "outbound|9080||echo.default.svc.cluster.local;"
    assert client_tags["peer.address"] == POD
    assert client_tags["http.url"] == "http://echo:9080/a/b"


def test_round_robin_over_endpoints_and_connection_reuse(proxy):
    with outbound() as client:
        servers = [client.get("http://multi:9080/").json()["server"] for _ in range(6)]
        before = httpx.get(f"http://{POD}:15000/stats").json()["upstream_cx_total"]
        for _ in range(20):
            client.get("http://multi:9080/").raise_for_status()
        after = httpx.get(f"http://{POD}:15000/stats").json()["upstream_cx_total"]
    assert servers == APPS * 3
    assert after == before  # kept-alive upstream connections are reused


def find_by_request_id(backend: ServerProcess, request_id: str) -> dict[str, Any]:
    params = {"service": "echo.default", "tags": json.dumps({"guid:x-request-id": request_id}), "lookback": "1h"}

    def fetch() -> Any:
        data = backend.api().get("/api/traces", params=params).json()["data"]
        return data[0] if data else None

    return wait_until(fetch)


def test_local_replies_carry_envoys_flags(proxy, backend):
    ids = {"empty": "aaaaaaaa-0000-4000-8000-000000000001", "dead": "aaaaaaaa-0000-4000-8000-000000000002"}
    with outbound() as client:
        empty = client.get("http://empty:9080/", headers={"x-request-id": ids["empty"]})
        dead = client.get("http://dead:9080/", headers={"x-request-id": ids["dead"]})
    assert (empty.status_code, empty.text) == (503, "no healthy upstream")
    assert dead.status_code == 503
    assert "connection failure" in dead.text
    assert empty.headers["server"] == "istio-envoy"
    for name, flags in (("empty", "UH"), ("dead", "UF,URX")):
        trace = find_by_request_id(backend, ids[name][:14] + "9" + ids[name][15:])
        span = trace["spans"][0]
        t = tags(span)
        assert (t["response_flags"], t["http.status_code"], t["error"]) == (flags, "503", True)
        assert t["span.kind"] == "client"
        assert t["otel.status_code"] == "ERROR"


def test_bodies_chunked_head_and_post(proxy):
    with outbound() as client:
        chunked = client.get("http://echo:9080/chunked")
        head = client.head("http://echo:9080/chunked")
        posted = client.post("http://echo:9080/p", content=b"x" * 100_000)
        status = client.get("http://echo:9080/status/418")
    assert chunked.json()["path"] == "/chunked"
    assert head.status_code == 200
    assert head.content == b""
    assert posted.json()["body"] == "x" * 100_000
    assert status.status_code == 418


def test_header_names_are_classified_whatever_their_case(proxy):
    """The proxy classifies a header by the name as received (cached): managed, hop-by-hop and other headers
    keep their meaning in any case, also after many unknown names have filled and emptied that cache."""
    import socket

    def ask(extra: list[str]) -> dict[str, Any]:
        lines = [
            "GET /h HTTP/1.1",
            "Host: echo:9080",
            "X-Request-ID: bbbbbbbb-0000-4000-8000-000000000001",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "USER-AGENT: case/1",
            "X-Custom: kept",
            *extra,
            "Connection: close",
        ]
        with socket.create_connection((POD, 15001), timeout=10) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return json.loads(body)

    for round_ in range(2):
        seen = ask([])["headers"]
        assert seen["x-request-id"][:14] == "bbbbbbbb-0000-"  # managed: written once, by the proxy
        assert "keep-alive" not in seen
        assert "proxy-connection" not in seen
        assert seen["user-agent"] == "case/1"
        assert seen["x-custom"] == "kept"
        if round_ == 0:
            for batch in range(50):  # 5,000 names never seen before
                names = [f"X-Unknown-{batch}-{n}: v" for n in range(90)]
                assert len(ask(names)["headers"]) > 90


def test_malformed_request_gets_400_and_closes(proxy):
    import socket

    with socket.create_connection((POD, 9080)) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")


def test_configuration_changes_apply_live(proxy, backend):
    def collector() -> dict[str, Any]:
        return dict(httpx.get(f"http://{POD}:15000/stats").json()["gc"])

    started = collector()
    assert started["frozen"] > 10_000  # what start-up built is out of the collector's walks
    write(proxy, config(backend, 2, sampling=0.0))
    wait_until(lambda: httpx.get(f"http://{POD}:15000/ready").json()["version"] == 2)
    # The old configuration collected, then what is live set aside again.
    wait_until(lambda: collector()["collections"][2] > started["collections"][2], timeout=5)
    assert collector()["frozen"] > 10_000

    def exporter() -> dict[str, int]:
        return dict(httpx.get(f"http://{POD}:15000/stats").json()["tracing"]["exporters"]["otel"])

    wait_until(lambda: exporter()["spans_pending"] == 0, timeout=10)  # earlier tests' spans are out
    before = exporter()["spans_sent"]
    with outbound() as client:
        for _ in range(10):
            headers = client.get("http://echo:9080/").json()["headers"]
            assert headers["traceparent"].endswith("-00")  # not sampled, still propagated
    time.sleep(0.7)  # past the next hand-over to the export process
    assert exporter()["spans_pending"] == 0
    assert exporter()["spans_sent"] == before
    write(proxy, config(backend, 3))
    wait_until(lambda: httpx.get(f"http://{POD}:15000/ready").json()["version"] == 3)


def start_proxy(
    path: Path, data: dict[str, Any], pod: str, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """A second proxy process, for tests that stop it or break its export."""
    data["node"] = {**data["node"], "pod_ip": pod, "id": f"sidecar~{pod}~echo-2.default~default.svc.cluster.local"}
    write(path, data)
    proc = run_proxy(path, pod, subprocess.DEVNULL, stderr)
    assert proc.poll() is None
    return proc


def run_proxy(path: Path, pod: str, stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
    """``python -m meshtrace.mesh.proxy PATH``, once its admin port answers (or it has exited)."""
    proc = subprocess.Popen([sys.executable, "-m", "meshtrace.mesh.proxy", str(path)], stdout=stdout, stderr=stderr)

    def ready() -> bool:
        try:
            return httpx.get(f"http://{pod}:15000/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    wait_until(ready, timeout=20)
    return proc


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_outbound_routes_by_host_header_follow_reloads(tmp_path, backend, apps):
    """Origin-form requests (an app's own, under Istio's interception) are routed by their Host header; the
    routes a configuration resolved are not used once another replaces it."""
    pod = f"127.{BLOCK}.0.7"
    data = config(backend, 1)
    path = tmp_path / "proxy.json"
    proc = start_proxy(path, data, pod)

    def seen(host: str) -> dict[str, Any]:
        response = httpx.get(f"http://{pod}:15001/where?x=1", headers={"host": host}, trust_env=False)
        assert response.status_code == 200
        return dict(response.json())

    try:
        for _ in range(2):  # the second time from what the first resolved
            first, second = seen("multi:9080"), seen("multi:9080")
            assert {first["server"], second["server"]} == set(APPS)
            assert first["path"] == "/where?x=1"
            assert first["headers"]["host"] == "multi:9080"
            assert first["headers"]["x-envoy-decorator-operation"] == "multi.default.svc.cluster.local:9080/*"
            direct = seen(f"{APPS[1]}:9080")  # not a mesh service: passed through to the address
            assert direct["server"] == APPS[1]
            assert direct["headers"]["x-envoy-decorator-operation"] == f"{APPS[1]}:9080/*"
        # multi now has one endpoint and another name; the application's address becomes a service.
        data["version"] = 2
        data["clusters"][1]["endpoints"] = [f"{APPS[0]}:9080"]
        data["hosts"]["multi:9080"] = [data["clusters"][1]["name"], "renamed:9080/*"]
        data["hosts"][f"{APPS[1]}:9080"] = [data["clusters"][1]["name"], "by-address:9080/*"]
        write(path, data)
        wait_until(lambda: httpx.get(f"http://{pod}:15000/ready").json()["version"] == 2)
        for _ in range(2):
            moved = seen("multi:9080")
            assert moved["server"] == APPS[0]
            assert moved["headers"]["x-envoy-decorator-operation"] == "renamed:9080/*"
            direct = seen(f"{APPS[1]}:9080")
            assert direct["server"] == APPS[0]
            assert direct["headers"]["x-envoy-decorator-operation"] == "by-address:9080/*"
        assert httpx.get(f"http://{pod}:15001/", headers={"host": "empty:9080"}, trust_env=False).status_code == 503
    finally:
        proc.terminate()
        proc.wait(15)


def test_what_listeners_resolve_lives_and_dies_with_its_configuration() -> None:
    """Routes are kept by the configuration they were resolved in, not by the listeners: after a reload the
    replaced configuration is garbage at once (the reload's collection finds it), not when each listener
    next serves a request."""
    data = config(types.SimpleNamespace(grpc="127.0.0.1:9"), 1)  # type: ignore[arg-type]  # nothing is exported

    def compiled() -> listeners.State:
        parsed = ProxyConfig.from_json(data)
        return listeners.State(
            parsed, tracer.SideTracer(None, parsed.node, None), tracer.SideTracer(None, parsed.node, None)
        )

    old = compiled()
    holder = listeners.Holder(old)
    inbound, outbound = listeners.InboundListener(holder, 9080), listeners.OutboundListener(holder)
    references = sys.getrefcount(old)
    found = inbound._inbound(old)
    assert found is not None
    assert found[1].name == "inbound|9080||"
    assert inbound._inbound(old) is found
    route = outbound._origin_route(old, b"multi:9080")
    assert route.cluster is not None
    assert route.cluster.name == "outbound|9080||multi.default.svc.cluster.local"
    assert route.decorator_line == b"x-envoy-decorator-operation: multi.default.svc.cluster.local:9080/*\r\n"
    assert outbound._origin_route(old, b"multi:9080") is route
    passthrough = outbound._origin_route(old, b"203.0.113.7:8080")
    assert passthrough.cluster is not None
    assert passthrough.cluster.endpoints == ("203.0.113.7:8080",)
    assert passthrough.decorator == "203.0.113.7:8080/*"
    assert sys.getrefcount(old) == references  # no listener holds on to it
    new = compiled()
    assert outbound._origin_route(new, b"multi:9080") is not route
    assert inbound._inbound(new) is not found
    for n in range(listeners._MAX_ROUTES + 10):  # Host headers a client invents: bounded
        outbound._origin_route(new, b"h%d:80" % n)
    assert len(new.routes) <= listeners._MAX_ROUTES


def test_sigterm_exports_buffered_spans_and_ends_the_export_process(tmp_path, backend, apps):
    pod = f"127.{BLOCK}.0.5"
    proc = start_proxy(tmp_path / "proxy.json", config(backend, 1), pod)
    try:
        exporters = children(proc.pid)
        assert len(exporters) == 1  # client and server share one provider and resource
        # Requests first on a busy core: the export process lowers its own priority as it starts.
        wait_until(lambda: os.getpriority(os.PRIO_PROCESS, exporters[0]) >= 10, timeout=10)
        trace_ids = []
        for _ in range(2):  # fewer than the 5 that trigger a flush: they wait for the 5 s timer
            seen = httpx.get(f"http://{pod}:9080/", trust_env=False).json()
            trace_ids.append(seen["headers"]["traceparent"].split("-")[1])
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for trace_id in trace_ids:
        assert jaeger_trace(backend, trace_id)["spans"][0]["operationName"] == "echo.default.svc.cluster.local:9080/*"
    assert not [pid for pid in exporters if Path(f"/proc/{pid}").exists()]


def test_failed_exports_are_dropped_counted_and_logged(tmp_path, backend, apps):
    pod = f"127.{BLOCK}.0.6"
    data = config(backend, 1)
    for side in ("client", "server"):
        data[side]["provider"] = {**data[side]["provider"], "endpoints": [DEAD], "timeout": 1.0}
    proc = start_proxy(tmp_path / "proxy.json", data, pod, stderr=subprocess.PIPE)
    try:
        for _ in range(6):
            assert httpx.get(f"http://{pod}:9080/", trust_env=False).status_code == 200

        def failed() -> dict[str, Any] | None:
            stats = httpx.get(f"http://{pod}:15000/stats").json()["tracing"]["exporters"]["otel"]
            return stats if stats["exports_failed"] >= 1 else None

        stats = wait_until(failed, timeout=15)
        assert stats["spans_dropped"] >= 5
        assert stats["spans_sent"] == 0
        assert "UNAVAILABLE" in stats["last_error"]
        assert httpx.get(f"http://{pod}:9080/", trust_env=False).status_code == 200  # requests go on
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
    assert b"export of" in stderr
    assert b"failed" in stderr


def test_zipkin_provider_propagates_b3_and_posts_zipkin_json(tmp_path, backend, apps):
    pod = f"127.{BLOCK}.0.7"
    data = config(backend, 1)
    zipkin = {
        "name": "zipkin",
        "kind": "zipkin",
        "service": "zipkin.istio-system.svc.cluster.local",
        "port": 9411,
        "endpoints": [backend.otlp_http.removeprefix("http://")],
        "transport": "http",
        "path": "/api/v2/spans",
        "headers": [["authentication", TOKENS["acme"]]],
    }
    for side in ("client", "server"):
        data[side] = {"provider": zipkin, "sampling": 100.0}
    proc = start_proxy(tmp_path / "proxy.json", data, pod)
    try:
        trace_id, parent = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
        b3 = {"x-b3-traceid": trace_id, "x-b3-spanid": parent, "x-b3-sampled": "1"}
        seen = httpx.get(f"http://{pod}:9080/zipkin", headers=b3, trust_env=False).json()["headers"]
        assert seen["x-b3-traceid"] == trace_id
        assert seen["x-b3-parentspanid"] == parent
        assert seen["x-b3-sampled"] == "1"
        assert "traceparent" not in seen  # B3 only, unless the provider also asks for W3C
        span = jaeger_trace(backend, trace_id)["spans"][0]
        assert span["spanID"] == seen["x-b3-spanid"]
        assert span["references"][0]["spanID"] == parent
        assert tags(span)["http.url"] == f"http://{pod}:9080/zipkin"
        assert tags(span)["span.kind"] == "server"
        assert tags(span)["upstream_cluster"] == "inbound|9080||"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_a_killed_export_process_is_replaced(tmp_path, backend, apps):
    pod = f"127.{BLOCK}.0.8"
    log = open(tmp_path / "proxy.log", "wb")  # noqa: SIM115
    proc = start_proxy(tmp_path / "proxy.json", config(backend, 1), pod, stderr=log.fileno())
    try:
        first = children(proc.pid)
        trace_ids = [httpx.get(f"http://{pod}:9080/", trust_env=False).json()["headers"]["traceparent"]]
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{first[0]}/stat").exists() or None, timeout=10)
        time.sleep(1.2)  # a new export process starts at the next flush, at most one per second

        def replaced() -> list[int] | None:
            httpx.get(f"http://{pod}:9080/", trust_env=False)  # spans before the replacement are dropped
            now = [pid for pid in children(proc.pid) if pid not in first]
            return now or None

        wait_until(replaced, timeout=20)
        for _ in range(5):
            seen = httpx.get(f"http://{pod}:9080/", trust_env=False).json()
            trace_ids.append(seen["headers"]["traceparent"])
        for traceparent in trace_ids[1:]:
            assert jaeger_trace(backend, traceparent.split("-")[1])["spans"]
        stats = httpx.get(f"http://{pod}:15000/stats").json()["tracing"]["exporters"]["otel"]
        assert stats["spans_sent"] >= 5
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    stderr = (tmp_path / "proxy.log").read_bytes()
    assert b"the export process of otel exited" in stderr
    assert b"starting a new export process for otel" in stderr


def test_the_suite_runs_the_compiled_data_path(proxy) -> None:
    """`make test` builds it first; a failed or skipped build fails here instead of testing the other one."""
    assert meshtrace.mesh.proxy.NATIVE.compiled, meshtrace.mesh.proxy.NATIVE.detail
    modules = (export, headers, http1, listeners, records, spanwire, tracer)
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in modules) == sorted(COMPILED)
    functions = (export.Exporter.add, http1.Pool.acquire, listeners.InboundListener.handle, spanwire.span_name)
    assert not any(inspect.isfunction(f) for f in (*functions, records.encode_entry, headers.header_name))  # mypyc's
    assert httpx.get(f"http://{POD}:15000/stats").json()["compiled"] is True  # the proxy process, too
