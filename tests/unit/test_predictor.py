"""Predictor: onnxruntime backbone + LightGBM on a real tiny bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from osteoflag.errors import BundleError
from osteoflag.inference.bundle import load_bundle, write_manifest
from osteoflag.inference.cellterm import CellTerm
from osteoflag.inference.labels import Label
from osteoflag.inference.maps import add_maps_to_bundle
from osteoflag.inference.pixels import DisplayImage, model_input
from osteoflag.inference.predictor import Predictor
from testkit.inference_data import radiograph
from testkit.tiny_bundle import backbone, build_bundle
from tests.helpers.bundles import name_classifier_part


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    folder = build_bundle(tmp_path_factory.mktemp("bundle") / "tiny", threshold=0.5)
    return Predictor(load_bundle(folder), threads=1, batch_size=3)


def _displays(count: int) -> list[DisplayImage]:
    return [
        DisplayImage((radiograph(seed=seed) / 4095.0).astype(np.float32)) for seed in range(count)
    ]


def test_batches_give_the_same_probabilities_as_single_images(predictor: Predictor) -> None:
    displays = _displays(7)
    batched = predictor.predict(displays)
    single = [predictor.predict([display])[0] for display in displays]
    assert len(batched) == 7
    for many, one in zip(batched, single, strict=True):
        assert many.probability == pytest.approx(one.probability, abs=1e-6)


def test_label_follows_threshold_and_model_is_named(predictor: Predictor) -> None:
    for prediction in predictor.predict(_displays(4)):
        assert 0.0 <= prediction.probability <= 1.0
        expected = Label.FRACTURE if prediction.probability >= 0.5 else Label.NO_FRACTURE
        assert prediction.label is expected
        assert prediction.threshold == 0.5
        assert prediction.model == "tiny-test@0.0.1"


def test_probability_depends_on_the_image(predictor: Predictor) -> None:
    bright = DisplayImage(np.ones((40, 40), dtype=np.float32))
    dark = DisplayImage(np.zeros((40, 40), dtype=np.float32))
    textured = _displays(6)
    values = {round(p.probability, 6) for p in predictor.predict([bright, dark, *textured])}
    assert len(values) > 1


def test_feature_count_mismatch_is_refused(tmp_path: Path) -> None:
    folder = build_bundle(tmp_path / "b")
    document = (folder / "manifest.json").read_text()
    fields = json.loads(document)
    fields["features"]["count"] = 9
    for key in ("files", "format_version"):
        fields.pop(key)
    write_manifest(folder, **fields)
    with pytest.raises(BundleError, match="features"):
        Predictor(load_bundle(folder))


def test_unloadable_backbone_is_refused(tmp_path: Path) -> None:
    folder = build_bundle(tmp_path / "b")
    model = backbone("tiny")
    model.graph.output[0].name = "logits"
    (folder / "backbone.onnx").write_bytes(model.SerializeToString())
    fields = json.loads((folder / "manifest.json").read_text())
    for key in ("files", "format_version"):
        fields.pop(key)
    write_manifest(folder, **fields)
    with pytest.raises(BundleError, match=r"backbone\.onnx"):
        Predictor(load_bundle(folder))


def _recalibrated(folder: Path, calibration: dict[str, object]) -> Path:
    fields = json.loads((folder / "manifest.json").read_text())
    for key in ("files", "format_version"):
        fields.pop(key)
    write_manifest(folder, **(fields | {"calibration": calibration}))
    return folder


def test_served_probability_is_the_calibrated_score(predictor: Predictor, tmp_path: Path) -> None:
    displays = _displays(5)
    raw = np.array([p.probability for p in predictor.predict(displays)])
    folder = _recalibrated(build_bundle(tmp_path / "b"), {"method": "platt", "a": 0.5, "b": -1})
    served = np.array([p.probability for p in Predictor(load_bundle(folder)).predict(displays)])
    z = 0.5 * np.log(raw / (1 - raw)) - 1.0
    assert served == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-6)
    folder = _recalibrated(folder, {"method": "isotonic", "x": [0.0, 1.0], "y": [0.2, 0.6]})
    served = np.array([p.probability for p in Predictor(load_bundle(folder)).predict(displays)])
    assert served == pytest.approx(0.2 + 0.4 * raw, abs=1e-6)


@pytest.mark.parametrize(
    "calibration",
    [
        {"method": "platt", "a": -1.0, "b": 0.0},
        {"method": "platt", "a": 1.0},
        {"method": "isotonic", "x": [0.0, 0.5], "y": [0.9, 0.1]},
        {"method": "isotonic", "x": [0.0], "y": [0.5]},
    ],
)
def test_a_calibration_that_is_not_increasing_or_incomplete_is_refused(
    tmp_path: Path, calibration: dict[str, object]
) -> None:
    with pytest.raises(BundleError, match="'calibration'"):
        _recalibrated(build_bundle(tmp_path / "b"), calibration)


def _with_linear(folder: Path, term: dict[str, object]) -> Path:
    (folder / "linear.json").write_text(json.dumps(term))
    return name_classifier_part(folder, "linear", "linear.json")


def _term(count: int, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    return {
        "kind": "logistic",
        "intercept": 0.3,
        "mean": rng.normal(size=count).tolist(),
        "coef": rng.normal(scale=0.5, size=count).tolist(),
    }


def test_a_linear_term_adds_to_the_booster_log_odds_and_to_its_contributions(
    predictor: Predictor, tmp_path: Path
) -> None:
    displays = _displays(5)
    raw = np.array([p.probability for p in predictor.predict(displays)])
    count = predictor.bundle.manifest.features.count
    term = _term(count)
    linear = Predictor(load_bundle(_with_linear(build_bundle(tmp_path / "b"), term)))
    served = np.array([p.probability for p in linear.predict(displays)])
    spec = linear.bundle.input_spec
    feats = linear.features(np.stack([model_input(d, spec) for d in displays]))
    added = (feats - np.array(term["mean"])) @ np.array(term["coef"]) + 0.3
    z = np.log(raw / (1 - raw)) + added
    assert served == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-6)
    assert not np.allclose(served, raw, atol=1e-3)
    # contributions: the booster's TreeSHAP values plus the term's exact shares
    shares = linear.contributions(feats) - predictor.contributions(feats)
    expected = (feats - np.array(term["mean"])) * np.array(term["coef"])
    np.testing.assert_allclose(shares, expected, atol=1e-9)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "svm"}, "kind 'svm'"),
        ({"coef": [0.1, 0.2]}, "2 coefficients"),
        ({"intercept": float("nan")}, "not finite"),
        ({"mean": "zero"}, "cannot be read"),
    ],
)
def test_a_bad_linear_term_is_refused_naming_its_file(
    predictor: Predictor, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    term = _term(predictor.bundle.manifest.features.count) | change
    folder = _with_linear(build_bundle(tmp_path / "b"), term)
    with pytest.raises(BundleError, match=rf"linear\.json.*{message}"):
        Predictor(load_bundle(folder))


def test_a_linear_term_missing_from_the_files_is_refused(tmp_path: Path) -> None:
    folder = build_bundle(tmp_path / "b")
    fields = json.loads((folder / "manifest.json").read_text())
    fields["classifier"]["linear"] = "linear.json"
    (folder / "manifest.json").write_text(json.dumps(fields))
    with pytest.raises(BundleError, match=r"linear term file 'linear\.json'"):
        load_bundle(folder)


def _with_cells(folder: Path, out: Path, text: str, *, maps: bool = True) -> Path:
    """``folder`` copied to ``out`` (with the ``maps`` output unless told not to) and
    ``cells.json`` holding ``text``, named in the manifest."""
    if maps:
        add_maps_to_bundle(folder, out)
    else:
        shutil.copytree(folder, out)
    (out / "cells.json").write_text(text)
    return name_classifier_part(out, "cells", "cells.json")


def test_a_cell_term_adds_its_top_cells_to_the_log_odds_and_to_the_evidence(
    predictor: Predictor, tmp_path: Path
) -> None:
    mapped = tmp_path / "maps"
    add_maps_to_bundle(predictor.bundle.path, mapped)
    plain = Predictor(load_bundle(mapped))
    displays = _displays(5)
    spec = plain.bundle.input_spec
    feats, maps = plain.run(np.stack([model_input(d, spec) for d in displays]))
    assert maps is not None
    rng = np.random.default_rng(2)
    channels = maps.shape[1]
    term = CellTerm(-0.2, rng.normal(size=channels), rng.normal(size=channels), top=2)
    term.write(tmp_path / "cells.json")
    text = (tmp_path / "cells.json").read_text()
    cells = Predictor(load_bundle(_with_cells(predictor.bundle.path, tmp_path / "c", text)))
    assert cells.uses_maps and not plain.uses_maps
    base = np.array(plain.scores(feats))
    expected = 1 / (1 + np.exp(-(np.log(base / (1 - base)) + term.raw(maps))))
    served = np.array([p.probability for p in cells.predict(displays)])
    np.testing.assert_allclose(served, expected, atol=1e-6)
    for heat, before, share in zip(
        cells.evidence(feats, maps), plain.evidence(feats, maps), term.shares(maps), strict=True
    ):
        np.testing.assert_allclose(heat, before + share, atol=1e-5)
    with pytest.raises(BundleError, match=r"cells\.json: the cell term needs each row's map"):
        cells.scores(feats)


def test_a_cell_term_needs_the_maps_output_and_a_readable_file(tmp_path: Path) -> None:
    folder = build_bundle(tmp_path / "b")
    bad = _with_cells(folder, tmp_path / "bad", '{"kind": "cell-topk-logistic"}')
    with pytest.raises(BundleError, match=r"cells\.json: cell term cannot be read"):
        Predictor(load_bundle(bad))
    term = CellTerm(0.0, np.zeros(4), np.zeros(4), top=1)
    term.write(tmp_path / "cells.json")
    text = (tmp_path / "cells.json").read_text()
    unmapped = _with_cells(folder, tmp_path / "unmapped", text, maps=False)
    with pytest.raises(BundleError, match=r"cells\.json: the cell term needs the backbone's"):
        Predictor(load_bundle(unmapped))
