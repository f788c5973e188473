"""Bad input gets a clear error and loses nothing else; tenants never see each other's traces."""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Iterator

import grpc
import httpx
import orjson
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from meshtrace.testing.bookinfo import bookinfo_trace, export_request

from .conftest import TOKENS, ServerProcess, jaeger_trace, stored, token_args, wait_until

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("bad-input"), *token_args(), "--flush-interval", "50ms", "--max-body", "1MiB"
    ).start()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc) as ch:
        yield ch


def good_request(seed: int) -> tuple[ExportTraceServiceRequest, str]:
    trace = bookinfo_trace(random.Random(seed), time.time_ns() - 10**9, reviews_version="v2")
    return export_request([trace]), trace.hex_id


def export_grpc(channel: grpc.Channel, body: bytes, token: str | None = TOKENS["acme"], **kw: object) -> bytes:
    call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
    metadata = (("authentication", token),) if token else ()
    return call(body, metadata=metadata, timeout=30, **kw)


def post(
    server: ServerProcess,
    body: bytes,
    media: str = "application/x-protobuf",
    token: str | None = TOKENS["acme"],
    **headers: str,
) -> httpx.Response:
    all_headers = {"Content-Type": media, **headers}
    if token:
        all_headers["Authentication"] = token
    return httpx.post(f"{server.otlp_http}/v1/traces", content=body, headers=all_headers, timeout=30)


def grpc_error(fn: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        fn()  # type: ignore[operator]
    return caught.value


def test_malformed_protobuf(server: ServerProcess, channel: grpc.Channel) -> None:
    err = grpc_error(lambda: export_grpc(channel, b"\x0a\xff\xff\xff\x0fjunk"))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid OTLP ExportTraceServiceRequest" in err.details()
    response = post(server, b"\x0a\xff\xff\xff\x0fjunk")
    assert response.status_code == 400
    status = status_pb2.Status.FromString(response.content)
    assert status.code == 3
    assert "not a valid OTLP" in status.message


def test_malformed_json(server: ServerProcess) -> None:
    response = post(server, b'{"resourceSpans": [{"scopeSpans": 7}]}', media="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == 3
    assert "OTLP/JSON" in response.json()["message"]
    assert post(server, b"{oops", media="application/json").status_code == 400


def test_unsupported_media_and_encoding(server: ServerProcess) -> None:
    assert post(server, b"x", media="text/plain").status_code == 415
    assert post(server, b"x", **{"Content-Encoding": "br"}).status_code == 415


def test_oversize_and_gzip_bomb(server: ServerProcess, channel: grpc.Channel) -> None:
    big = b"\0" * (2 << 20)
    assert post(server, big).status_code == 413
    bomb = gzip.compress(b"\0" * (256 << 20))
    response = post(server, bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "inflates to more than" in status_pb2.Status.FromString(response.content).message
    err = grpc_error(lambda: export_grpc(channel, big))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # gzip on the wire: the limit applies to the decompressed message
    err = grpc_error(lambda: export_grpc(channel, big, compression=grpc.Compression.Gzip))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bad_ids_are_rejected_span_by_span(server: ServerProcess, channel: grpc.Channel) -> None:
    for transport in ("grpc", "http"):
        request, trace_id = good_request(21 if transport == "grpc" else 22)
        spans = request.resource_spans[0].scope_spans[0].spans
        spans[0].trace_id = b"\x01" * 8  # too short
        spans[1].span_id = bytes(8)  # all zero
        if transport == "grpc":
            response = ExportTraceServiceResponse.FromString(export_grpc(channel, request.SerializeToString()))
        else:
            http_response = post(server, request.SerializeToString())
            assert http_response.status_code == 200
            response = ExportTraceServiceResponse.FromString(http_response.content)
        assert response.partial_success.rejected_spans == 2
        assert "trace_id must be 16 bytes" in response.partial_success.error_message
        assert "span_id must be 8 bytes" in response.partial_success.error_message
        trace = jaeger_trace(server, trace_id, spans=7)
        assert len(trace["spans"]) == 7  # the 9-span trace minus the two refused spans


def test_partial_success_in_json(server: ServerProcess) -> None:
    now = time.time_ns()
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "ab" * 16,
                                "spanId": "cd" * 8,
                                "name": "ok",
                                "startTimeUnixNano": str(now - 2000),
                                "endTimeUnixNano": str(now - 1000),
                            },
                            {
                                "traceId": "ab" * 16,
                                "spanId": "ce" * 8,
                                "name": "backwards",
                                "startTimeUnixNano": str(now - 1000),
                                "endTimeUnixNano": str(now - 2000),
                            },
                            {
                                "traceId": "ab" * 16,
                                "spanId": "cf" * 8,
                                "name": "1970",
                                "startTimeUnixNano": "10",
                                "endTimeUnixNano": "20",
                            },
                        ]
                    }
                ]
            }
        ]
    }
    response = post(server, orjson.dumps(doc), media="application/json")
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "end_time_unix_nano is before start_time_unix_nano" in partial["errorMessage"]
    assert "older than the retention period" in partial["errorMessage"]


