"""The fits a training run makes and how each is scored.

- ``published``: OsteoAI train -> early stopping/threshold on val -> test (:func:`fit_on`,
  :func:`evaluate`); this model is the bundle.
- ``cv``: grouped, stratified k-fold (:func:`cv_fold`, merged by :func:`summarise_cv`).
- INT8 rows beside any fit (:func:`int8_rows`), and the comparisons of the model card:
  feature layouts (:func:`compare_layouts`) and frozen baselines (:func:`baselines`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from osteoflag.training import calibrate, classifier, metrics
from osteoflag.training.backbones import FeatureLayout, TrainingError
from osteoflag.training.model import (
    FittedModel,
    Inputs,
    fit_model,
    head_onnx_features,
    layout_features,
)
from osteoflag.training.networks import Network, layout_text
from osteoflag.training.prepared import Prepared, Sources, TrainOptions
from osteoflag.training.splits import assert_disjoint, group_folds, group_holdout

logger = logging.getLogger(__name__)


def evaluate(prep: Prepared, model: FittedModel, x: Inputs, idx: np.ndarray) -> dict[str, object]:
    p = model.predict(x[idx])
    result = metrics.binary_metrics(prep.labels[idx], p, model.threshold)
    result |= calibrate.quality(prep.labels[idx], p)
    result["ci95"] = metrics.bootstrap_ci(prep.labels[idx], p, model.threshold, prep.groups[idx])
    result["per_class"] = metrics.per_class(prep.labels[idx], p, model.threshold)
    result["scores"] = {"y": prep.labels[idx].tolist(), "p": p.tolist()}
    return result


def per_cluster(
    prep: Prepared, model: FittedModel, x: Inputs, idx: np.ndarray
) -> dict[str, object]:
    """Mean probability per group: one vote per radiograph group, not per augmented copy."""
    p = model.predict(x[idx])
    groups = prep.groups[idx]
    uniq = sorted(set(groups.tolist()))
    yg = np.array([prep.labels[idx][groups == g].max() for g in uniq])
    pg = np.array([p[groups == g].mean() for g in uniq])
    return metrics.binary_metrics(yg, pg, model.threshold)


def fit_on(
    prep: Prepared,
    options: TrainOptions,
    head0: torch.nn.Module,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    layout: FeatureLayout,
    tune: bool,
    tag: str,
) -> tuple[FittedModel, Inputs]:
    """One fit of the bundle's procedure (see :func:`fit_model`), logged with its protocol."""
    if not tag.startswith("published"):  # the published split is honoured, leaks included
        assert_disjoint(prep.groups, fit_idx, val_idx)
    for side, idx in (("fitting", fit_idx), ("validation", val_idx)):
        # the booster, the calibration and the threshold each need both labels; a grouped
        # hold-out of a source with few groups can draw one label only
        if len(set(prep.labels[idx].tolist())) < 2:
            raise TrainingError(
                f"{tag}: the {side} images ({len(idx)}) hold one label only; the source "
                "has too few groups of each label for it: add images, or leave the protocol out"
            )
    logger.info(
        "fitting",
        extra={"action": "fit", "protocol": tag, "fit": len(fit_idx), "val": len(val_idx)},
    )
    frozen = not tune or options.tuning.epochs == 0
    shared = frozen and not prep.copies
    return fit_model(
        head0,
        prep.trunk,
        prep.labels,
        fit_idx,
        val_idx,
        layout,
        options.tuning if tune else None,
        options.bundle_booster,
        options.target_sensitivity,
        options.work,
        options.threads,
        options.calibration,
        prep.copies,
        prep.untuned(head0, options.work / "untuned.onnx", options.threads, options.cells)
        if shared
        else None,
    )


def other_split(prep: Prepared, options: TrainOptions) -> tuple[np.ndarray, np.ndarray]:
    """The other source's share of a fit trained on both sources: about 85% of its groups to
    fit, 15% to validate (nothing when training uses the primary source alone)."""
    if options.train_on is Sources.PRIMARY or not len(prep.other):
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    a, b = group_holdout(prep.labels[prep.other], prep.groups[prep.other], 0.15, options.seed)
    return prep.other[a], prep.other[b]


def cv_fold(prep: Prepared, options: TrainOptions, network: Network, k: int) -> dict[str, Any]:
    """Fold ``k`` of the grouped CV: fit inside the fold's training groups, score its test groups.
    With ``train_on`` both, the other source joins every fold's fit and validation data.

    Folds are independent, so they can also run in separate processes and be merged with
    :func:`summarise_cv`.
    """
    idx = prep.primary
    y, g = prep.labels[idx], prep.groups[idx]
    tr, te = list(group_folds(y, g, options.folds, options.seed))[k]
    a, b = group_holdout(y[tr], g[tr], 0.15, options.seed + k)
    extra_fit, extra_val = other_split(prep, options)
    fit_idx = idx[tr[a]]
    model, x = fit_on(
        prep,
        options,
        network.head,
        np.concatenate([fit_idx, extra_fit]),
        np.concatenate([idx[tr[b]], extra_val]),
        options.layout,
        True,
        f"cv{k}",
    )
    p = model.predict(x[idx[te]])
    m = metrics.binary_metrics(y[te], p, model.threshold) | calibrate.quality(y[te], p)
    if options.int8:
        m["int8"] = int8_rows(prep, options, network, model, x, fit_idx, idx[te])
    m["fold"] = k
    m["finetune_log"] = model.finetune_log
    m["scores"] = {"index": te.tolist(), "p": p.tolist()}
    return m


