# osteoflag: `make serve` runs the daemon, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench

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
