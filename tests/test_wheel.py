"""The package as the container image installs it (deploy/Dockerfile: ``pip wheel .``, then the wheel):
built from this tree and installed apart from it, it must run on its own files alone — the console's
pages and scripts, the built-in mesh scenario, the protobuf schemas the store decodes with."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from meshtrace.mesh.proxy.native import DIRECTORY
from meshtrace.testing.bookinfo import bookinfo_trace, export_request
from meshtrace.testing.server import ServerProcess
from tests.e2e.conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a Python that imports meshtrace from the installed wheel, not from src/."""
    work = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True,
    )
    (wheel,) = (work / "dist").glob("meshtrace-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(work / "site"), str(wheel)], check=True)
    return {**os.environ, "PYTHONPATH": str(work / "site")}


def _run(env: dict[str, str], *code: str) -> str:
    done = subprocess.run([sys.executable, *code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _files(top: Path) -> set[str]:
    """The package's files; not what this machine built beside them (bytecode, the proxy's native build)."""
    built = {"__pycache__", DIRECTORY}
    return {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file() and not built & set(p.parts)}


def test_it_imports_from_the_wheel_with_every_data_file(installed: dict[str, str]) -> None:
    module = _run(installed, "-c", "import meshtrace; print(meshtrace.__file__)").strip()
    assert module.endswith("/site/meshtrace/__init__.py"), module
    package = Path(module).parent
    source = ROOT / "src" / "meshtrace"
    assert _files(package) >= _files(source), sorted(_files(source) - _files(package))
    assert "CREATE TABLE" in _run(installed, "-m", "meshtrace", "schema", "sql")


def test_the_installed_backend_stores_spans_and_serves_the_console(installed: dict[str, str], tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "--token", "acme=tok-acme", "--flush-interval", "50ms", env=installed)
    server.start()
    try:
        trace = bookinfo_trace(random.Random(3), time.time_ns(), reviews_version="v2")
        response = httpx.post(
            f"{server.otlp_http}/v1/traces",
            content=export_request([trace]).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf", "Authentication": "tok-acme"},
        )
        assert response.status_code == 200, response.text
        api = server.api("tok-acme")
        wait_until(lambda: api.get("/meshtrace/v1/stats").json()["spans"] == len(trace.spans))
        page = api.get("/console/traces")
        assert page.status_code == 200
        assert "<html" in page.text.lower()
        assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text)
        assert assets
        for asset in assets:
            assert api.get(asset).status_code == 200, asset
    finally:
        assert server.stop() == 0
