"""Real but small model bundles for the inference tests and ``make bench`` (inference-owned).

The backbone is an ONNX graph written with ``onnx.helper`` (no torch): either a tiny conv +
global-average-pool, or VGG16's 13 convolutions with random He weights (the real compute
cost, for benchmarks). The classifier is a LightGBM model trained on the backbone's own
features of synthetic images, so its probability does depend on the image.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from osteoflag.inference.bundle import write_manifest

VGG16_CONVS: Final[tuple[int | str, ...]] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
CAFFE_MEAN: Final = (103.939, 116.779, 123.68)


def _conv(
    nodes: list[Any],
    weights: list[Any],
    rng: np.random.Generator,
    source: str,
    cin: int,
    cout: int,
    name: str,
    stride: int = 1,
) -> str:
    scale = np.sqrt(2.0 / (cin * 9))
    w = (rng.standard_normal((cout, cin, 3, 3)) * scale).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
    weights += [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    nodes.append(
        helper.make_node(
            "Conv",
            [source, f"{name}_w", f"{name}_b"],
            [f"{name}_c"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[stride, stride],
        )
    )
    nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
    return f"{name}_r"


def backbone(architecture: str = "tiny", seed: int = 0) -> onnx.ModelProto:
    """``image`` float32 [N,3,H,W] (dynamic N, H, W) to ``features`` float32 [N,F]."""
    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    weights: list[Any] = []
    source, channels = "image", 3
    if architecture == "tiny":
        source = _conv(nodes, weights, rng, source, 3, 8, "conv1", stride=2)
        source, channels = _conv(nodes, weights, rng, source, 8, 8, "conv2", stride=2), 8
    elif architecture == "vgg16":
        for index, item in enumerate(VGG16_CONVS):
            if item == "M":
                nodes.append(
                    helper.make_node(
                        "MaxPool", [source], [f"pool{index}"], kernel_shape=[2, 2], strides=[2, 2]
                    )
                )
                source = f"pool{index}"
            else:
                source = _conv(nodes, weights, rng, source, channels, int(item), f"conv{index}")
                channels = int(item)
    else:
        raise ValueError(f"unknown test architecture {architecture!r}")
    nodes.append(helper.make_node("GlobalAveragePool", [source], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1))
    graph = helper.make_graph(
        nodes,
        f"{architecture}_backbone",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _training_images(size: tuple[int, int], count: int, seed: int) -> Any:
    """Display-like images in [0, 1]: ramps, a bright band and noise of random strength."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]] / max(size)
    images = []
    for _ in range(count):
        a, b, c, d, w = rng.uniform((0.0, -0.6, -0.6, 0.0, 0.05), (0.6, 0.6, 0.6, 0.6, 0.4))
        band = d * np.exp(-(((x - rng.uniform(0.2, 0.8)) / w) ** 2))
        noise = rng.uniform(0.0, 0.3) * rng.standard_normal(size)
        images.append(np.clip(a + b * x + c * y + band + noise, 0.0, 1.0))
    return np.asarray(images, dtype=np.float32)


def _training_features(model_path: Path, size: tuple[int, int], count: int, seed: int) -> Any:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    grey = _training_images(size, count, seed)[:, np.newaxis] * 255.0
    images = np.repeat(grey, 3, axis=1) - np.asarray(CAFFE_MEAN, np.float32).reshape(1, 3, 1, 1)
    return session.run(["features"], {"image": images.astype(np.float32)})[0]


def build_bundle(
    folder: Path,
    *,
    architecture: str = "tiny",
    size: tuple[int, int] = (32, 32),
    name: str = "tiny-test",
    version: str = "0.0.1",
    threshold: float = 0.5,
    seed: int = 0,
    training_images: int = 256,
) -> Path:
    """Write a complete, hash-pinned bundle into ``folder`` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = backbone(architecture, seed)
    onnx.save(model, folder / "backbone.onnx")
    features = _training_features(folder / "backbone.onnx", size, training_images, seed)
    signal = features[:, int(np.argmax(features.std(axis=0)))]
    labels = (signal > np.median(signal)).astype(int)
    params = {"objective": "binary", "num_leaves": 8, "min_data_in_leaf": 3, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(features, labels), num_boost_round=40)
    booster.save_model(str(folder / "classifier.txt"))
    (folder / "MODEL_CARD.md").write_text(f"# {name} {version}\n\nTest bundle, not for use.\n")
    write_manifest(
        folder,
        name=name,
        version=version,
        created=datetime.now(UTC).isoformat(),
        training_data={"source": "synthetic ramps, bands and noise", "n": training_images},
        input={
            "size": list(size),
            "resize_mode": "letterbox",
            "colour_order": "BGR",
            "mean": list(CAFFE_MEAN),
            "std": [1.0, 1.0, 1.0],
            "scale": 255.0,
        },
        backbone={
            "file": "backbone.onnx",
            "architecture": architecture,
            "init": "random",
            "precision": "float32",
        },
        features={"count": int(features.shape[1]), "layout": "global average pool of last conv"},
        classifier={"file": "classifier.txt", "kind": "lightgbm"},
        threshold={"value": threshold, "method": "fixed for tests"},
        metrics={},
    )
    return folder
