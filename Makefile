# Two commands: `make run` and `make test`. Both create .venv on first use.
# The interpreter .venv is made with: PYTHON=... names one; otherwise the fastest usable CPython found here
# (scripts/pick_python.py; an optimised build runs the proxies with ~10% less CPU per request than a default one).
PYTHON ?=
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Debian packages the console tests and some benchmarks need, installed when missing (root or sudo).
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)
APT    := $(SUDO) apt-get install -y --no-install-recommends
# The console's browser tests drive Debian's chromium (Playwright's own browsers are not downloaded).
CHROMIUM := /usr/bin/chromium

# The proxy's data path compiled with mypyc (C compiler needed); rebuilt when a source of the proxy changes.
PROXY  := src/meshtrace/mesh/proxy
NATIVE := $(PROXY)/_native/STAMP

.PHONY: run test lint native bench screenshots fuzz clean

$(STAMP): pyproject.toml
	@test -d $(VENV) || { py="$(PYTHON)"; test -n "$$py" || py=$$(python3 scripts/pick_python.py) || py=python3; \
		"$$py" -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(NATIVE): $(STAMP) $(wildcard $(PROXY)/*.py)
	$(BIN)/python -m meshtrace.mesh.proxy.nativebuild

native: $(NATIVE)

# Without a C compiler the mesh still runs, its proxies interpreted (slower).
run: $(STAMP)
	@$(MAKE) --no-print-directory native || echo "meshtrace: running the proxies interpreted"
	$(BIN)/meshtrace up

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy src

$(CHROMIUM):
	$(APT) chromium || ($(SUDO) apt-get update -qq && $(APT) chromium)

test: lint $(CHROMIUM) $(NATIVE)
	$(BIN)/python -m pytest

# Screenshots of every console page for the README (docs/screenshots/), taken by the test tooling.
screenshots: $(STAMP) $(CHROMIUM)
	$(BIN)/python scripts/screenshots.py

# A million inputs per parser of untrusted input (OTLP protobuf/JSON, Zipkin JSON, TraceQL): mutated, then
# coverage-guided (atheris, installed here only: it is a compiled fuzzer the test suite does not need).
fuzz: $(STAMP)
	$(BIN)/python -W error::FutureWarning scripts/fuzz.py --cases 1000000
	$(BIN)/pip install -q atheris==3.0.0
	$(BIN)/python -W error::FutureWarning scripts/fuzz_atheris.py --runs 1000000

bench: $(STAMP) $(CHROMIUM) $(NATIVE)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/query.py
	$(BIN)/python benchmarks/collector.py
	$(BIN)/python benchmarks/console.py
	@command -v wrk >/dev/null || $(APT) wrk nginx-light
	$(BIN)/python benchmarks/sidecar.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache meshtrace-data $(PROXY)/_native
