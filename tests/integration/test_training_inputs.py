"""``train`` on odd but legal input: an ``--out`` that is not a bundle, one label only, a set
smaller than the parity check's batch. Each gives one clear line, or a bundle that loads."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from osteoflag.errors import BundleError, TrainingError
from osteoflag.inference.bundle import load_bundle
from osteoflag.training.__main__ import main as training_main
from osteoflag.training.backbones import FeatureLayout, Init
from osteoflag.training.classifier import BoosterConfig
from osteoflag.training.finetune import FinetuneConfig
from osteoflag.training.networks import Architecture
from osteoflag.training.pipeline import run
from osteoflag.training.prepared import TrainOptions
from tests.helpers.training_data import write_images


def _options(root: Path) -> TrainOptions:
    """A frozen, narrow scratch VGG16 on 32 px images, published split only: seconds."""
    return TrainOptions(
        data=root / "primary",
        out=root / "bundle",
        work=root / "work",
        architecture=Architecture.VGG16,
        init=Init.SCRATCH,
        size=32,
        width_divisor=16,
        layout=FeatureLayout.B345,
        finetune=FinetuneConfig(epochs=0, batch_size=8),
        booster=BoosterConfig(min_data_in_leaf=2, max_rounds=10, early_stopping=5),
        protocols=("published",),
        compare_layouts=False,
        threads=1,
    )


@pytest.mark.parametrize("out", ["data-parent", "data", "inside-data", "not-a-bundle"])
def test_an_out_that_is_not_a_bundle_is_refused_and_nothing_is_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    write_images(tmp_path / "primary", ("train", "val"), 2, seed=0)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    target = {
        "data-parent": tmp_path,
        "data": tmp_path / "primary",
        "inside-data": tmp_path / "primary" / "train" / "bundle",
        "not-a-bundle": tmp_path / "notes",
    }[out]
    before = sorted(tmp_path.rglob("*"))
    argv = ["train", "--data", str(tmp_path / "primary"), "--out", str(target)]
    assert training_main([*argv, "--work", str(tmp_path / "work")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


def test_a_split_with_one_label_is_refused_naming_it(tmp_path: Path) -> None:
    write_images(tmp_path / "primary", ("train", "val"), 4, seed=0)
    shutil.rmtree(tmp_path / "primary" / "val" / "nofracture")
    with pytest.raises(TrainingError, match="primary/val: no nofracture images"):
        run(_options(tmp_path))


def test_fewer_images_than_the_parity_batch_still_make_a_bundle(tmp_path: Path) -> None:
    write_images(tmp_path / "primary", ("train", "val"), 3, seed=0)  # 12 images, parity takes 16
    run(_options(tmp_path))
    load_bundle(tmp_path / "bundle")
    run(_options(tmp_path))  # a bundle at --out is replaced
    load_bundle(tmp_path / "bundle")


def test_a_failed_bundle_write_keeps_the_previous_bundle_and_leaves_nothing_beside_it(
    tmp_path: Path,
) -> None:
    write_images(tmp_path / "primary", ("train", "val"), 4, seed=0)
    out = tmp_path / "bundle"
    run(_options(tmp_path))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    bad = replace(_options(tmp_path), name="not a bundle name")  # refused by the manifest
    with pytest.raises(BundleError, match="invalid manifest, 'name'"):
        run(bad)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle", "primary", "work"]
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    load_bundle(out)
    run(replace(_options(tmp_path), version="2.0.1"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle", "primary", "work"]
    assert load_bundle(out).manifest.version == "2.0.1"


def test_a_hold_out_drawing_one_label_is_refused_naming_the_protocol(tmp_path: Path) -> None:
    write_images(tmp_path / "primary", ("train", "val"), 6, seed=0)
    write_images(tmp_path / "other", (None,), 6, seed=1)  # 6 groups: a 1-in-5 hold-out of one
    options = replace(
        _options(tmp_path), other=tmp_path / "other", protocols=("published", "cross")
    )
    with pytest.raises(TrainingError, match=r"^cross: the validation images .* one label only"):
        run(options)


def test_the_card_names_the_folds_the_run_made(tmp_path: Path) -> None:
    write_images(tmp_path / "primary", ("train", "val"), 8, seed=0)
    run(replace(_options(tmp_path), protocols=("published", "cv"), folds=3))
    metrics = json.loads((tmp_path / "bundle" / "metrics.json").read_text())
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert len(metrics["cv"]["folds"]) == 3
    assert "## 2. Grouped, stratified 3-fold cross-validation" in card
    assert "5-fold" not in card


def test_data_without_split_folders_is_refused_before_the_trunk_pass(tmp_path: Path) -> None:
    write_images(tmp_path / "primary", (None,), 4, seed=0)
    with pytest.raises(TrainingError, match=r"primary: no train/ folder"):
        run(_options(tmp_path))
    assert not (tmp_path / "work").exists()