def int8_rows(
    prep: Prepared,
    options: TrainOptions,
    network: Network,
    model: FittedModel,
    x: Inputs,
    calibration: np.ndarray,
    evaluate: np.ndarray,
) -> dict[str, Any]:
    """This fit's INT8 graph (calibrated on ``calibration``) scored on ``evaluate``."""
    from osteoflag.training import int8

    int8_x, calibration_images = int8.int8_features(
        network, model, prep.samples, calibration, evaluate, options
    )
    float_p = model.predict(x[evaluate])
    return int8.compare(prep.labels[evaluate], float_p, model, int8_x, calibration_images)


def summarise_cv(prep: Prepared, folds: list[dict[str, Any]]) -> dict[str, object]:
    """Mean and t-interval of the fold AUCs, plus a group bootstrap of the pooled scores."""
    idx = prep.primary
    y, g = prep.labels[idx], prep.groups[idx]
    oof = np.full(len(idx), np.nan)
    for fold in folds:
        oof[np.asarray(fold["scores"]["index"], dtype=int)] = fold["scores"]["p"]
    auc_mean, auc_lo, auc_hi = metrics.mean_ci([float(f["auc"]) for f in folds])
    acc_mean, acc_lo, acc_hi = metrics.mean_ci([float(f["accuracy"]) for f in folds])
    int8_folds = [f["int8"] for f in folds if "int8" in f]
    int8 = (
        {
            precision: {
                "auc_mean": float(np.mean([f[precision]["auc"] for f in int8_folds])),
                "accuracy_mean": float(np.mean([f[precision]["accuracy"] for f in int8_folds])),
            }
            for precision in ("float32", "int8")
        }
        | {"max_auc_drop": max(f["auc_drop"] for f in int8_folds)}
        if int8_folds
        else None
    )
    return {
        "folds": [{k: v for k, v in f.items() if k != "scores"} for f in folds],
        "int8": int8,
        "auc_mean": auc_mean,
        "auc_ci95_t": [auc_lo, auc_hi],
        "accuracy_mean": acc_mean,
        "accuracy_ci95_t": [acc_lo, acc_hi],
        "pooled_auc_ci95_group_bootstrap": metrics.bootstrap_ci(y, oof, 0.5, g)["auc"],
        "calibration": calibrate.quality(y, oof),
        "scores": {"y": y.tolist(), "p": oof.tolist()},
    }


def compare_layouts(
    prep: Prepared,
    frozen_b5: np.ndarray,
    tuned: FittedModel,
    options: TrainOptions,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
) -> dict[str, object]:
    """Published-split test metrics of each feature layout, frozen and fine-tuned.

    Fine-tuning does not depend on the layout, so the tuned head is reused and only LightGBM is
    refitted; the layout of the bundle is fixed in advance (test never chooses anything).
    ``frozen_b5`` is the untuned head's output, which :func:`baselines` shares.
    """
    tuned_b5 = head_onnx_features(
        tuned.head, prep.trunk.maps, options.work / "compare.onnx", options.threads
    )
    table: dict[str, object] = {}
    for tag, b5 in (("frozen", frozen_b5), ("finetuned", tuned_b5)):
        for layout in FeatureLayout:
            x = layout_features(layout, prep.trunk, b5)
            fitted = classifier.train_classifier(
                x[train], prep.labels[train], x[val], prep.labels[val], options.booster
            )
            threshold, _ = metrics.choose_threshold(
                prep.labels[val], fitted.predict(x[val]), options.target_sensitivity
            )
            table[f"{layout.value}_{tag}"] = {
                "layout": layout_text(options.architecture, layout),
                "head": tag,
                "test": metrics.binary_metrics(
                    prep.labels[test], fitted.predict(x[test]), threshold
                ),
            }
    return table


def baselines(prep: Prepared, options: TrainOptions, frozen_b5: np.ndarray) -> dict[str, object]:
    """Frozen-feature baselines on the same protocols: this backbone (its untuned head's output
    ``frozen_b5``) and the comparison backbones (``compare.BASELINE_LAYOUT``) it is not."""
    from osteoflag.training import compare

    this = options.architecture
    out: dict[str, object] = {
        f"{this.value}_{options.layout.value}_frozen": compare.lightgbm_protocols(
            prep, options, layout_features(options.layout, prep.trunk, frozen_b5)
        )
    }
    for other, layout in compare.BASELINE_LAYOUT.items():
        if other is not this:
            out[f"{other.value}_{layout.value}_frozen"] = compare.lightgbm_protocols(
                prep, options, compare.frozen_features(prep, options, other)
            )
    return out
