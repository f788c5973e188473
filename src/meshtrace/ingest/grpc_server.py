"""OTLP/gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` on grpc.aio.

The handler takes the request as raw bytes (no deserializer): validation parses it once, and the
bytes go to the store as they are. Errors map to the codes the OTLP specification gives senders:
INVALID_ARGUMENT and UNAUTHENTICATED are permanent; UNAVAILABLE carries a RetryInfo delay.
"""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2

from meshtrace.errors import MalformedRequest, Overloaded, PayloadTooLarge, StoreError, Unauthenticated
from meshtrace.ingest.auth import TokenAuth
from meshtrace.ingest.service import IngestService, response_protobuf

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _status_details(code: int, message: str, retry_after: float | None) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=code, message=message)
    if retry_after is not None:
        info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=int(retry_after)))
        status.details.add().Pack(info)
    return (("grpc-status-details-bin", status.SerializeToString()),)


class TraceServiceHandler:
    def __init__(self, ingest: IngestService, auth: TokenAuth) -> None:
        self.ingest = ingest
        self.auth = auth

    async def export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            tenant = self.auth.tenant_for_metadata(context.invocation_metadata())
            result = await self.ingest.export_bytes(tenant, request, "grpc")
        except Unauthenticated as exc:
            self.ingest.count_failure("grpc", exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except MalformedRequest as exc:
            self.ingest.count_failure("grpc", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PayloadTooLarge as exc:
            self.ingest.count_failure("grpc", exc)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Overloaded as exc:
            self.ingest.count_failure("grpc", exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                str(exc),
                trailing_metadata=_status_details(code_pb2.UNAVAILABLE, str(exc), exc.retry_after),
            )
        except StoreError as exc:
            self.ingest.count_failure("grpc", exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the store failed: {exc}",
                trailing_metadata=_status_details(code_pb2.UNAVAILABLE, str(exc), 5),
            )
        return response_protobuf(result)


def create_server(handler: TraceServiceHandler, max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 4 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    method = grpc.unary_unary_rpc_method_handler(handler.export)  # raw bytes in and out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": method}),))
    return server
