"""Receiving spans: OTLP/gRPC, OTLP/HTTP (protobuf and JSON) and Zipkin v2, with tokens and tenants."""
