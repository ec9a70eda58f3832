"""The feature networks behind one interface: a frozen trunk and a fine-tuned head.

Every architecture is cut the same way so that the pipeline does not care which one it trains:
the *trunk* returns two pooled feature levels and the map the *head* starts from; the head
returns the pooled last level. Training caches the trunk's outputs once per image and only ever
runs the head, and the served graph (:class:`FeatureGraph`) is trunk + head + the chosen layout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import torch
from torch import nn

from osteoflag.training import efficientnet
from osteoflag.training.backbones import (
    FeatureLayout,
    Init,
    TrainingError,
    build_vgg,
    combine,
    vgg_channels,
)
from osteoflag.training.finetune import FinetuneConfig


class Architecture(StrEnum):
    """Which convolutional network computes the features."""

    VGG16 = "vgg16"
    EFFICIENTNET_LITE0 = "efficientnet_lite0"
    EFFICIENTNET_LITE1 = "efficientnet_lite1"
    EFFICIENTNET_LITE2 = "efficientnet_lite2"


#: The EfficientNet-Lite sizes; they share everything but their scaling and weights.
LITES = (
    Architecture.EFFICIENTNET_LITE0,
    Architecture.EFFICIENTNET_LITE1,
    Architecture.EFFICIENTNET_LITE2,
)


#: The three feature levels each architecture pools, in the order of the feature vector.
LEVELS = {
    Architecture.VGG16: ("conv3_3", "conv4_3", "conv5_3"),
    **{lite: ("stage 4", "stage 5", "head conv") for lite in LITES},
}
#: What fine-tuning trains, as the model card says it.
HEAD_TEXT = {
    Architecture.VGG16: "the last {head_convs} block-5 convolution(s)",
    **{lite: "stages 6-7 and the 1x1 head convolution" for lite in LITES},
}


def level_widths(architecture: Architecture, divisor: int = 1) -> tuple[int, int, int]:
    """Channels of the three pooled levels (``divisor``: a narrow scratch VGG16's)."""
    if architecture is Architecture.VGG16:
        low, mid, last = (block[-1] for block in vgg_channels(divisor)[2:])
        return (low, mid, last)
    return efficientnet.VARIANTS[architecture.value].level_widths()


def view_starts(architecture: Architecture, small_view: int, divisor: int = 1) -> tuple[int, ...]:
    """Where each view's columns start in the features of :class:`TwoViewTrunk` under layout
    ``b345`` (the small view's three levels, then the full-size head); empty without one."""
    return (0, 2 * sum(level_widths(architecture, divisor))) if small_view else ()


def layout_text(architecture: Architecture, layout: FeatureLayout, small_view: int = 0) -> str:
    """Human-readable feature layout, with the channel counts of the full-width network."""
    low, mid, last = LEVELS[architecture]
    widths = level_widths(architecture)
    if small_view:
        return (
            f"global average + max pool of {low}, {mid} and {last} of the image resized to "
            f"{small_view} px inside the graph ({2 * sum(widths)}), then of {last} at full size "
            f"({2 * widths[2]}); one LightGBM booster per view, raw scores averaged"
        )
    if layout is FeatureLayout.B5_AVG:
        return f"{last} global average pool ({widths[2]})"
    if layout is FeatureLayout.B5:
        return f"{last} global average + global max pool ({2 * widths[2]})"
    counts = "+".join(str(2 * w) for w in widths)
    return f"global average + max pool of {low}, {mid}, {last} ({counts})"


def default_init(architecture: Architecture) -> Init:
    """Packaged ImageNet weights for every architecture (no download happens here)."""
    return Init.IMAGENET


#: Fine-tuning that fits this CPU: VGG16's block 5 costs ~70 ms per image and epoch, so it gets
#: a short, gentle run; EfficientNet-Lite0's head costs ~9 ms, so it can train for longer (Lite1
#: and Lite2 take Lite0's settings: their heads are one block deeper, not different in kind).
FINETUNE = {
    Architecture.VGG16: FinetuneConfig(),
    **{lite: FinetuneConfig(epochs=8, lr_backbone=3e-4) for lite in LITES},
}

SHORT_NAME = {
    Architecture.VGG16: "vgg16",
    **{lite: lite.value.replace("efficientnet_", "effnet") for lite in LITES},
}


def default_name(architecture: Architecture, init: Init) -> str:
    """Bundle name when none is given, e.g. ``osteoflag-effnetlite0-imagenet``."""
    return f"osteoflag-{SHORT_NAME[architecture]}-{init.value}"


@dataclass(frozen=True)
class Network:
    """A trunk and a head, untrained or as loaded from their weights."""

    architecture: Architecture
    trunk: nn.Module
    head: nn.Module


def build_network(
    architecture: Architecture,
    init: Init,
    weights: Path | None = None,
    head_convs: int = 1,
    seed: int = 0,
    divisor: int = 1,
) -> Network:
    """Trunk and head of ``architecture``; ``divisor`` narrows a scratch VGG16 for fast tests."""
    if architecture is Architecture.VGG16:
        trunk, head = build_vgg(init, weights, head_convs, seed, divisor)
        return Network(architecture, trunk.eval(), head.eval())
    if init is Init.HED or divisor != 1:
        raise TrainingError(
            f"--backbone {architecture.value} takes --init imagenet or scratch at full width, "
            f"not --init {init.value}" + (f" with width divisor {divisor}" if divisor != 1 else "")
        )
    variant = efficientnet.VARIANTS[architecture.value]
    e_trunk, e_head = efficientnet.build(variant, init is Init.IMAGENET, weights, seed)
    return Network(architecture, e_trunk, e_head)


class FeatureGraph(nn.Module):
    """The exported graph: image ``[N,3,H,W]`` -> features ``[N,F]``."""

    def __init__(self, trunk: nn.Module, head: nn.Module, layout: FeatureLayout) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.layout = layout

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        low, mid, start = self.trunk(image)
        return combine(self.layout, low, mid, self.head(start))


class TwoViewTrunk(nn.Module):
    """A trunk that also sees the image at ``small_view`` px, resized inside the graph.

    Pooled earlier levels carried across sources at 224 px but not at 384 px, where the last
    level did better in-source (the recipe table), so the small view gives all three of its
    levels (its head frozen) and the full-size image only the map the head starts from. The
    small view is a bilinear resize to twice its size (for 224 px from 384 px, an upscale to
    448) and a 2x2 average: a low-pass downscale that ONNX opset 17 can express. Returns
    (small stage 4 + 5, small head, map), so that layout ``b345`` yields all four levels and the
    head's map stays the last one pooled.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, small_view: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.small_head = copy.deepcopy(head).eval().requires_grad_(False)
        self.small_view = small_view

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        double = (2 * self.small_view, 2 * self.small_view)
        upscaled = nn.functional.interpolate(image, size=double, mode="bilinear")
        low, mid, start = self.trunk(nn.functional.avg_pool2d(upscaled, 2))
        _, _, full = self.trunk(image)
        return torch.cat([low, mid], dim=1), self.small_head(start), full


def with_small_view(network: Network, small_view: int) -> Network:
    """``network`` with :class:`TwoViewTrunk` around its trunk (unchanged if ``small_view`` is
    0); the head stays the one fine-tuning trains."""
    if not small_view:
        return network
    return replace(network, trunk=TwoViewTrunk(network.trunk, network.head, small_view).eval())
