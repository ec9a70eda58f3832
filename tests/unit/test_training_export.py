"""ONNX export: dynamic batch, torch/onnxruntime parity, and HED weight conversion."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from osteoflag.training import efficientnet
from osteoflag.training.backbones import (
    FeatureLayout,
    Init,
    TrainingError,
    build_vgg,
    load_hed,
    vgg_channels,
)
from osteoflag.training.export import check_parity, export_onnx, session
from osteoflag.training.networks import FeatureGraph


def _tiny(seed: int = 0) -> FeatureGraph:
    trunk, head = build_vgg(Init.SCRATCH, None, head_convs=1, seed=seed, divisor=16)
    return FeatureGraph(trunk, head, FeatureLayout.B345).eval()


def test_export_has_dynamic_batch_and_parity(tmp_path: Path) -> None:
    model = _tiny()
    path = tmp_path / "backbone.onnx"
    export_onnx(model, torch.zeros(1, 3, 32, 32), path)
    inputs = np.random.default_rng(0).normal(0, 50, (16, 3, 32, 32)).astype(np.float32)
    assert check_parity(model, path, inputs) <= 1e-4
    sess = session(path)
    assert sess.get_inputs()[0].name == "image"
    out = sess.run(["features"], {"image": inputs[:5]})[0]
    assert out.shape == (5, 2 * (16 + 32 + 32))


def test_parity_failure_fails_the_run(tmp_path: Path) -> None:
    path = tmp_path / "backbone.onnx"
    export_onnx(_tiny(seed=0), torch.zeros(1, 3, 32, 32), path)
    inputs = np.random.default_rng(1).normal(0, 50, (16, 3, 32, 32)).astype(np.float32)
    with pytest.raises(TrainingError, match="disagree"):
        check_parity(_tiny(seed=1), path, inputs)


def test_hed_keras_kernels_become_torch_oihw(tmp_path: Path) -> None:
    trunk, head = build_vgg(Init.SCRATCH, None, head_convs=3)
    path = tmp_path / "hed.weights.h5"
    rng = np.random.default_rng(0)
    expected = {}
    with h5py.File(path, "w") as h5:
        c_in = 3
        for b, widths in enumerate(vgg_channels()):
            for i, width in enumerate(widths):
                name = f"block{b + 1}/layers/conv2d" + (f"_{i}" if i else "")
                kernel = rng.normal(size=(3, 3, c_in, width)).astype(np.float32)
                h5[f"{name}/vars/0"] = kernel
                h5[f"{name}/vars/1"] = np.arange(width, dtype=np.float32)
                expected[name] = kernel
                c_in = width
    load_hed(trunk, head, path)
    first = trunk.blocks[0][0].weight.detach().numpy()
    assert np.array_equal(first[5, 2, 0, 1], expected["block1/layers/conv2d"][0, 1, 2, 5])
    last = head.block[-2].weight.detach().numpy()
    assert np.array_equal(last[7, 3, 2, 2], expected["block5/layers/conv2d_2"][2, 2, 3, 7])


@pytest.mark.parametrize(
    ("name", "widths"),
    [
        ("efficientnet_lite0", (80, 112)),
        ("efficientnet_lite1", (80, 112)),
        ("efficientnet_lite2", (88, 120)),
    ],
)
def test_efficientnet_split_computes_the_whole_network(name: str, widths: tuple[int, int]) -> None:
    """Trunk + head is the packaged network: the head's average pool equals a plain forward."""
    variant = efficientnet.VARIANTS[name]
    trunk, head = efficientnet.build(variant)
    net = efficientnet.EfficientNetLite(variant)
    net.load_state_dict(
        {
            k: v
            for k, v in torch.load(efficientnet.default_weights(variant), weights_only=True).items()
            if not k.startswith("_fc.")
        }
    )
    net.eval()
    image = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 3, 64, 64)).astype("f4"))
    with torch.no_grad():
        x = torch.nn.functional.relu6(net._bn0(net._conv_stem(image)))
        for block in net._blocks:
            x = block(x)
        expected = torch.nn.functional.relu6(net._bn1(net._conv_head(x))).mean(dim=(2, 3))
        got = FeatureGraph(trunk, head, FeatureLayout.B5_AVG)(image)
        _, _, start = trunk(image)
    assert torch.allclose(got, expected, atol=1e-5)
    assert variant.level_widths() == (*widths, 1280)
    assert start.shape == (2, widths[1], 4, 4)  # the trunk ends after stage 5 (stride 16)
    assert FeatureGraph(trunk, head, FeatureLayout.B345)(image).shape == (
        2,
        2 * (widths[0] + widths[1] + 1280),
    )


def test_efficientnet_layout_is_the_weight_files() -> None:
    """Block count and every block's widths follow the files; a wrong variant's file fails."""
    for name, variant in efficientnet.VARIANTS.items():
        state = torch.load(efficientnet.default_weights(variant), weights_only=True)
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
        assert len(blocks) == sum(s[0] for s in variant.stages()), name
        assert state["_conv_head.weight"].shape[1] == variant.stages()[-1][5], name
    lite1, lite2 = (
        efficientnet.VARIANTS["efficientnet_lite1"],
        efficientnet.VARIANTS["efficientnet_lite2"],
    )
    with pytest.raises(TrainingError, match="does not fit EfficientNet-Lite2"):
        efficientnet.build(lite2, weights=efficientnet.default_weights(lite1))


def test_efficientnet_lite2_exports_with_parity(tmp_path: Path) -> None:
    trunk, head = efficientnet.build(efficientnet.VARIANTS["efficientnet_lite2"])
    model = FeatureGraph(trunk, head, FeatureLayout.B5).eval()
    path = tmp_path / "backbone.onnx"
    export_onnx(model, torch.zeros(1, 3, 64, 64), path)
    inputs = np.random.default_rng(0).normal(0, 1, (4, 3, 64, 64)).astype(np.float32)
    assert check_parity(model, path, inputs) <= 1e-4
    assert session(path).run(["features"], {"image": inputs})[0].shape == (4, 2560)