def test_missing_or_wrong_token_stores_nothing(server: ServerProcess, channel: grpc.Channel) -> None:
    before = stored(server)
    request, trace_id = good_request(31)
    body = request.SerializeToString()
    for token in (None, "not-a-token"):
        err = grpc_error(lambda token=token: export_grpc(channel, body, token=token))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        response = post(server, body, token=token)
        assert response.status_code == 401
        zipkin = httpx.post(
            f"{server.otlp_http}/api/v2/spans", content=b"[]", headers={"Authentication": token} if token else {}
        )
        assert zipkin.status_code == 401
    export_grpc(channel, good_request(32)[0].SerializeToString())  # a flush happens after this one
    wait_until(lambda: stored(server)[1] == before[1] + 1)
    assert server.api().get(f"/api/traces/{trace_id}").status_code == 404


def test_tenants_cannot_read_each_others_traces(server: ServerProcess, channel: grpc.Channel) -> None:
    request, trace_id = good_request(41)
    export_grpc(channel, request.SerializeToString(), token=TOKENS["beta"])
    jaeger_trace(server, trace_id, token=TOKENS["beta"], spans=9)
    acme = server.api(TOKENS["acme"])
    assert acme.get(f"/api/traces/{trace_id}").status_code == 404
    assert acme.get(f"/meshtrace/v1/traces/{trace_id}").status_code == 404
    found = acme.get("/api/traces", params={"service": "reviews.default", "limit": 1000}).json()["data"]
    assert trace_id not in {t["traceID"] for t in found}
    assert stored(server, TOKENS["beta"]) == (9, 1, 9)


def test_query_api_needs_a_token(server: ServerProcess) -> None:
    for path in ("/api/services", "/api/traces?service=x", "/meshtrace/v1/services", "/meshtrace/v1/stats"):
        for token in (None, "wrong"):
            response = server.api(token).get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
    assert server.api(None).get("/healthz").status_code == 200
    assert server.api(None).get("/readyz").json() == {"ready": True, "problems": []}


def test_openapi_documents_both_apis(server: ServerProcess) -> None:
    spec = server.api(None).get("/openapi.json").json()
    for path in ("/api/traces", "/api/traces/{trace_id}", "/api/dependencies", "/meshtrace/v1/traces", "/readyz"):
        assert path in spec["paths"], path
    assert server.api(None).get("/docs").status_code == 200


def test_unknown_routes_and_methods(server: ServerProcess) -> None:
    assert httpx.get(f"{server.otlp_http}/v1/traces").status_code == 405
    assert httpx.post(f"{server.otlp_http}/v1/metrics", content=b"").status_code == 404
    assert server.api().get("/api/traces/not-hex").status_code == 400


def test_nothing_valid_was_lost(server: ServerProcess) -> None:
    """After all the bad input above, exactly the valid spans are stored."""
    metrics = server.api(None).get("/metrics").text
    assert 'meshtrace_spans_rejected_total{reason="invalid_trace_id",tenant="acme"} 2.0' in metrics
    assert 'meshtrace_spans_rejected_total{reason="end_before_start",tenant="acme"} 1.0' in metrics
    assert 'meshtrace_spans_rejected_total{reason="too_old",tenant="acme"} 1.0' in metrics
    assert 'meshtrace_export_requests_total{outcome="unauthenticated",transport="grpc"} 2.0' in metrics
    assert 'meshtrace_export_requests_total{outcome="malformed",transport="grpc"} 1.0' in metrics
    assert stored(server) == (7 + 7 + 1 + 9, 4, 7 + 7 + 1 + 9)


def test_retry_info_is_well_formed() -> None:
    from meshtrace.ingest.grpc_server import _status_details

    ((key, value),) = _status_details(14, "busy", 3)
    status = status_pb2.Status.FromString(value)
    info = error_details_pb2.RetryInfo()
    assert key == "grpc-status-details-bin"
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds == 3
