"""Binary metrics of fracture probabilities (positive class = fracture), in numpy alone.

``evaluate``, ``validate`` and ``adapt`` run in the runtime install (no scikit-learn), and
training scores its folds with the same functions, so every figure osteoflag prints is computed
one way. Bootstrap intervals resample whole groups when groups are known: augmented copies of
one radiograph, or several views of one patient, are not independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int_]

#: Target sensitivities of the threshold table.
TARGET_SENSITIVITIES = (0.80, 0.90, 0.95)
RELIABILITY_BINS = 10


def auc(y: Sequence[int] | Ints, p: Sequence[float] | Floats) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half); NaN when only
    one class is present."""
    yt = np.asarray(y).astype(int)
    pp = np.asarray(p, dtype=float)
    positives = int(yt.sum())
    negatives = len(yt) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(pp, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average_rank = (upper - (counts - 1) / 2.0)[inverse]
    u = float(average_rank[yt == 1].sum()) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def binary_metrics(
    y: Sequence[int] | Ints, p: Sequence[float] | Floats, threshold: float
) -> dict[str, Any]:
    """The ``evaluate`` metrics (exactly its keys): ``confusion`` is ``[[tn, fp], [fn, tp]]``.
    Recall (sensitivity) without a fracture, and specificity without an image free of one, are
    NaN (printed ``null``): the images cannot give them, and 0 would read as a failure."""
    yt = np.asarray(y).astype(int)
    pp = np.asarray(p, dtype=float)
    pred = (pp >= threshold).astype(int)
    tp = int(((pred == 1) & (yt == 1)).sum())
    tn = int(((pred == 0) & (yt == 0)).sum())
    fp = int(((pred == 1) & (yt == 0)).sum())
    fn = int(((pred == 0) & (yt == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else math.nan
    return {
        "n": len(yt),
        "accuracy": (tp + tn) / len(yt) if len(yt) else 0.0,
        "auc": auc(yt, pp),
        "precision": precision,
        "recall": recall,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
        "threshold": float(threshold),
        "confusion": [[tn, fp], [fn, tp]],
    }


def finite(value: Any) -> Any:
    """Replace NaN and infinities by ``None`` all the way down, so that printed results are
    standard JSON (``null``: a figure the images cannot give, such as AUC on one class)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def group_means(y: Ints, p: Floats, groups: Sequence[str]) -> tuple[Ints, Floats]:
    """One row per group: its highest label and its mean probability (one vote per patient)."""
    g = np.asarray(groups)
    uniq = sorted(set(g.tolist()))
    yg = np.array([y[g == k].max() for k in uniq], dtype=int)
    pg = np.array([p[g == k].mean() for k in uniq], dtype=float)
    return yg, pg


def bootstrap_ci(
    y: Ints,
    p: Floats,
    threshold: float,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of AUC, accuracy, sensitivity and specificity."""
    rng = np.random.default_rng(seed)
    units = np.asarray(groups) if groups is not None else np.arange(len(y))
    uniq, inverse = np.unique(units, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    draws: dict[str, list[float]] = {
        "auc": [],
        "accuracy": [],
        "sensitivity": [],
        "specificity": [],
    }
    for _ in range(n_boot):
        pick = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
        yb, pb = y[pick], p[pick]
        flagged = pb >= threshold
        draws["accuracy"].append(float((flagged.astype(int) == yb).mean()))
        if 0 < yb.sum() < len(yb):
            draws["auc"].append(auc(yb, pb))
            draws["sensitivity"].append(float(flagged[yb == 1].mean()))
            draws["specificity"].append(float((~flagged[yb == 0]).mean()))
    return {name: _percentiles(values) for name, values in draws.items()}


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))


def reliability(y: Ints, p: Floats, bins: int = RELIABILITY_BINS) -> list[dict[str, Any]]:
    """Observed fracture rate against mean probability in equal-width probability bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows: list[dict[str, Any]] = []
    for k in range(bins):
        inside = which == k
        n = int(inside.sum())
        rows.append(
            {
                "low": float(edges[k]),
                "high": float(edges[k + 1]),
                "n": n,
                "mean_probability": float(p[inside].mean()) if n else None,
                "fracture_rate": float(y[inside].mean()) if n else None,
            }
        )
    return rows


def threshold_table(
    y: Ints, p: Floats, targets: Sequence[float] = TARGET_SENSITIVITIES
) -> list[dict[str, Any]]:
    """For each target sensitivity, the highest threshold reaching it and what it gives."""
    positives = np.sort(p[y == 1])[::-1]
    negatives = p[y == 0]
    rows: list[dict[str, Any]] = []
    for target in targets:
        if len(positives) == 0:
            rows.append({"target_sensitivity": target, "threshold": None})
            continue
        needed = max(1, math.ceil(target * len(positives) - 1e-9))
        threshold = float(positives[needed - 1])
        rows.append(
            {
                "target_sensitivity": target,
                "threshold": threshold,
                "sensitivity": float((positives >= threshold).mean()),
                "specificity": float((negatives < threshold).mean()) if len(negatives) else None,
            }
        )
    return rows


def clinical_metrics(
    y: Sequence[int] | Ints, p: Sequence[float] | Floats, threshold: float
) -> dict[str, Any]:
    """:func:`binary_metrics` plus ``sensitivity``, the clinical name of ``recall``."""
    result = binary_metrics(y, p, threshold)
    result["sensitivity"] = result["recall"]
    return result


def youden_threshold(y: Ints, p: Floats) -> float:
    """The threshold maximising sensitivity + specificity - 1 (the highest one among ties)."""
    candidates = np.unique(p)[::-1]
    positives, negatives = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    flagged = p[np.newaxis, :] >= candidates[:, np.newaxis]
    tpr = (flagged & (y == 1)).sum(axis=1) / positives
    fpr = (flagged & (y == 0)).sum(axis=1) / negatives
    return float(candidates[int(np.argmax(tpr - fpr))])
