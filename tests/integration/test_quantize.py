"""``osteoflag quantize`` on the tiny bundle: a real INT8 backbone, written only when as good.

The labelled folder is made from synthetic images labelled by the float32 bundle itself
(clear positives and clear negatives, as many of each as the AUC rule needs), so float32
scores AUC 1 and a faithful INT8 backbone must too. The refusal path is driven by the rule's
own threshold.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
import pytest
from PIL import Image

from osteoflag.errors import BundleError
from osteoflag.inference.bundle import load_bundle, write_manifest
from osteoflag.inference.cellterm import CellTerm
from osteoflag.inference.maps import add_maps_to_bundle
from osteoflag.inference.ood import OOD_FILE, OodReference
from osteoflag.inference.pixels import DisplayImage, load_display, model_input
from osteoflag.inference.predictor import Predictor
from osteoflag.inference.quantize import (
    CALIBRATION_IMAGES,
    MIN_CHECK_IMAGES,
    auc,
    calibration_inputs,
    float_convs_for,
    int8_copy,
    quantize_backbone,
    quantize_bundle,
)
from osteoflag.inference.quantize_cli import add_quantize_arguments
from testkit.daemon import osteoflag, write_config
from testkit.tiny_bundle import _training_images
from tests.helpers.bundles import name_classifier_part


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> tuple[Path, Path]:
    """(calibration images, labelled folder) built for the tiny bundle."""
    root = tmp_path_factory.mktemp("quantize")
    calibration = root / "calibration"
    calibration.mkdir()
    paths = []
    for index, image in enumerate(_training_images((64, 64), 3 * MIN_CHECK_IMAGES, seed=11)):
        path = calibration / f"{index:03d}.png"
        Image.fromarray((image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    predictor = Predictor(load_bundle(tiny_bundle))
    spec = predictor.bundle.input_spec
    scores = predictor.probabilities([model_input(load_display(p), spec) for p in paths])
    order = np.argsort(scores)
    labelled = root / "labelled"
    each = MIN_CHECK_IMAGES
    for name, picks in (("nofracture", order[:each]), ("fracture", order[-each:])):
        (labelled / name).mkdir(parents=True)
        for index in picks:
            (labelled / name / paths[index].name).write_bytes(paths[index].read_bytes())
    return calibration, labelled


def test_auc_is_the_mann_whitney_statistic() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    assert auc(labels, np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])) == pytest.approx(8 / 9)
    assert auc(labels, np.array([0.5] * 6)) == 0.5
    with pytest.raises(BundleError, match="both"):
        auc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_int8_bundle_is_written_verified_and_recorded(
    tmp_path: Path, tiny_bundle: Path, folders: tuple[Path, Path]
) -> None:
    calibration, labelled = folders
    out = tmp_path / "tiny-int8"
    figures = quantize_bundle(tiny_bundle, calibration, labelled, out, count=40)

    assert figures["usable"] is True and figures["bundle"] == str(out)
    assert figures["n"] == 2 * MIN_CHECK_IMAGES and figures["calibration"]["images"] == 40
    assert figures["float32"]["auc"] == 1.0
    assert figures["auc_drop"] <= 0.005
    bundle = load_bundle(out)
    assert bundle.manifest.backbone.precision == "int8"
    assert bundle.model_id == "tiny-test@0.0.1+int8"
    assert bundle.manifest.metrics["int8"]["int8"]["auc"] == figures["int8"]["auc"]
    assert not (out / "backbone.onnx").exists()
    ops = {node.op_type for node in onnx.load(str(bundle.backbone_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = onnx.load(str(bundle.backbone_path)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 4 for w in weights)
    card = (out / "MODEL_CARD.md").read_text()
    assert "## INT8" in card and "the pooling tail stays float32." in card
    assert not list(tmp_path.glob(".*partial*"))
    with pytest.raises(BundleError, match="already int8"):
        quantize_bundle(out, calibration, labelled, tmp_path / "again", count=8)


def test_int8_keeps_the_spatial_map_the_classifier_sees(
    tmp_path: Path, tiny_bundle: Path, folders: tuple[Path, Path]
) -> None:
    # Regions need the INT8 backbone's map to be the one its pooled features come from.
    calibration, labelled = folders
    mapped = tmp_path / "tiny-maps"
    add_maps_to_bundle(tiny_bundle, mapped)
    out = tmp_path / "tiny-maps-int8"
    figures = quantize_bundle(mapped, calibration, labelled, out, count=40)

    assert figures["usable"] is True
    predictor = Predictor(load_bundle(out))
    assert predictor.localises
    inputs = np.stack(calibration_inputs(calibration, predictor.bundle.input_spec, 4))
    assert predictor.maps(inputs).min() >= 0.0


def test_int8_copy_of_a_bundle_with_a_cell_term_scores_with_it(
    tmp_path: Path, tiny_bundle: Path, folders: tuple[Path, Path]
) -> None:
    calibration, labelled = folders
    mapped = tmp_path / "tiny-cells"
    add_maps_to_bundle(tiny_bundle, mapped)
    predictor = Predictor(load_bundle(mapped))
    inputs = np.stack(calibration_inputs(calibration, predictor.bundle.input_spec, 4))
    channels = predictor.maps(inputs).shape[1]
    rng = np.random.default_rng(0)
    term = CellTerm(0.1, rng.normal(size=channels), rng.normal(size=channels), top=2)
    term.write(mapped / "cells.json")
    name_classifier_part(mapped, "cells", "cells.json")
    out = tmp_path / "tiny-cells-int8"
    figures = quantize_bundle(mapped, calibration, labelled, out, count=40)

    # the AUC gate scored both precisions through the cell term and passed
    assert figures["usable"] is True and figures["bundle"] is not None
    quantised = Predictor(load_bundle(out))
    assert quantised.uses_maps
    assert (out / "cells.json").read_bytes() == (mapped / "cells.json").read_bytes()
    # served: the INT8 booster's log-odds plus the term on the INT8 map, nothing else
    feats, maps = quantised.run(inputs)
    booster = lgb.Booster(model_file=str(quantised.bundle.classifier_path))
    expected = 1 / (1 + np.exp(-(booster.predict(feats, raw_score=True) + term.raw(maps))))
    np.testing.assert_allclose(quantised.probabilities(list(inputs)), expected, atol=1e-6)


def test_int8_copy_moves_the_guard_threshold_for_its_own_features(
    tmp_path: Path, tiny_bundle: Path, folders: tuple[Path, Path]
) -> None:
    # The copied reference's threshold was chosen on float32 features; INT8 features lie
    # a little elsewhere, so the same threshold would skip other in-distribution images.
    calibration, labelled = folders
    guarded = tmp_path / "guarded"
    shutil.copytree(tiny_bundle, guarded)
    spec = load_bundle(guarded).input_spec
    feats = Predictor(load_bundle(guarded)).features(
        np.stack(calibration_inputs(calibration, spec, 3 * MIN_CHECK_IMAGES))
    )
    reference = OodReference.fit(feats[::2], feats[1::2])
    manifest = load_bundle(guarded).manifest
    (guarded / OOD_FILE).write_bytes(reference.to_bytes())
    write_manifest(guarded, **manifest.model_dump(mode="json", exclude={"files", "format_version"}))
    out = tmp_path / "guarded-int8"
    figures = quantize_bundle(guarded, calibration, labelled, out, count=40)

    assert figures["usable"] is True
    inputs = np.stack([model_input(load_display(p), spec) for p in sorted(labelled.rglob("*.png"))])
    before = Predictor(load_bundle(guarded)).features(inputs)
    after = Predictor(load_bundle(out)).features(inputs)
    change = np.median(reference.distances(after) - reference.distances(before))
    moved = OodReference.read(out / OOD_FILE, before.shape[1])
    assert change != 0.0
    assert moved.threshold == pytest.approx(reference.threshold + change, abs=1e-6)
    np.testing.assert_array_equal(moved.anchors, reference.anchors)
    guard = figures["ood_guard"]
    assert guard["threshold_int8"] == pytest.approx(moved.threshold)
    assert guard["skipped_int8"] == int((moved.distances(after) > moved.threshold).sum())
    assert guard["skipped_float32"] == int(
        (reference.distances(before) > reference.threshold).sum()
    )
    assert load_bundle(out).manifest.metrics["int8"]["ood_guard"] == guard
    assert "Out-of-distribution guard: the float32 anchors" in (out / "MODEL_CARD.md").read_text()


def test_int8_outside_the_auc_margin_writes_nothing(
    tmp_path: Path, tiny_bundle: Path, folders: tuple[Path, Path]
) -> None:
    calibration, labelled = folders
    out = tmp_path / "refused"
    figures = quantize_bundle(tiny_bundle, calibration, labelled, out, count=8, max_auc_drop=-1.0)
    assert figures["usable"] is False and figures["bundle"] is None
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_prints_the_figures_and_refuses_an_existing_folder(
    tmp_path: Path, tiny_bundle: Path, folders: tuple[Path, Path]
) -> None:
    calibration, labelled = folders
    config = write_config(tmp_path, {"model": {"bundle": str(tiny_bundle)}})
    out = tmp_path / "cli-int8"
    args = ("--bundle", str(tiny_bundle), "--calibration", str(calibration))
    args += ("--data", str(labelled), "--calibration-images", "16")
    result = osteoflag("quantize", *args, "--out", str(out), config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["int8"]["accuracy"] == 1.0
    again = osteoflag("quantize", *args, "--out", str(out), config=config)
    assert again.returncode == 2 and "already exists" in again.stderr  # usage: exit 2


def test_too_few_readable_check_images_of_a_label_are_refused_before_any_work(
    tmp_path: Path, tiny_bundle: Path, folders: tuple[Path, Path]
) -> None:
    # A handful of images give both precisions AUC 1: the rule would pass on no evidence.
    calibration, labelled = folders
    small = tmp_path / "small"
    shutil.copytree(labelled, small)
    sorted((small / "fracture").iterdir())[0].unlink()
    (small / "fracture" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    config = write_config(tmp_path, {"model": {"bundle": str(tiny_bundle)}})
    out = tmp_path / "int8"
    done = osteoflag(
        "quantize", "--bundle", str(tiny_bundle), "--calibration", str(calibration),
        "--data", str(small), "--out", str(out), config=config,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        f"osteoflag: --data {small}: {MIN_CHECK_IMAGES - 1} fracture and {MIN_CHECK_IMAGES} "
        f"nofracture images could be read; the AUC rule needs at least {MIN_CHECK_IMAGES} of each"
    )
    assert done.stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["osteoflag.toml", "small"]


def test_leading_convolutions_can_stay_float32(
    tmp_path: Path, tiny_bundle: Path, folders: tuple[Path, Path]
) -> None:
    calibration, _ = folders
    spec = load_bundle(tiny_bundle).input_spec
    inputs = calibration_inputs(calibration, spec, 8)
    out = tmp_path / "mixed.onnx"
    quantize_backbone(tiny_bundle / "backbone.onnx", out, inputs, float_convs=1)
    graph = onnx.load(str(out)).graph
    weights = {w.name: w.data_type for w in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert weights.get(convs[0].input[1]) == onnx.TensorProto.FLOAT  # not dequantised
    producers = {o: node.op_type for node in graph.node for o in node.output}
    assert all(producers.get(c.input[1]) == "DequantizeLinear" for c in convs[1:])
    assert float_convs_for("efficientnet_lite0") == 8 and float_convs_for("vgg16") == 0
    assert float_convs_for("efficientnet_lite1") == float_convs_for("efficientnet_lite2") == 8


def test_each_view_of_a_two_view_backbone_keeps_its_leading_convolutions(
    tmp_path: Path,
) -> None:
    import torch

    from osteoflag.training import export
    from osteoflag.training.backbones import FeatureLayout, Init
    from osteoflag.training.networks import (
        Architecture,
        FeatureGraph,
        build_network,
        with_small_view,
    )

    network = build_network(Architecture.VGG16, Init.SCRATCH, divisor=16)
    network = with_small_view(network, 16)
    graph = FeatureGraph(network.trunk, network.head, FeatureLayout.B345)
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(3, 32, 32)).astype(np.float32) for _ in range(8)]
    source, target = tmp_path / "two-view.onnx", tmp_path / "two-view-int8.onnx"
    export.export_onnx(graph, torch.from_numpy(inputs[0][None]), source)
    quantize_backbone(source, target, inputs, float_convs=2)
    quantised = onnx.load(str(target)).graph
    weights = {w.name: w.data_type for w in quantised.initializer}
    convs = [node for node in quantised.node if node.op_type == "Conv"]
    kept = [c for c in convs if weights.get(c.input[1]) == onnx.TensorProto.FLOAT]
    assert len(convs) == 2 * 13  # each view runs all 13 VGG16 convolutions
    assert len(kept) == 4  # conv1_1 and conv1_2 of the 16 px view and of the 32 px image


def _two_scale_backbone(path: Path) -> None:
    """image -> Conv -> Relu -> [spatial average, 1000 x spatial maximum] -> features: pooled
    features three orders of magnitude apart, as VGG16's block-3 maxima beside block-5 averages."""
    rng = np.random.default_rng(5)
    h = onnx.helper
    weights = onnx.numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    scale = onnx.numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "scale")
    nodes = [
        h.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["conv"], ["map"]),
        h.make_node("ReduceMean", ["map"], ["average"], axes=[2, 3], keepdims=0),
        h.make_node("Mul", ["map", "scale"], ["loud"]),
        h.make_node("ReduceMax", ["loud"], ["maximum"], axes=[2, 3], keepdims=0),
        h.make_node("Concat", ["average", "maximum"], ["features"], axis=1),
    ]
    graph = h.make_graph(
        nodes,
        "two-scale",
        [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [h.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", 16])],
        [weights, scale],
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))


def test_pooled_features_of_different_scales_survive_quantisation(tmp_path: Path) -> None:
    # One 8-bit scale for the whole feature vector rounded every average to 0.
    import onnxruntime as ort

    source, target = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    _two_scale_backbone(source)
    rng = np.random.default_rng(6)
    inputs = [rng.normal(size=(3, 16, 16)).astype(np.float32) for _ in range(8)]
    quantize_backbone(source, target, inputs)
    batch = np.stack(inputs[:4])
    (expected,) = ort.InferenceSession(str(source)).run(None, {"image": batch})
    (got,) = ort.InferenceSession(str(target)).run(None, {"image": batch})
    assert expected[:, :8].max() < 10 < 1000 < expected[:, 8:].max()
    np.testing.assert_allclose(got[:, :8], expected[:, :8], rtol=0.1, atol=0.05)
    np.testing.assert_allclose(got[:, 8:], expected[:, 8:], rtol=0.1)
    graph = onnx.load(str(target)).graph
    producers = {o: node.op_type for node in graph.node for o in node.output}
    (conv,) = [node for node in graph.node if node.op_type == "Conv"]
    assert producers[conv.input[1]] == "DequantizeLinear"  # the convolution is still INT8
    (concat,) = [node for node in graph.node if node.op_type == "Concat"]
    assert all(producers[i].startswith("Reduce") for i in concat.input)  # fed float32


@pytest.mark.parametrize("name", ["default", "vgg16"])
def test_every_shipped_bundle_has_a_working_int8_copy(tmp_path: Path, name: str) -> None:
    # The INT8 copy must load (its map still the one its pooled features come from) and give
    # the float32 features back: a few calibration images suffice for that, not for the AUC.
    source = load_bundle(Path(__file__).resolve().parents[2] / "models" / name)
    spec = source.input_spec
    inputs = [
        model_input(DisplayImage(image), spec)
        for image in _training_images((spec.size[0], spec.size[1]), 6, seed=13)
    ]
    int8_copy(source, tmp_path / "int8", inputs[:4])
    quantised = Predictor(load_bundle(tmp_path / "int8"))
    assert quantised.localises
    batch = np.stack(inputs[4:])
    expected, got = Predictor(source).features(batch), quantised.features(batch)
    for row in range(len(batch)):
        assert np.corrcoef(expected[row], got[row])[0, 1] > 0.99


def test_the_help_states_the_rules_numbers() -> None:
    """The CLI module keeps the heavy module out of ``--help``, so it writes the figures out."""
    parser = argparse.ArgumentParser()
    add_quantize_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert f"{MIN_CHECK_IMAGES} or more images of each" in text
    assert f"(default {CALIBRATION_IMAGES})" in text
