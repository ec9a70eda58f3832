"""``osteoflag add-maps``: an existing bundle gains the spatial ``maps`` output, verified.

The copy must load like any bundle (every hash checked), compute the very same features,
and make the predictor localise; an INT8 copy of it must keep the output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from osteoflag.errors import BundleError
from osteoflag.inference.bundle import load_bundle, read_manifest, write_manifest
from osteoflag.inference.maps import MAPS_OUTPUT, add_maps_to_bundle, expose_maps
from osteoflag.inference.pixels import DisplayImage
from osteoflag.inference.predictor import Predictor
from osteoflag.inference.quantize import int8_copy
from testkit.daemon import osteoflag, write_config
from testkit.tiny_bundle import _training_images


def _inputs(predictor: Predictor, count: int = 6) -> np.ndarray:
    height, width = predictor.bundle.input_spec.size
    rng = np.random.default_rng(3)
    return rng.uniform(-120, 120, (count, 3, height, width)).astype(np.float32)


def test_cli_adds_maps_to_a_copy_with_the_same_features(tmp_path: Path, tiny_bundle: Path) -> None:
    config = write_config(tmp_path, {"model": {"bundle": str(tiny_bundle)}})
    out = tmp_path / "with-maps"
    result = osteoflag("add-maps", "--bundle", str(tiny_bundle), "--out", str(out), config=config)
    assert result.returncode == 0, result.stderr

    source, upgraded = load_bundle(tiny_bundle), load_bundle(out)  # load_bundle verifies hashes
    backbone = upgraded.manifest.backbone.file
    assert json.loads(result.stdout)["backbone"] == upgraded.manifest.files[backbone]
    assert upgraded.manifest.files[backbone] != source.manifest.files[backbone]
    assert upgraded.manifest.model_dump(exclude={"files"}) == source.manifest.model_dump(
        exclude={"files"}
    )
    assert "Spatial map output" in (out / "MODEL_CARD.md").read_text()
    outputs = [o.name for o in onnx.load(str(upgraded.backbone_path)).graph.output]
    assert outputs == ["features", MAPS_OUTPUT]

    before, after = Predictor(source), Predictor(upgraded)
    assert not before.localises and after.localises
    batch = _inputs(after)
    np.testing.assert_array_equal(before.features(batch), after.features(batch))

    again = osteoflag("add-maps", "--bundle", str(out), "--out", str(out), config=config)
    assert again.returncode == 2 and "already exists" in again.stderr  # usage: exit 2
    assert not list(tmp_path.glob(".*partial*"))


def test_a_bundle_without_maps_classifies_but_gives_no_region(tiny_bundle: Path) -> None:
    predictor = Predictor(load_bundle(tiny_bundle))
    images = [DisplayImage(image) for image in _training_images((48, 64), 12, seed=5)]
    predictions = predictor.predict(images)
    assert any(p.label.value == "fracture" for p in predictions)
    assert all(p.region is None for p in predictions)


def test_int8_copy_keeps_the_maps_output(tmp_path: Path, tiny_bundle: Path) -> None:
    add_maps_to_bundle(tiny_bundle, tmp_path / "maps")
    upgraded = load_bundle(tmp_path / "maps")
    predictor = Predictor(upgraded)
    calibration = list(_inputs(predictor, 16))
    int8_copy(upgraded, tmp_path / "int8", calibration)
    quantised = Predictor(load_bundle(tmp_path / "int8"))
    assert quantised.localises
    graph = onnx.load(str(quantised.bundle.backbone_path)).graph
    assert MAPS_OUTPUT in [output.name for output in graph.output]


def test_a_maps_output_that_is_not_the_pooled_map_is_refused(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    folder = tmp_path / "wrong"
    add_maps_to_bundle(tiny_bundle, folder)
    model = onnx.load(str(folder / "backbone.onnx"))
    [identity] = [node for node in model.graph.node if node.output[0] == MAPS_OUTPUT]
    identity.input[0] = "conv1_r"  # same channel count, twice the resolution, not what is pooled
    onnx.save(model, str(folder / "backbone.onnx"))
    manifest = read_manifest(folder)
    write_manifest(folder, **manifest.model_dump(exclude={"files", "format_version"}))
    with pytest.raises(BundleError, match="not the map the classifier sees"):
        Predictor(load_bundle(folder))


def test_expose_maps_refuses_a_graph_without_spatial_pooling(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["features"], axis=1)],
        "flat",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["N", 48])],
    )
    path = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(BundleError, match="no global average pooling"):
        expose_maps(path)
