"""Thresholds, per-class figures and fold intervals; the binary metrics and bootstrap intervals
themselves are :mod:`osteoflag.validation.metrics` (shared with ``evaluate`` and ``validate``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_curve

from osteoflag.errors import TrainingError
from osteoflag.validation.metrics import binary_metrics as binary_metrics
from osteoflag.validation.metrics import bootstrap_ci as bootstrap_ci


def choose_threshold(
    y: np.ndarray, p: np.ndarray, target_sensitivity: float | None
) -> tuple[float, str]:
    """Youden's J on these (validation) scores, or the highest threshold reaching a sensitivity."""
    fpr, tpr, thresholds = roc_curve(y, p)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if target_sensitivity is None:
        best = int(np.argmax(tpr - fpr))
        return float(thresholds[best]), "youden_j_on_validation"
    ok = np.flatnonzero(tpr >= target_sensitivity)
    if ok.size == 0:
        raise TrainingError(f"no threshold reaches sensitivity {target_sensitivity}")
    return float(thresholds[ok[0]]), f"sensitivity>={target_sensitivity}_on_validation"


def per_class(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """Precision/recall/F1 of each class, the way the published table reports them."""
    m = binary_metrics(y, p, threshold)
    (tn, fp), (fn, _) = m["confusion"]
    neg_p = tn / (tn + fn) if tn + fn else 0.0
    neg_r = tn / (tn + fp) if tn + fp else math.nan  # no image without a fracture
    return {
        "fracture": {
            "precision": float(m["precision"]),
            "recall": float(m["recall"]),
            "f1": float(m["f1"]),
        },
        "nofracture": {
            "precision": neg_p,
            "recall": neg_r,
            "f1": 2 * neg_p * neg_r / (neg_p + neg_r) if neg_p + neg_r > 0 else 0.0,
        },
    }


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a t-based 95% interval over folds (5 folds: t = 2.776)."""
    v = np.asarray(values, dtype=float)
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 10: 2.262}.get(len(v), 2.0)
    half = t * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)
