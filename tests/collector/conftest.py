from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

SHARED = Path(os.environ.get("MESHTRACE_SHARED", Path(__file__).resolve().parents[3] / "shared"))
SEED = SHARED / "seed" / "yaml" / "otel.yaml"


def seed_collector_config(endpoint: str = "backend:4317", token: str = "tok-acme") -> str:
    """The collector config inside the seed's ConfigMap, unchanged but for its two placeholders."""
    docs = [d for d in yaml.safe_load_all(SEED.read_text()) if d]
    config_map = next(d for d in docs if d.get("kind") == "ConfigMap")
    text = config_map["data"]["opentelemetry-collector-config"]
    return text.replace("<gRPC-Endpoint>", endpoint).replace("<gRPC-Token>", token)


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "otel-collector.yaml"
    path.write_text(seed_collector_config())
    return path
