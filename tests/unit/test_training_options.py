"""Training options: the ``train`` command line spells out enum values so that parsing never
imports torch (they must stay the enums' values), and the defaults options derive."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from osteoflag.training.backbones import FeatureLayout
from osteoflag.training.calibrate import Calibration
from osteoflag.training.commands import (
    BACKBONES,
    CALIBRATIONS,
    DEFAULT_LAYOUT,
    LAYOUTS,
    SOURCES,
    add_train_arguments,
    train_options,
)
from osteoflag.training.finetune import FinetuneConfig
from osteoflag.training.networks import FINETUNE, Architecture, layout_text
from osteoflag.training.prepared import Sources, TrainOptions


def test_command_line_choices_are_the_enums() -> None:
    assert set(BACKBONES) == {a.value for a in Architecture}
    assert set(LAYOUTS) == {layout.value for layout in FeatureLayout}
    assert set(DEFAULT_LAYOUT) == set(BACKBONES)
    assert set(DEFAULT_LAYOUT.values()) <= set(LAYOUTS)
    assert set(CALIBRATIONS) == {c.value for c in Calibration}
    assert train_options(_parsed()).calibration is Calibration.PLATT
    assert train_options(_parsed("--calibration", "isotonic")).calibration is Calibration.ISOTONIC
    assert set(SOURCES) == {s.value for s in Sources}
    assert train_options(_parsed()).train_on is Sources.PRIMARY
    assert train_options(_parsed("--train-on", "both")).train_on is Sources.BOTH
    assert train_options(_parsed("--copies", "3")).copies == 3
    assert train_options(_parsed()).booster.learning_rate == 0.05
    assert train_options(_parsed("--learning-rate", "0.1")).booster.learning_rate == 0.1
    assert train_options(_parsed()).small_view == 0
    assert train_options(_parsed("--small-view", "224")).small_view == 224
    assert not train_options(_parsed()).booster.linear
    assert train_options(_parsed("--linear")).booster.linear


def test_fine_tuning_defaults_follow_the_architecture_and_seed(tmp_path: Path) -> None:
    paths = {"data": tmp_path, "out": tmp_path / "out", "work": tmp_path / "work"}
    for architecture in Architecture:
        options = TrainOptions(**paths, architecture=architecture, seed=7)
        assert options.tuning == replace(FINETUNE[architecture], seed=7)
    assert FINETUNE[Architecture.VGG16] != FINETUNE[Architecture.EFFICIENTNET_LITE0]
    given = FinetuneConfig(epochs=1, batch_size=8)
    assert TrainOptions(**paths, finetune=given, seed=7).tuning is given
    assert TrainOptions(**paths).cache_dir == tmp_path / "work" / "cache"
    assert TrainOptions(**paths, cache=tmp_path / "shared").cache_dir == tmp_path / "shared"


def _parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(["--data", "d", "--out", "o", *argv])


def test_command_line_fine_tuning_overrides_keep_the_backbone_defaults() -> None:
    plain = train_options(_parsed("--backbone", "vgg16", "--seed", "3"))
    assert plain.finetune is None
    assert plain.tuning == replace(FINETUNE[Architecture.VGG16], seed=3)
    assert plain.layout is FeatureLayout.B345 and plain.name == "osteoflag-vgg16-imagenet"
    tuned = train_options(_parsed("--epochs", "2", "--lr-backbone", "0.001", "--seed", "3"))
    defaults = FINETUNE[Architecture.EFFICIENTNET_LITE0]
    assert tuned.tuning == replace(defaults, epochs=2, lr_backbone=0.001, seed=3)
    assert tuned.layout is FeatureLayout.B5 and tuned.name == "osteoflag-effnetlite0-imagenet"


def test_larger_efficientnet_lites_are_backbones_like_lite0() -> None:
    for size in ("1", "2"):
        options = train_options(_parsed("--backbone", f"efficientnet_lite{size}"))
        assert options.architecture is Architecture(f"efficientnet_lite{size}")
        assert options.layout is FeatureLayout.B5
        assert options.name == f"osteoflag-effnetlite{size}-imagenet"
        assert options.tuning == replace(FINETUNE[Architecture.EFFICIENTNET_LITE0], seed=0)
    assert "(160+224+2560)" in layout_text(Architecture.EFFICIENTNET_LITE1, FeatureLayout.B345)
    assert "(176+240+2560)" in layout_text(Architecture.EFFICIENTNET_LITE2, FeatureLayout.B345)


def test_the_manifest_says_fine_tuned_only_when_a_layer_was(tmp_path: Path) -> None:
    from osteoflag.training.pipeline import tuned_text

    paths = {"data": tmp_path, "out": tmp_path / "out", "work": tmp_path / "work"}
    frozen = TrainOptions(**paths, finetune=FinetuneConfig(epochs=0))
    assert tuned_text(frozen) == "; frozen: no layer fine-tuned"
    tuned = TrainOptions(**paths, finetune=FinetuneConfig(epochs=2))
    assert tuned_text(tuned) == "; fine-tuned: stages 6-7 and the 1x1 head convolution"
