"""Istio's control-plane rules, as the local mesh applies them: MeshConfig, Telemetry, routing, naming."""
