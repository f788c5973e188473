"""meshtrace: trace an Istio service mesh with OpenTelemetry, from laptop to cluster."""

__version__ = "0.1.0"

__all__ = ["__version__"]
