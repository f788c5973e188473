"""The rule that never lets a stale build of the proxy's compiled data path shadow an edited source (the
proxy tests check that the suite runs the compiled one)."""

from __future__ import annotations

import sys
from pathlib import Path

from meshtrace.mesh.proxy.native import DIRECTORY, INTERPRETED, STAMP, activate, source_stamp


def _package(tmp_path: Path) -> Path:
    package = tmp_path / "pkg"
    (package / DIRECTORY).mkdir(parents=True)
    (package / "http1.py").write_text("VALUE = 1\n")
    (package / DIRECTORY / STAMP).write_text(source_stamp(package) + "\n")
    return package


def test_a_build_of_these_sources_goes_first_on_the_import_path(tmp_path: Path) -> None:
    package = _package(tmp_path)
    path = [str(package)]
    status = activate(path)
    assert status.compiled
    assert path == [str(package / DIRECTORY), str(package)]


def test_a_build_of_other_sources_is_ignored(tmp_path: Path) -> None:
    package = _package(tmp_path)
    (package / "http1.py").write_text("VALUE = 2\n")  # edited after the build
    path = [str(package)]
    status = activate(path)
    assert not status.compiled
    assert "other sources" in status.detail
    assert path == [str(package)]


def test_a_new_source_file_also_makes_the_build_stale(tmp_path: Path) -> None:
    package = _package(tmp_path)
    (package / "routing.py").write_text("")
    assert not activate([str(package)]).compiled


def test_no_build_runs_interpreted(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    path = [str(package)]
    status = activate(path)
    assert (status.compiled, path) == (False, [str(package)])
    assert "not compiled" in status.detail
    assert sys.implementation.cache_tag  # the stamp's ABI part is defined on this interpreter


def test_the_environment_can_ask_for_the_interpreted_data_path(tmp_path: Path, monkeypatch) -> None:
    package = _package(tmp_path)
    monkeypatch.setenv(INTERPRETED, "1")
    path = [str(package)]
    status = activate(path)
    assert (status.compiled, path) == (False, [str(package)])
    assert INTERPRETED in status.detail
