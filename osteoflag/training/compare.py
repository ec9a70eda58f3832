"""Frozen-feature baselines for the model card: the bundle's backbone without fine-tuning, and
the other architecture, each scored on the published split and in the same grouped 5-fold CV."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from osteoflag.training import classifier, metrics
from osteoflag.training.backbones import FeatureLayout
from osteoflag.training.networks import Architecture, FeatureGraph, build_network, default_init
from osteoflag.training.prepared import Prepared, TrainOptions, graph_outputs, input_spec
from osteoflag.training.splits import group_folds, group_holdout

logger = logging.getLogger(__name__)


def lightgbm_protocols(prep: Prepared, options: TrainOptions, x: np.ndarray) -> dict[str, object]:
    """Published-split test metrics and grouped-CV AUCs of LightGBM on fixed features ``x``."""
    split = np.array([s.split for s in prep.samples])
    out: dict[str, object] = {}
    train, val, test = (np.flatnonzero(split[prep.primary] == s) for s in ("train", "val", "test"))
    if len(train) and len(val) and len(test):
        fitted = classifier.train_classifier(
            x[train], prep.labels[train], x[val], prep.labels[val], options.booster
        )
        thr, _ = metrics.choose_threshold(prep.labels[val], fitted.predict(x[val]), None)
        out["published_test"] = metrics.binary_metrics(
            prep.labels[test], fitted.predict(x[test]), thr
        )
    idx = prep.primary
    y, g = prep.labels[idx], prep.groups[idx]
    aucs = []
    for k, (tr, te) in enumerate(group_folds(y, g, options.folds, options.seed)):
        a, b = group_holdout(y[tr], g[tr], 0.15, options.seed + k)
        fit, stop = idx[tr[a]], idx[tr[b]]
        fitted = classifier.train_classifier(
            x[fit], prep.labels[fit], x[stop], prep.labels[stop], options.booster
        )
        aucs.append(float(metrics.binary_metrics(y[te], fitted.predict(x[idx[te]]), 0.5)["auc"]))
    mean, lo, hi = metrics.mean_ci(aucs)
    out["cv_auc_mean"], out["cv_auc_ci95_t"], out["cv_fold_aucs"] = mean, [lo, hi], aucs
    return out


#: The model card's comparison backbones, with the layout each is compared with when it is not
#: the bundle's own (EfficientNet-Lite1/2 are measured by the recipe table, not on every run).
BASELINE_LAYOUT = {
    Architecture.VGG16: FeatureLayout.B345,
    Architecture.EFFICIENTNET_LITE0: FeatureLayout.B5_AVG,
}


def frozen_features(
    prep: Prepared, options: TrainOptions, architecture: Architecture
) -> np.ndarray:
    """Frozen features of ``architecture`` for every sample, through onnxruntime (cached)."""
    init = default_init(architecture)
    spec = input_spec(replace(options, architecture=architecture, init=init))
    network = build_network(architecture, init, seed=options.seed)
    model = FeatureGraph(network.trunk, network.head, BASELINE_LAYOUT[architecture]).eval()
    out, _ = graph_outputs(
        model,
        prep.samples,
        spec,
        options.work / f"{architecture.value}_frozen.onnx",
        options,
        desc=f"{architecture.value} (frozen)",
    )
    return out["features"]
