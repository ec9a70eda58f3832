"""Calibration of the classifier's scores on validation groups, and how well it worked.

LightGBM's score on images from a new fold or source is not a probability: "0.87" need not mean
that 87 % of such images have a fracture. A one-dimensional map fitted on the fit's validation
groups (never on its training images, whose scores are over-confident) fixes that; the bundle
stores it (:class:`osteoflag.inference.bundle.CalibrationSection`) and the predictor applies it.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from osteoflag.inference.bundle import CalibrationSection

EPS = 1e-7
#: Equal-width bins of the expected calibration error.
ECE_BINS = 10


class Calibration(StrEnum):
    """Which map turns scores into probabilities (``none``: the score is served as is)."""

    PLATT = "platt"
    ISOTONIC = "isotonic"
    NONE = "none"


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, EPS, 1.0 - EPS)
    return np.asarray(np.log(q / (1.0 - q)), dtype=np.float64)


def fit(
    method: Calibration, y: np.ndarray, scores: np.ndarray, fitted_on: str
) -> CalibrationSection | None:
    """The calibration map of ``method`` fitted on validation labels ``y`` and ``scores``."""
    if method is Calibration.NONE:
        return None
    if method is Calibration.PLATT:
        model = LogisticRegression(C=1e6).fit(_logit(scores)[:, None], y)
        a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
        if a <= 0:  # scores unrelated to the labels on validation: keep the ranking
            a, b = 1.0, 0.0
        return CalibrationSection(method="platt", a=a, b=b, fitted_on=fitted_on)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, y)
    return CalibrationSection(
        method="isotonic",
        x=[float(v) for v in iso.X_thresholds_],
        y=[float(v) for v in iso.y_thresholds_],
        fitted_on=fitted_on,
    )


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |observed fraction - mean probability| over equal-width bins, weighted by count."""
    yt, pp = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    which = np.minimum((pp * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(yt[members].mean() - pp[members].mean())
    return total / len(yt) if len(yt) else float("nan")


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probabilities against the 0/1 labels."""
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y, dtype=float)) ** 2))


def quality(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Brier score and expected calibration error of probabilities ``p``."""
    return {"brier": brier(y, p), "ece": expected_calibration_error(y, p)}
