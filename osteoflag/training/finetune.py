"""Fine-tuning a backbone's head (VGG16 block 5, EfficientNet-Lite0 stages 6-7) on cached maps.

The trunk is frozen, so its output map is computed once per image (through onnxruntime, see
``features``) and every epoch only runs the head: that is what makes fine-tuning fit a 2-core
CPU. Augmentation works on the cached maps: random flips, transposes and random crops of the
map, which a global pooling head tolerates. The epoch kept is the one with the best validation
AUC.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings; the defaults finish in minutes per fold on this CPU."""

    epochs: int = 3
    batch_size: int = 32
    lr_backbone: float = 3e-5
    lr_classifier: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.3
    seed: int = 0


class _Classifier(nn.Module):
    """Head + a linear probe on scaled pooled features (used only while training)."""

    def __init__(self, head: nn.Module, features: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.head = head
        self.scale = scale
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.head(x) / self.scale
        logits: torch.Tensor = self.linear(self.drop(feats))
        return logits.squeeze(1)


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    if rng.random() < 0.5:
        x = x.flip(3)
    if rng.random() < 0.5:
        x = x.flip(2)
    if rng.random() < 0.5 and x.shape[2] == x.shape[3]:
        x = x.transpose(2, 3)  # with the flips: all eight right-angle orientations
    h, w = x.shape[2], x.shape[3]
    ch, cw = (
        max(2, h - int(rng.integers(0, h // 7 + 1))),
        max(2, w - int(rng.integers(0, w // 7 + 1))),
    )
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return x[:, :, top : top + ch, left : left + cw]


def head_features(head: nn.Module, maps: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Pooled head output for cached maps (torch; serving goes through ONNX instead)."""
    head.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(maps), batch_size):
            out.append(head(torch.from_numpy(maps[i : i + batch_size].astype(np.float32))).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def finetune(
    head: nn.Module,
    maps: np.ndarray,
    labels: np.ndarray,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    config: FinetuneConfig,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``head`` on ``maps[fit_idx]``; return a copy at the best validation AUC and the log."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = copy.deepcopy(head)
    init_feats = head_features(head, maps[fit_idx[:256]])
    # One scale for all features: a per-feature one turned EfficientNet's near-constant ReLU6
    # channels (standard deviation ~0.005) into huge logits, and fine-tuning never recovered.
    scale = float(init_feats.std()) or 1.0
    model = _Classifier(head, init_feats.shape[1], scale, config.dropout)
    opt = torch.optim.AdamW(
        [
            {"params": model.head.parameters(), "lr": config.lr_backbone},
            {"params": model.linear.parameters(), "lr": config.lr_classifier},
        ],
        weight_decay=config.weight_decay,
    )
    y = torch.from_numpy(labels.astype(np.float32))
    pos_weight = torch.tensor(
        float((labels[fit_idx] == 0).sum()) / max(1, int(labels[fit_idx].sum()))
    )
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    steps = int(np.ceil(len(fit_idx) / config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[config.lr_backbone, config.lr_classifier], total_steps=steps * config.epochs
    )
    best_auc, best_state, log = -1.0, copy.deepcopy(head.state_dict()), []
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(fit_idx)
        total = 0.0
        for i in tqdm(
            range(steps),
            desc=f"fine-tune epoch {epoch + 1}/{config.epochs}",
            mininterval=10,
            leave=False,
        ):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            x = _augment(torch.from_numpy(maps[idx].astype(np.float32)), rng)
            loss = loss_fn(model(x), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        with torch.no_grad():
            logits = np.concatenate(
                [
                    model(torch.from_numpy(maps[val_idx[i : i + 64]].astype(np.float32))).numpy()
                    for i in range(0, len(val_idx), 64)
                ]
            )
        auc = float(roc_auc_score(labels[val_idx], logits))
        log.append({"epoch": epoch + 1, "train_loss": total / len(fit_idx), "val_auc": auc})
        logger.info("fine-tune epoch", extra={"action": "finetune", **log[-1]})
        if auc > best_auc:
            best_auc, best_state = auc, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    head.eval()
    return head, log
