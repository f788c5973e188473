"""``scripts/pick_python.py``, which picks the interpreter ``make`` builds ``.venv`` with: only a CPython
3.11+ with venv, one with C headers first, the first found unless another is clearly faster."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pick_python.py"


@pytest.fixture(scope="module")
def pick() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pick_python", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pick_python"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _fake(directory: Path, name: str, **info: object) -> None:
    """An executable that answers the inspection as an interpreter with ``info`` would."""
    report = {"executable": f"/opt/{name}", "version": [3, 12, 1], "cpython": True, "venv": True}
    report |= {"headers": True, "seconds": 0.010} | info
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{json.dumps(report)}'\n")
    path.chmod(0o755)


def _run(pick: ModuleType, path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.setattr(pick, "PLACES", ())
    assert pick.main() == 0
    return str(capsys.readouterr().out.strip())


def test_the_first_is_kept_unless_another_is_more_than_ten_percent_faster(
    pick: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake(tmp_path, "python3", seconds=0.010)
    _fake(tmp_path, "python3.12", seconds=0.0095)
    assert _run(pick, tmp_path, monkeypatch, capsys) == "/opt/python3"
    _fake(tmp_path, "python3.12", seconds=0.0085)
    assert _run(pick, tmp_path, monkeypatch, capsys) == "/opt/python3.12"


def test_unusable_interpreters_are_never_chosen_however_fast(
    pick: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake(tmp_path, "python3", seconds=0.010)
    _fake(tmp_path, "python3.11", version=[3, 10, 13], seconds=0.001)
    _fake(tmp_path, "python3.12", venv=False, seconds=0.001)
    _fake(tmp_path, "python3.13", cpython=False, seconds=0.001)
    (tmp_path / "python3.14").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "python3.14").chmod(0o755)
    assert _run(pick, tmp_path, monkeypatch, capsys) == "/opt/python3"


def test_one_with_c_headers_comes_before_a_faster_one_without(
    pick: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake(tmp_path, "python3", headers=False, seconds=0.001)
    _fake(tmp_path, "python3.12", seconds=0.010)
    assert _run(pick, tmp_path, monkeypatch, capsys) == "/opt/python3.12"


def test_nothing_usable_is_an_error_that_says_how_to_choose(
    pick: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake(tmp_path, "python3", version=[3, 9, 18])
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pick, "PLACES", ())
    assert pick.main() == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "PYTHON=" in captured.err


def test_on_this_machine_it_names_a_real_interpreter_that_can_build_the_venv() -> None:
    """The real inspection, run by every interpreter found here (this one included)."""
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=True)
    chosen = done.stdout.strip()
    assert Path(chosen).is_file()
    assert done.stderr.startswith(f"meshtrace: .venv with {chosen} (")
    check = "import sys, venv, ensurepip; print(sys.version_info >= (3, 11))"
    assert subprocess.run([chosen, "-c", check], capture_output=True, text=True, check=True).stdout.strip() == "True"
