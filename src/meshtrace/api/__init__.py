"""The HTTP query API: Jaeger-compatible routes, meshtrace's native routes, health and metrics."""
