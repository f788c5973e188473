from __future__ import annotations

import os
from pathlib import Path

import pytest

SEED = Path(os.environ.get("MESHTRACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "seed" / "yaml"


@pytest.fixture(scope="session")
def seed() -> Path:
    if not SEED.is_dir():
        pytest.fail(f"the seed YAML is missing at {SEED} (set MESHTRACE_SHARED)")
    return SEED
