"""Whole small training runs (a narrow scratch VGG16, and EfficientNet-Lite0 with its packaged
weights on small images): the bundles they write load in the daemon, and ``evaluate`` prints
the contract's JSON for them."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from osteoflag.errors import TrainingError
from osteoflag.inference.bundle import load_bundle, write_manifest
from osteoflag.inference.pixels import load_display
from osteoflag.inference.predictor import Predictor
from osteoflag.training.__main__ import main as training_main
from osteoflag.training.add_localiser import LOCALISER_HEADING
from osteoflag.training.backbones import KERAS_BGR_MEAN, FeatureLayout, Init
from osteoflag.training.classifier import BoosterConfig
from osteoflag.training.commands import add_evaluate_arguments, run_evaluate
from osteoflag.training.compare import BASELINE_LAYOUT
from osteoflag.training.finetune import FinetuneConfig
from osteoflag.training.networks import Architecture
from osteoflag.training.pipeline import run
from osteoflag.training.prepared import Sources, TrainOptions
from tests.helpers.contract import EVALUATE_KEYS
from tests.helpers.training_data import write_images
from tests.helpers.trees import split_columns

TAGS = ("frozen", "finetuned")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    write_images(root / "primary", ("train", "val", "test"), 16, seed=0)
    write_images(root / "other", (None,), 12, seed=1)
    return root


def _train(root: Path, architecture: Architecture) -> tuple[Path, Path, dict[str, object]]:
    vgg = architecture is Architecture.VGG16
    options = TrainOptions(
        data=root / "primary",
        other=root / "other",
        out=root / f"bundle-{architecture.value}",
        work=root / f"work-{architecture.value}",
        architecture=architecture,
        init=Init.SCRATCH if vgg else Init.IMAGENET,
        size=32,
        width_divisor=16 if vgg else 1,
        layout=FeatureLayout.B345 if vgg else FeatureLayout.B5,
        folds=3,
        finetune=FinetuneConfig(epochs=1, batch_size=8),
        booster=BoosterConfig(min_data_in_leaf=3, max_rounds=30, early_stopping=10),
        compare_layouts=not vgg,
        int8=not vgg,
        notes=("built by the test suite",),
    )
    return root, options.out, run(options)


@pytest.fixture(scope="module", params=list(Architecture))
def trained(data: Path, request: pytest.FixtureRequest) -> tuple[Path, Path, dict[str, object]]:
    return _train(data, request.param)


def test_bundle_loads_and_predicts_like_training(
    trained: tuple[Path, Path, dict[str, object]],
) -> None:
    root, bundle_dir, results = trained
    bundle = load_bundle(bundle_dir)
    assert "- built by the test suite" in (bundle_dir / "MODEL_CARD.md").read_text()
    vgg = bundle.manifest.backbone.architecture == "vgg16"
    assert bundle.manifest.input.colour_order == ("BGR" if vgg else "RGB")
    predictor = Predictor(bundle, threads=1)
    assert predictor.localises  # the export adds the spatial map output, checked on load
    image = next((root / "primary" / "test" / "fracture").iterdir())
    [prediction] = predictor.predict([load_display(image)])
    assert 0.0 <= prediction.probability <= 1.0
    assert results["parity"]["torch_vs_onnxruntime"] <= 1e-4  # type: ignore[index]
    assert {"published", "cv", "cross"} <= set(results)
    # served probabilities are calibrated on validation groups; the card reports how well
    assert bundle.manifest.calibration is not None
    assert bundle.manifest.calibration.method == "platt"
    assert 0.0 <= results["cv"]["calibration"]["ece"] <= 1.0  # type: ignore[index]
    card = (bundle_dir / "MODEL_CARD.md").read_text()
    assert "## Calibration" in card and (bundle_dir / "reliability.png").is_file()
    # the test helper's stems are per split: no test file repeats a training radiograph
    assert "**Caveat:** 0 of the 32 test files share their source radiograph" in card
    if not vgg:  # INT8 scored beside float32 on the same held-out images
        published_int8 = results["published"]["int8"]  # type: ignore[index]
        assert published_int8["n"] == 32
        drop = published_int8["float32"]["auc"] - published_int8["int8"]["auc"]
        assert published_int8["auc_drop"] == pytest.approx(drop)
        assert published_int8["within_rule"] is (drop <= published_int8["max_auc_drop"])
        # the float32 side is the bundle's own test score: same images, booster, threshold
        test = results["published"]["test"]  # type: ignore[index]
        assert published_int8["float32"]["auc"] == test["auc"]
        assert published_int8["float32"]["accuracy"] == test["accuracy"]
        assert published_int8["calibration_images"] == 32  # all 32 train images
        assert "## INT8 beside float32" in (bundle_dir / "MODEL_CARD.md").read_text()
        # each fold's INT8 row sits on that fold's own float32 score; the summary averages them
        cv = results["cv"]  # type: ignore[index]
        folds = cv["folds"]
        assert len(folds) == 3
        for fold in folds:
            assert fold["int8"]["float32"]["auc"] == fold["auc"]
        for precision in ("float32", "int8"):
            mean = np.mean([fold["int8"][precision]["auc"] for fold in folds])
            assert cv["int8"][precision]["auc_mean"] == pytest.approx(mean)
        assert cv["int8"]["max_auc_drop"] == max(fold["int8"]["auc_drop"] for fold in folds)
        # the model card's comparisons: every layout frozen and fine-tuned, both backbones'
        # frozen baselines; rows that repeat a fit elsewhere in the run reproduce its figures
        layouts = results["layouts"]  # type: ignore[index]
        assert set(layouts) == {f"{lay.value}_{tag}" for lay in FeatureLayout for tag in TAGS}
        assert layouts["b5_finetuned"]["test"]["auc"] == test["auc"]
        baselines = results["baselines"]  # type: ignore[index]
        own_name = f"{bundle.manifest.backbone.architecture}_b5_frozen"
        others = {
            f"{other.value}_{layout.value}_frozen"
            for other, layout in BASELINE_LAYOUT.items()
            if other.value != bundle.manifest.backbone.architecture
        }
        assert set(baselines) == {own_name, *others}
        own = baselines[own_name]["published_test"]
        assert own == layouts["b5_frozen"]["test"]


def test_evaluate_prints_the_contract_json(
    trained: tuple[Path, Path, dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, bundle_dir, _ = trained
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = parser.parse_args(
        ["--bundle", str(bundle_dir), "--data", str(root / "primary" / "test"), "--json"]
    )
    assert run_evaluate(args, settings=None) == 0  # type: ignore[arg-type]
    document = json.loads(capsys.readouterr().out.strip())
    assert list(document) == list(EVALUATE_KEYS)
    assert document["n"] == 32
    (tn, fp), (fn, tp) = document["confusion"]
    assert tn + fp + fn + tp == 32
    assert 0.0 <= document["auc"] <= 1.0


def test_efficientnet_refuses_hed_weights(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", str(data / "primary"), "--out", str(data / "never")]
    status = training_main([*argv, "--backbone", "efficientnet_lite0", "--init", "hed"])
    assert status == 1
    assert "--init imagenet or scratch" in capsys.readouterr().err
    assert not (data / "never").exists()


def test_vgg16_imagenet_bundle_serves_keras_caffe_input(data: Path) -> None:
    options = TrainOptions(
        data=data / "primary",
        out=data / "bundle-vgg16-imagenet",
        work=data / "work-vgg16-imagenet",
        architecture=Architecture.VGG16,
        init=Init.IMAGENET,
        size=32,
        layout=FeatureLayout.B345,
        protocols=("published", "cv"),
        folds=3,
        finetune=FinetuneConfig(epochs=0),  # frozen: every fit shares the untuned head's output
        booster=BoosterConfig(min_data_in_leaf=3, max_rounds=30, early_stopping=10),
        compare_layouts=False,
    )
    results = run(options)
    bundle = load_bundle(options.out)
    spec = bundle.manifest.input
    assert (spec.colour_order, spec.mean, spec.std) == ("BGR", KERAS_BGR_MEAN, (1.0, 1.0, 1.0))
    assert (bundle.manifest.backbone.architecture, bundle.manifest.backbone.init) == (
        "vgg16",
        "imagenet",
    )
    image = next((data / "primary" / "test" / "fracture").iterdir())
    [prediction] = Predictor(bundle, threads=1).predict([load_display(image)])
    assert 0.0 <= prediction.probability <= 1.0
    assert results["parity"]["bundle_vs_training_graphs"] <= 1e-4  # type: ignore[index]
    assert len(results["cv"]["folds"]) == 3  # type: ignore[index]


def _narrow_vgg16(data: Path, name: str, **changes: Any) -> TrainOptions:
    """A scratch VGG16 at 1/16 width on 32 px images, fine-tuned for one epoch: a whole run in
    seconds; ``changes`` set what a test varies."""
    options = TrainOptions(
        data=data / "primary",
        out=data / f"bundle-{name}",
        work=data / f"work-{name}",
        architecture=Architecture.VGG16,
        init=Init.SCRATCH,
        size=32,
        width_divisor=16,
        layout=FeatureLayout.B345,
        folds=3,
        finetune=FinetuneConfig(epochs=1, batch_size=8),
        booster=BoosterConfig(min_data_in_leaf=3, max_rounds=30, early_stopping=10),
    )
    return replace(options, **changes)


def test_training_on_both_sources_with_copies_keeps_the_other_source_figures_honest(
    data: Path,
) -> None:
    options = _narrow_vgg16(
        data,
        "both",
        other=data / "other",
        compare_layouts=False,
        train_on=Sources.BOTH,
        copies=1,
    )
    results = run(options)
    bundle = load_bundle(options.out)
    assert "85% of the other source's groups" in bundle.manifest.training_data["bundle_fitted_on"]
    # 24 other-source files in 12 groups: ~85% of them join the bundle's fit, the rest validate
    assert results["published"]["validation"]["n"] > 32  # type: ignore[index]
    # the other source is scored by a fit that never saw it
    assert results["published"]["other_source"]["files"]["n"] == 24  # type: ignore[index]
    assert results["run"]["train_on"] == "both"  # type: ignore[index]
    assert results["run"]["copies"] == 1  # type: ignore[index]
    assert "plus 85% of the multiregion groups" in (options.out / "MODEL_CARD.md").read_text()


def test_card_is_rerendered_from_the_run_results(
    trained: tuple[Path, Path, dict[str, object]], tmp_path: Path
) -> None:
    root, bundle_dir, results = trained
    work = root / f"work-{bundle_dir.name.removeprefix('bundle-')}"
    recipes = tmp_path / "recipes.json"
    row = {"recipe": {"name": "base"}, "osteoai_to_multiregion": 0.6, "cv_osteoai": 0.7}
    recipes.write_text(json.dumps([row]))
    backbone = (bundle_dir / "backbone.onnx").read_bytes()
    # add-localiser's section of the card holds figures the run's results do not: it stays.
    fields = load_bundle(bundle_dir).manifest.model_dump(exclude={"files", "format_version"})
    card_file = bundle_dir / "MODEL_CARD.md"
    card_file.write_text(card_file.read_text() + LOCALISER_HEADING + "\nhit 0.5 [0.4, 0.6]\n")
    write_manifest(bundle_dir, **fields)
    argv = ["card", "--bundle", str(bundle_dir), "--results", str(work / "results.json")]
    assert training_main([*argv, "--note", "re-rendered", "--recipes", str(recipes)]) == 0
    card = card_file.read_text()
    assert "- re-rendered" in card and "| base | 0.600 |" in card
    assert card.endswith(LOCALISER_HEADING + "\nhit 0.5 [0.4, 0.6]\n")
    assert card.count("## Localiser") == 1 and "## Data hygiene" in card
    assert load_bundle(bundle_dir).manifest.name == results["run"]["name"]  # type: ignore[index]
    assert (bundle_dir / "backbone.onnx").read_bytes() == backbone
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"run": {"name": "someone-else", "version": "9"}}))
    argv = ["card", "--bundle", str(bundle_dir), "--results", str(other)]
    assert training_main(argv) == 1


def _evaluated(bundle: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """What ``evaluate --json`` prints for ``bundle`` on the primary test split."""
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    test = str(data / "primary" / "test")
    args = parser.parse_args(["--bundle", str(bundle), "--data", test, "--json"])
    assert run_evaluate(args, settings=None) == 0  # type: ignore[arg-type]
    return json.loads(capsys.readouterr().out.strip())


def test_two_view_bundle_averages_a_booster_per_view_and_maps_the_full_size_view(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    booster = BoosterConfig(min_data_in_leaf=3, max_rounds=30, early_stopping=10, linear=True)
    options = _narrow_vgg16(
        data, "two-view", small_view=16, protocols=("published", "cv"), booster=booster
    )
    results = run(options)
    assert "layouts" not in results  # one view's layout comparison: skipped for two
    bundle = load_bundle(options.out)
    # narrow VGG16: conv3_3, conv4_3, conv5_3 of the 16 px view (16+32+32 channels), then
    # conv5_3 of the 32 px image (32 channels), each average + max pooled
    small, full = 2 * (16 + 32 + 32), 2 * 32
    assert bundle.manifest.features.count == small + full
    assert bundle.manifest.features.views == (0, small)
    assert f"view_starts=(0, {small})" in results["run"]["booster"]  # type: ignore[index]
    assert "resized to 16 px inside the graph" in bundle.manifest.features.layout
    booster = lgb.Booster(model_file=str(bundle.classifier_path))
    trees = [t for t in split_columns(booster) if t]
    assert all(max(t) < small or min(t) >= small for t in trees)  # one view per tree
    predictor = Predictor(bundle, threads=1)
    assert predictor.localises
    image = next((data / "primary" / "test" / "fracture").iterdir())
    [prediction] = predictor.predict([load_display(image)])
    assert 0.0 <= prediction.probability <= 1.0
    assert results["parity"]["bundle_vs_training_graphs"] <= 1e-4  # type: ignore[index]
    assert len(results["cv"]["folds"]) == 3  # type: ignore[index]
    # the linear term (one probe per view) ships beside the booster; served as trained
    assert bundle.manifest.classifier.linear == "linear.json"
    assert "linear=True" in results["run"]["booster"]  # type: ignore[index]
    assert "averaged with those of a logistic probe" in (options.out / "MODEL_CARD.md").read_text()
    served = _evaluated(options.out, data, capsys)
    trained = results["published"]["test"]  # type: ignore[index]
    assert served["auc"] == pytest.approx(trained["auc"], abs=1e-9)
    assert served["confusion"] == trained["confusion"]
    with pytest.raises(TrainingError, match="--small-view 16 needs --layout b345"):
        run(replace(options, layout=FeatureLayout.B5, out=data / "never"))


def test_a_cell_probe_bundle_serves_what_training_scored(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    booster = BoosterConfig(min_data_in_leaf=3, max_rounds=30, early_stopping=10, linear=True)
    options = _narrow_vgg16(
        data,
        "cells",
        protocols=("published",),
        booster=booster,
        cells=True,
        finetune=FinetuneConfig(epochs=0),
    )
    results = run(options)
    bundle = load_bundle(options.out)
    assert bundle.manifest.classifier.cells == "cells.json"
    assert bundle.manifest.classifier.linear == "linear.json"
    cells = json.loads((options.out / "cells.json").read_text())
    assert cells["kind"] == "cell-topk-logistic"
    assert cells["top"] == 4  # the narrow network's 2 x 2 map at 32 px: every cell
    assert len(cells["coef"]) == 32  # conv5_3's channels at 1/16 width
    parity = results["parity"]
    assert parity["bundle_maps_vs_training_maps"] <= 1e-3  # type: ignore[index]
    assert "a cell probe on the backbone's last map" in (options.out / "MODEL_CARD.md").read_text()
    served = _evaluated(options.out, data, capsys)
    trained = results["published"]["test"]  # type: ignore[index]
    # training keeps the maps in float16; served from float32, the AUC stays the trained one
    assert served["auc"] == pytest.approx(trained["auc"], abs=1e-3)
    assert served["confusion"] == trained["confusion"]
