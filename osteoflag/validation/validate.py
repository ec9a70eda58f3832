"""``validate``: how a bundle does on a site's own labelled images, with honest uncertainty.

The figures are the ``evaluate`` metrics at the bundle's threshold, 95% bootstrap intervals
(resampling groups when the set names them), the same metrics with one vote per group, a
breakdown per ``BodyPartExamined``, a reliability table and the thresholds that reach target
sensitivities on these images. They cover the images the daemon would report: those the
bundle's out-of-distribution guard skips are counted and listed, not scored.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from osteoflag.errors import UsageError
from osteoflag.inference.bundle import Bundle
from osteoflag.validation import metrics
from osteoflag.validation.scoring import Scored

if TYPE_CHECKING:
    from osteoflag.inference.predictor import Predictor

#: A body part with fewer images gets no AUC (too few to mean anything), only its counts.
MIN_PART_AUC = 10


def served(predictor: Predictor, scored: Scored, data: Path) -> tuple[Scored, int]:
    """The rows the daemon would report, and how many the bundle's out-of-distribution guard
    skips (added to ``skipped`` with the daemon's reason): a site's figures, or a head refitted
    on its images, must not count images it would never get a result for. A set the guard
    skips whole is bad usage."""
    reasons = predictor.outside(scored.features)
    keep = np.array([reason is None for reason in reasons], dtype=bool)
    outside = [
        (sample.path, reason)
        for sample, reason in zip(scored.samples, reasons, strict=True)
        if reason is not None
    ]
    if outside and not keep.any():
        raise UsageError(
            f"--data {data}: the bundle's out-of-distribution guard skips all "
            f"{len(outside)} images; the daemon would report none of them"
        )
    kept = scored.subset(keep)
    return replace(kept, skipped=[*scored.skipped, *outside]), len(outside)


def summarise(
    bundle: Bundle, scored: Scored, data: Path, skipped_by_guard: int = 0
) -> dict[str, Any]:
    """The ``validate`` result as one JSON-ready object (NaN becomes ``null``); ``scored`` holds
    the served images (``n``), ``skipped_by_guard`` counts those the guard left out."""
    y, p = scored.labels, scored.probabilities
    threshold = bundle.threshold
    if len(y) == 0:
        result: dict[str, Any] = {
            "n": 0,
            "model": bundle.model_id,
            "data": str(data),
            "skipped_by_guard": skipped_by_guard,
        }
        return result
    has_groups = any(s.group for s in scored.samples)
    result = {
        "model": bundle.model_id,
        "data": str(data),
        **metrics.clinical_metrics(y, p, threshold),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "ci95": metrics.bootstrap_ci(y, p, threshold, scored.groups if has_groups else None),
        "bootstrap_unit": "group" if has_groups else "image",
        "body_parts": _by_body_part(y, p, threshold, scored.body_parts),
        "reliability": metrics.reliability(y, p),
        "thresholds": metrics.threshold_table(y, p),
        "skipped": [{"file": str(path), "reason": reason} for path, reason in scored.skipped],
        "skipped_by_guard": skipped_by_guard,
    }
    if has_groups:
        yg, pg = metrics.group_means(y, p, scored.groups)
        result["per_group"] = metrics.clinical_metrics(yg, pg, threshold)
    finite: dict[str, Any] = metrics.finite(result)
    return finite


def _by_body_part(
    y: np.ndarray, p: np.ndarray, threshold: float, parts: list[str]
) -> dict[str, dict[str, Any]]:
    names = np.asarray(parts)
    out: dict[str, dict[str, Any]] = {}
    for part in sorted(set(parts)):
        inside = names == part
        row = metrics.clinical_metrics(y[inside], p[inside], threshold)
        if inside.sum() < MIN_PART_AUC:
            row["auc"] = float("nan")
        out[part] = {
            key: row[key] for key in ("n", "auc", "accuracy", "sensitivity", "specificity")
        }
        out[part]["positives"] = int(y[inside].sum())
    return out
