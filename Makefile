# Two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Debian packages a benchmark needs, installed when missing (root or sudo).
APT    := $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y --no-install-recommends

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/meshtrace up

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy src

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/query.py
	$(BIN)/python benchmarks/collector.py
	@command -v wrk >/dev/null || $(APT) wrk nginx-light
	$(BIN)/python benchmarks/sidecar.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache meshtrace-data
