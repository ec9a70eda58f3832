"""Binary metrics (positive class = fracture), thresholds and bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from osteoflag.training.backbones import TrainingError


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


def binary_metrics(
    y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, Any]:
    """The contract's metrics: ``confusion`` is ``[[tn, fp], [fn, tp]]``."""
    yt = np.asarray(y).astype(int)
    pp = np.asarray(p, dtype=float)
    pred = (pp >= threshold).astype(int)
    tp = int(((pred == 1) & (yt == 1)).sum())
    tn = int(((pred == 0) & (yt == 0)).sum())
    fp = int(((pred == 1) & (yt == 0)).sum())
    fn = int(((pred == 0) & (yt == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    auc = float(roc_auc_score(yt, pp)) if len(set(yt.tolist())) == 2 else float("nan")
    return {
        "n": len(yt),
        "accuracy": (tp + tn) / len(yt) if len(yt) else 0.0,
        "auc": auc,
        "precision": precision,
        "recall": recall,
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "threshold": float(threshold),
        "confusion": [[tn, fp], [fn, tp]],
    }


def per_class(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """Precision/recall/F1 of each class, the way the published table reports them."""
    m = binary_metrics(y, p, threshold)
    (tn, fp), (fn, _) = m["confusion"]
    neg_p = tn / (tn + fn) if tn + fn else 0.0
    neg_r = tn / (tn + fp) if tn + fp else 0.0
    return {
        "fracture": {
            "precision": float(m["precision"]),
            "recall": float(m["recall"]),
            "f1": float(m["f1"]),
        },
        "nofracture": {
            "precision": neg_p,
            "recall": neg_r,
            "f1": 2 * neg_p * neg_r / (neg_p + neg_r) if neg_p + neg_r else 0.0,
        },
    }


def bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of AUC and accuracy, resampling groups when given.

    Resampling whole groups matters: augmented copies of one radiograph are not independent.
    """
    rng = np.random.default_rng(seed)
    units = np.asarray(groups) if groups is not None else np.arange(len(y))
    uniq, inverse = np.unique(units, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    aucs: list[float] = []
    accs: list[float] = []
    for _ in range(n_boot):
        pick = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
        yb, pb = y[pick], p[pick]
        accs.append(float(((pb >= threshold).astype(int) == yb).mean()))
        if 0 < yb.sum() < len(yb):
            aucs.append(float(roc_auc_score(yb, pb)))
    return {"auc": _pct(aucs), "accuracy": _pct(accs)}


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a t-based 95% interval over folds (5 folds: t = 2.776)."""
    v = np.asarray(values, dtype=float)
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 10: 2.262}.get(len(v), 2.0)
    half = t * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _pct(values: list[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))
