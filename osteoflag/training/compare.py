"""Frozen-feature baselines for the model card: VGG16 b345 without fine-tuning, and
EfficientNet-Lite0, each scored on the published split and in the same grouped 5-fold CV."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from osteoflag.inference.pixels import ColourOrder, InputSpec
from osteoflag.training import classifier, efficientnet, export, features, metrics
from osteoflag.training.backbones import Init, normalisation_for
from osteoflag.training.splits import group_folds, group_holdout

if TYPE_CHECKING:
    from osteoflag.training.pipeline import Prepared, TrainOptions

logger = logging.getLogger(__name__)


def lightgbm_protocols(prep: Prepared, options: TrainOptions, x: np.ndarray) -> dict[str, object]:
    """Published-split test metrics and grouped-CV AUCs of LightGBM on fixed features ``x``."""
    split = np.array([s.split for s in prep.samples])
    out: dict[str, object] = {}
    train, val, test = (np.flatnonzero(split[prep.primary] == s) for s in ("train", "val", "test"))
    if len(train) and len(val) and len(test):
        booster = classifier.train_booster(
            x[train], prep.labels[train], x[val], prep.labels[val], options.booster
        )
        thr, _ = metrics.choose_threshold(
            prep.labels[val], classifier.predict(booster, x[val]), None
        )
        out["published_test"] = metrics.binary_metrics(
            prep.labels[test], classifier.predict(booster, x[test]), thr
        )
    idx = prep.primary
    y, g = prep.labels[idx], prep.groups[idx]
    aucs = []
    for k, (tr, te) in enumerate(group_folds(y, g, options.folds, options.seed)):
        a, b = group_holdout(y[tr], g[tr], 0.15, options.seed + k)
        fit, stop = idx[tr[a]], idx[tr[b]]
        booster = classifier.train_booster(
            x[fit], prep.labels[fit], x[stop], prep.labels[stop], options.booster
        )
        aucs.append(
            float(
                metrics.binary_metrics(y[te], classifier.predict(booster, x[idx[te]]), 0.5)["auc"]
            )
        )
    mean, lo, hi = metrics.mean_ci(aucs)
    out["cv_auc_mean"], out["cv_auc_ci95_t"], out["cv_fold_aucs"] = mean, [lo, hi], aucs
    return out


def efficientnet_features(prep: Prepared, options: TrainOptions) -> np.ndarray:
    """EfficientNet-Lite0 pooled features of every sample, through onnxruntime (cached)."""
    norm = normalisation_for("efficientnet_lite0", Init.IMAGENET)
    spec = InputSpec(
        size=(224, 224),
        resize_mode=options.resize_mode,
        colour_order=ColourOrder.RGB,
        mean=norm.mean,
        std=norm.std,
    )
    model = efficientnet.build()
    path = options.work / "efficientnet_lite0.onnx"
    inputs = np.stack([features.prepare(s, spec) for s in prep.samples[: export.PARITY_IMAGES]])
    export.export_onnx(model, torch.from_numpy(inputs[:1]), path)
    export.check_parity(model, path, inputs, options.threads)
    cache = features.FeatureCache(
        options.cache or options.work / "cache", features.sha256_bytes(path.read_bytes())
    )
    out = features.run_images(
        export.session(path, options.threads), prep.samples, spec, cache, desc="efficientnet-lite0"
    )
    return out["features"]
