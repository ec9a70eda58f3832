"""``adapt``: refit a bundle's LightGBM head on a site's labelled images, backbone unchanged.

The site data are judged by grouped cross-validation (no patient or near-duplicate cluster on
both sides of a fold): each fold refits the head exactly as the final fit does and is scored on
its held-out groups beside the base bundle on the same images. The head is LightGBM on the
backbone's features (:func:`osteoflag.training.classifier.train_classifier`: one booster per view
of the manifest's ``features.views``, averaged, and the linear and cell terms when the base
bundle has them, as the bundle was built), early-stopped on a
grouped hold-out of the site's fitting groups; when the base bundle's own training images are
given, their features join every fit so the head keeps what it knew. The threshold is Youden's
J on the pooled out-of-fold site scores, i.e. chosen for the site's images; when the base
bundle has a calibration, the adapted one gets a Platt calibration fitted on those same scores
(the threshold is then on the calibrated scale, as the predictor serves it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from osteoflag.errors import UsageError
from osteoflag.inference.bundle import CalibrationSection
from osteoflag.training.classifier import BoosterConfig, Classifier, train_classifier
from osteoflag.training.ensemble import rounds
from osteoflag.validation import metrics
from osteoflag.validation.folds import group_folds, group_holdout
from osteoflag.validation.scoring import Scored

logger = logging.getLogger(__name__)

#: Fewest images of each label the site data need to fit a head at all.
MIN_IMAGES_PER_LABEL = 20
#: Fewest groups of each label per fold: every test fold and every early-stopping hold-out
#: then holds both labels.
MIN_GROUPS_PER_LABEL_PER_FOLD = 2

Features = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int_]


@dataclass(frozen=True)
class BaseRows:
    """The base bundle's own training images: ``fit`` rows join every fit, ``test`` rows (its
    held-out test split, when the folder has one) show what adapting costs on its source."""

    fit: Scored
    test: Scored | None = None


@dataclass(frozen=True)
class Adapted:
    """The refitted head, its calibration (when the base bundle had one) and the evidence."""

    classifier: Classifier
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationSection | None = None


def platt(y: Labels, scores: npt.NDArray[np.float64]) -> CalibrationSection:
    """Platt scaling of ``scores`` (``sigmoid(a * logit(score) + b)``) fitted by Newton's
    method on out-of-fold site scores: numpy alone, so ``adapt`` needs no scikit-learn."""
    s = np.clip(scores, 1e-7, 1.0 - 1e-7)
    x = np.log(s / (1.0 - s))
    a, b = 1.0, 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = p * (1.0 - p) + 1e-9
        gradient = np.array([((p - y) * x).sum(), (p - y).sum()])
        hessian = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        a, b = a - float(step[0]), b - float(step[1])
        if np.abs(step).max() < 1e-9:
            break
    if not a > 0:  # scores unrelated to the labels: keep the ranking
        a, b = 1.0, 0.0
    return CalibrationSection(method="platt", a=a, b=b, fitted_on="site out-of-fold scores")


def check_enough(labels: Labels, groups: list[str], folds: int) -> None:
    """Refuse, in numbers, site data too small to fit a head or to judge it."""
    need_groups = MIN_GROUPS_PER_LABEL_PER_FOLD * folds
    counts = []
    short = False
    for label, name in ((1, "fracture"), (0, "nofracture")):
        inside = labels == label
        images = int(inside.sum())
        n_groups = len({g for g, keep in zip(groups, inside, strict=True) if keep})
        counts.append(f"{images} {name} images in {n_groups} groups")
        short = short or images < MIN_IMAGES_PER_LABEL or n_groups < need_groups
    if short:
        raise UsageError(
            f"adapt: the site data have {' and '.join(counts)}; refitting needs at least "
            f"{MIN_IMAGES_PER_LABEL} images in {need_groups} groups of each label "
            f"({folds}-fold grouped cross-validation)"
        )


def _fit(
    site: Scored, rows: npt.NDArray[np.int_], base: BaseRows | None, config: BoosterConfig
) -> Classifier:
    """One head: site ``rows`` (+ base rows) fitted, a grouped site hold-out for early stopping."""
    y = site.labels[rows]
    inner_fit, inner_val = group_holdout(y, [site.groups[i] for i in rows], seed=config.seed)
    fit_rows, val_rows = rows[inner_fit], rows[inner_val]
    x_fit, y_fit = site.features[fit_rows], y[inner_fit]
    if base is not None:
        x_fit = np.concatenate([x_fit, base.fit.features])
        y_fit = np.concatenate([y_fit, base.fit.labels])
    maps = None
    if config.cells:
        site_maps, base_maps = _maps(site), None if base is None else _maps(base.fit)
        maps_fit = site_maps[fit_rows]
        if base_maps is not None:
            maps_fit = np.concatenate([maps_fit, base_maps])
        maps = (maps_fit, site_maps[val_rows])
    return train_classifier(x_fit, y_fit, site.features[val_rows], y[inner_val], config, maps=maps)


def _maps(scored: Scored) -> npt.NDArray[np.float16]:
    if scored.maps is None:
        raise UsageError("adapt: the bundle's cell term needs the backbone's map of every image")
    return scored.maps


def _predict(
    classifier: Classifier, scored: Scored, rows: npt.NDArray[np.int_] | None = None
) -> npt.NDArray[np.float64]:
    """The classifier's probabilities of ``scored``'s ``rows`` (all when None)."""
    picked = np.arange(len(scored.features)) if rows is None else rows
    maps = None if scored.maps is None else scored.maps[picked]
    return classifier.predict(scored.features[picked], maps)


def adapt_head(
    site: Scored,
    base: BaseRows | None,
    base_threshold: float,
    folds: int,
    config: BoosterConfig,
    calibrate: bool = False,
) -> Adapted:
    """Cross-validate on the site, calibrate (when asked) and choose the threshold on the
    pooled out-of-fold scores, fit the final head, report both."""
    y, groups = site.labels, site.groups
    check_enough(y, groups, folds)
    out_of_fold = np.zeros(len(y), dtype=float)
    fold_rows: list[dict[str, Any]] = []
    for number, (fit_rows, test_rows) in enumerate(group_folds(y, groups, folds, config.seed)):
        fitted = _fit(site, fit_rows, base, config)
        out_of_fold[test_rows] = _predict(fitted, site, test_rows)
        fold_rows.append(
            {
                "fold": number,
                "n": len(test_rows),
                "base_auc": metrics.auc(y[test_rows], site.probabilities[test_rows]),
                "adapted_auc": metrics.auc(y[test_rows], out_of_fold[test_rows]),
                "rounds": rounds(fitted.booster),
            }
        )
        logger.info("adapt fold done", extra={"action": "adapt_fold", **fold_rows[-1]})
    calibration = platt(y, out_of_fold) if calibrate else None
    if calibration is not None:  # served probabilities, threshold and figures: calibrated
        out_of_fold = calibration.apply(out_of_fold)
    threshold = metrics.youden_threshold(y, out_of_fold)
    final = _fit(site, np.arange(len(y)), base, config)
    report: dict[str, Any] = {
        "site_out_of_fold": metrics.clinical_metrics(y, out_of_fold, threshold),
        "site_cv": _site_cv(site, out_of_fold, fold_rows, (base_threshold, threshold)),
    }
    if base is not None and base.test is not None:
        test = base.test
        report["base_source_test"] = {
            "n": len(test.samples),
            "base_auc": metrics.auc(test.labels, test.probabilities),
            "adapted_auc": metrics.auc(test.labels, _predict(final, test)),
        }
    return Adapted(classifier=final, threshold=threshold, metrics=report, calibration=calibration)


def _site_cv(
    site: Scored,
    out_of_fold: npt.NDArray[np.float64],
    folds: list[dict[str, Any]],
    thresholds: tuple[float, float],
) -> dict[str, Any]:
    """Base (at its threshold) against adapted (at the new one) on the site's held-out groups:
    pooled, per fold, one image per cluster, one vote per group."""
    y = site.labels
    cv: dict[str, Any] = {
        "folds": folds,
        "base_auc_mean": float(np.mean([f["base_auc"] for f in folds])),
        "adapted_auc_mean": float(np.mean([f["adapted_auc"] for f in folds])),
        "pooled": {
            "n": len(y),
            "base": metrics.clinical_metrics(y, site.probabilities, thresholds[0]),
            "adapted": metrics.clinical_metrics(y, out_of_fold, thresholds[1]),
        },
    }
    representative = np.array([s.representative for s in site.samples])
    if not representative.all():
        keep = representative
        cv["representatives"] = {
            "n": int(keep.sum()),
            "base_auc": metrics.auc(y[keep], site.probabilities[keep]),
            "adapted_auc": metrics.auc(y[keep], out_of_fold[keep]),
        }
    if any(s.group for s in site.samples):
        base_g = metrics.group_means(y, site.probabilities, site.groups)
        adapted_g = metrics.group_means(y, out_of_fold, site.groups)
        cv["per_group"] = {
            "n": len(base_g[0]),
            "base_auc": metrics.auc(*base_g),
            "adapted_auc": metrics.auc(*adapted_g),
        }
    return cv
