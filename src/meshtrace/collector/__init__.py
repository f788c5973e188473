"""``meshtrace collector``: runs OpenTelemetry Collector configurations (receivers → processors → exporters)."""
