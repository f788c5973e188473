"""Span data as meshtrace reads and writes it: OTLP protobuf in, the read model out."""
