"""The parsers of untrusted input under mutation: only their own error ever comes out (a short run here;
`scripts/fuzz.py` runs a million cases per parser), and every input a fuzz run ever kept stays handled."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshtrace.testing.fuzz import TARGETS, kept, run

CRASHERS = Path(__file__).parent / "crashers"


@pytest.mark.parametrize("target", list(TARGETS))
def test_mutated_inputs_raise_only_the_parsers_error(target: str) -> None:
    result = run(target, 300 if target == "otlp_json" else 3000, seed=7)
    assert result.findings == []


@pytest.mark.parametrize(("target", "path"), list(kept(CRASHERS)), ids=lambda v: getattr(v, "name", v))
def test_kept_crashers_are_handled(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def test_the_kept_corpus_is_not_empty() -> None:
    assert len(list(kept(CRASHERS))) >= 2
