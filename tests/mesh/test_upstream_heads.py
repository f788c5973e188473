"""What the proxy passes on of an upstream's response head. A raw upstream sends crafted heads (names in any
case, hop-by-hop headers and names that only look like them, informational responses or empty lines first,
the bytes cut into separate writes); the client checks what reached it through the sidecar's outbound listener."""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.mesh.test_proxy import run_proxy, write

BLOCK = 30 + 2 * random.randrange(0, 40)
POD = f"127.{BLOCK}.0.2"
RAW = f"127.{BLOCK + 1}.0.5"
HOST = "raw.default.svc.cluster.local"
# Dropped from a response by the proxy, which writes its own framing and upstream time.
DROPPED = (
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
    "proxy-authorization",
    "x-envoy-upstream-service-time",
)
LOOKALIKES = ("x-connection", "connections", "keep-alive-x", "tee", "t", "upgraded", "trailers", "content-lengths")

_replies: dict[str, list[bytes]] = {}
_keys = iter(range(10**9))


class RawUpstream:
    """Answers ``GET /<key>`` with the segments registered for ``key``, each in a write of its own."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 9080))
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                key = head.split(b" ", 2)[1].decode().lstrip("/")
                segments = _replies.pop(key)
                try:
                    for segment in segments:
                        conn.sendall(segment)
                        time.sleep(0.002)
                except OSError:  # the proxy gave up on this response and closed the connection
                    return
                if b"\r\nconnection: close\r\n" in b"".join(segments).lower():
                    return

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    upstream = RawUpstream(RAW)
    path = tmp_path_factory.mktemp("heads") / "proxy.json"
    cluster = f"outbound|9080||{HOST}"
    node = {
        "id": f"sidecar~{POD}~raw-1.default~default.svc.cluster.local",
        "kind": "sidecar",
        "pod": "raw-1",
        "namespace": "default",
        "pod_ip": POD,
        "service_cluster": "raw.default",
        "canonical_service": "raw",
        "canonical_revision": "v1",
    }
    config = {"version": 1, "node": node, "inbound": [], "client": None, "server": None}  # tracing off
    config["clusters"] = [{"name": cluster, "service": HOST, "port": 9080, "endpoints": [f"{RAW}:9080"]}]
    config["hosts"] = {"raw:9080": [cluster, f"{HOST}:9080/*"]}
    write(path, config)
    proc = run_proxy(path, POD, None, None)
    assert proc.poll() is None
    yield
    proc.terminate()
    assert proc.wait(20) == 0
    upstream.close()


def fetch(segments: list[bytes]) -> httpx.Response:
    key = str(next(_keys))
    _replies[key] = segments
    with httpx.Client(proxy=f"http://{POD}:15001", trust_env=False, timeout=10) as client:
        return client.get(f"http://raw:9080/{key}")


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def any_case(name: str) -> Any:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )


names = st.one_of(
    st.sampled_from(DROPPED).flatmap(any_case),
    st.sampled_from(LOOKALIKES).flatmap(any_case),
    st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,20}", fullmatch=True).filter(
        lambda n: n.lower() not in (*DROPPED, "content-length", "transfer-encoding")
    ),
)
values = st.tuples(
    st.sampled_from(["", " ", "  ", "\t"]),
    st.from_regex(r"([!-~]([ -~]{0,30}[!-~])?)?", fullmatch=True),
    st.sampled_from(["", " ", "\t "]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 201, 404, 418, 500, 503]),
    headers=st.lists(st.tuples(names, values), max_size=8),
    body=st.binary(max_size=3000),
    chunked=st.booleans(),
    framing_case=st.sampled_from([str.lower, str.title, str.upper]),
    first=st.sampled_from(
        [b"", b"\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"]
    ),
    points=st.lists(st.integers(1, 10**6), max_size=5),
)
@example(status=200, headers=[], body=b"", chunked=False, framing_case=str.lower, first=b"", points=[])
@example(  # every line of the head a write of its own
    status=200,
    headers=[("Connection", ("", "keep-alive", "")), ("Server", (" ", "raw", " "))],
    body=b"ok",
    chunked=True,
    framing_case=str.title,
    first=b"HTTP/1.1 100 Continue\r\n\r\n",
    points=[26, 45, 60, 74, 90],
)
def test_the_client_gets_the_upstreams_head_without_its_hop_by_hop_headers(
    proxy, status, headers, body, chunked, framing_case, first, points
):
    lines = [f"{name}:{before}{value}{after}" for name, (before, value, after) in headers]
    if chunked:
        lines.append(framing_case("transfer-encoding") + ": chunked")
        parts = [body[i : i + 700] for i in range(0, len(body), 700)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"
    else:
        lines.append(framing_case("content-length") + f": {len(body)}")
        payload = body
    head = f"HTTP/1.1 {status} Whatever\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    response = fetch(cut(first + head.encode() + payload, points))

    assert response.status_code == status
    assert response.content == body
    kept = [(n.lower(), v) for n, (_, v, _) in headers if n.lower() not in DROPPED]
    framing = [("transfer-encoding", "chunked")] if chunked else [("content-length", str(len(body)))]
    seen = [(n.lower(), v) for n, v in response.headers.multi_items()]
    assert seen[:-1] == kept + framing
    assert seen[-1][0] == "x-envoy-upstream-service-time"
    assert seen[-1][1].isdigit()


def test_a_head_too_large_is_a_502_and_the_proxy_goes_on(proxy):
    """Envoy refuses response heads over its limit (60 KiB) as a protocol error; so does the proxy, instead
    of holding whatever an upstream sends until the head ends."""
    huge = b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-filler-%d: %s\r\n" % (n, b"v" * 100) for n in range(1000))
    refused = fetch([huge[i : i + 16384] for i in range(0, len(huge), 16384)] + [b"content-length: 0\r\n\r\n"])
    assert (refused.status_code, refused.text) == (502, "upstream sent a malformed response")
    assert fetch([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).text == "ok"


def test_a_malformed_head_is_a_502(proxy):
    for head in (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", b"HTTP/1.1 200 OK\nx: y\n\n"):
        response = fetch([head])
        assert (response.status_code, response.text) == (502, "upstream sent a malformed response")
