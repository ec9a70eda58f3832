# osteoflag: `make serve` runs the daemon, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-runtime

serve: $(VENV)/.installed-runtime
	$(BIN)/osteoflag serve

lint: $(VENV)/.installed-test
	$(BIN)/ruff check osteoflag tests
	$(BIN)/ruff format --check osteoflag tests
	$(BIN)/mypy

test: $(VENV)/.installed-test lint
	scripts/install-debian-tools.sh
	$(BIN)/pytest -q

# Long crash-safety load run (1,000 instances, 6 SIGKILLs); uses models/default when present.
# OSTEOFLAG_SOAK_COUNT, OSTEOFLAG_SOAK_KILLS and OSTEOFLAG_SOAK_BUNDLE override it.
soak: $(VENV)/.installed-test
	scripts/install-debian-tools.sh
	$(BIN)/pytest -m soak -s -q tests/acceptance/test_load.py
